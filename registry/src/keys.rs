//! Private keys as operators bring them, turned into the one form certmq keeps: PKCS#8
//! DER. That is what is sealed at rest and what the broker hands to rustls
//! (`PrivateKeyDer::Pkcs8`), so every other format is converted here, once, at upload.
//!
//! Read: PEM `PRIVATE KEY` (PKCS#8), `ENCRYPTED PRIVATE KEY` (PKCS#8 under PBES2, as
//! `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes it), `EC PRIVATE KEY` (SEC1) and
//! `RSA PRIVATE KEY` (PKCS#1); PKCS#12 files, both the PBES2/AES ones OpenSSL 3 writes by
//! default and the 3DES/RC2 ones of `openssl pkcs12 -legacy`. Not read: OpenSSL's legacy
//! encrypted PEM (`Proc-Type: 4,ENCRYPTED`), whose key derivation is a single MD5 round.
//!
//! Every key is then loaded with ring, the TLS stack's crypto provider, so a key the
//! broker could not use is refused at upload and not at the next handshake.
//! Generated here: the key pairs behind CSRs, of a [`KeyType`]. Pure: no store, no I/O.

use pkcs8::der::asn1::{AnyRef, OctetStringRef};
use pkcs8::der::{Decode, Encode};
use pkcs8::{AlgorithmIdentifierRef, EncryptedPrivateKeyInfoRef, ObjectIdentifier};
use pkcs8::{EncodePrivateKey, PrivateKeyInfoRef};
use ring::signature::{self, KeyPair as _};
use serde::{Deserialize, Serialize};

use crate::cert::{self, CertError, Rule};

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The advice every "cannot read this key" message ends with.
const CONVERT_HINT: &str =
    "convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in old.key -out new.key` \
     (or `-nocrypt` for an unencrypted key)";

/// The key pair generated for a CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum KeyType {
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

/// A private key in PKCS#8 DER that ring accepted, with its public half.
pub(crate) struct PrivateKey {
    /// PKCS#8 v1 DER, normalized (no attributes, no embedded public key).
    pub(crate) pkcs8: Vec<u8>,
    /// The public key as the `subjectPublicKey` BIT STRING of a certificate holds it.
    pub(crate) public: Vec<u8>,
    /// What signs with it (CSRs).
    pub(crate) sign_alg: &'static rcgen::SignatureAlgorithm,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(..)")
    }
}

/// Reads one PEM private key in any supported format; `passphrase` opens an
/// `ENCRYPTED PRIVATE KEY` and is ignored for unencrypted keys.
pub(crate) fn from_pem(pem: &[u8], passphrase: Option<&str>) -> Result<PrivateKey, CertError> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(CertError::new(
            Rule::UnsupportedKeyFormat,
            format!(
                "the private key is in OpenSSL's legacy encrypted PEM format \
                 (Proc-Type: 4,ENCRYPTED), which certmq does not read; {CONVERT_HINT}"
            ),
        ));
    }
    if !text.contains("-----BEGIN ") {
        return Err(CertError::new(
            Rule::NotPemOrDer,
            "private_key is not PEM: expected a -----BEGIN ... PRIVATE KEY----- block",
        ));
    }
    let mut keys = Vec::new();
    for (label, der) in cert::pem_blocks(pem)? {
        match label.as_str() {
            // `openssl ecparam -genkey` writes the curve before the key; the key names it too.
            "EC PARAMETERS" => {}
            l if l.ends_with("PRIVATE KEY") => keys.push((label, der)),
            other => {
                return Err(CertError::new(
                    Rule::NotPemOrDer,
                    format!(
                        "private_key holds a {other:?} PEM block; it must hold the private key \
                         only (certificates go in `certificate`)"
                    ),
                ))
            }
        }
    }
    let (label, der) = match keys.len() {
        1 => keys.remove(0),
        0 => {
            return Err(CertError::new(
                Rule::NotPemOrDer,
                "private_key holds no PRIVATE KEY block",
            ))
        }
        n => {
            return Err(CertError::new(
                Rule::NotPemOrDer,
                format!("private_key holds {n} private keys; upload exactly one"),
            ))
        }
    };
    let pkcs8 = match label.as_str() {
        "PRIVATE KEY" => der,
        "ENCRYPTED PRIVATE KEY" => decrypt_pkcs8(&der, passphrase)?,
        "EC PRIVATE KEY" => sec1_to_pkcs8(&der)?,
        "RSA PRIVATE KEY" => wrap(OID_RSA_ENCRYPTION, Some(AnyRef::NULL), &der)?,
        other => {
            return Err(CertError::new(
                Rule::UnsupportedKeyFormat,
                format!("a {other:?} PEM block is not a key format certmq reads; {CONVERT_HINT}"),
            ))
        }
    };
    load(&pkcs8)
}

fn decrypt_pkcs8(der: &[u8], passphrase: Option<&str>) -> Result<Vec<u8>, CertError> {
    let info = EncryptedPrivateKeyInfoRef::from_der(der).map_err(|e| match encryption_oid(der) {
        // Well-formed, but a scheme pkcs5 does not model (PBES1, PKCS#12 PBEs).
        Some(oid) => CertError::new(
            Rule::UnsupportedKeyFormat,
            format!("the private key is encrypted with algorithm {oid}, which certmq does not read; {CONVERT_HINT}"),
        ),
        None => CertError::new(
            Rule::NotPemOrDer,
            format!("malformed ENCRYPTED PRIVATE KEY: {e}"),
        ),
    })?;
    let Some(passphrase) = passphrase else {
        return Err(CertError::new(
            Rule::BadPassphrase,
            "the private key is encrypted; give its passphrase in `passphrase`",
        ));
    };
    match info.decrypt(passphrase) {
        Ok(doc) => Ok(doc.as_bytes().to_vec()),
        Err(pkcs8::Error::EncryptedPrivateKey(
            e @ (pkcs8::pkcs5::Error::UnsupportedAlgorithm { .. }
            | pkcs8::pkcs5::Error::NoPbes1CryptSupport
            | pkcs8::pkcs5::Error::AlgorithmParametersInvalid { .. }),
        )) => Err(CertError::new(
            Rule::UnsupportedKeyFormat,
            format!("the private key's encryption is not supported ({e}); {CONVERT_HINT}"),
        )),
        // A wrong passphrase fails the padding check, or (1 time in 256) decrypts to
        // bytes that are not DER.
        Err(_) => Err(CertError::new(
            Rule::BadPassphrase,
            "the passphrase does not open the encrypted private key",
        )),
    }
}

/// The encryption algorithm of an `EncryptedPrivateKeyInfo`, read generically.
fn encryption_oid(der: &[u8]) -> Option<ObjectIdentifier> {
    let outer = AnyRef::from_der(der).ok()?;
    let mut reader = pkcs8::der::SliceReader::new(outer.value()).ok()?;
    AlgorithmIdentifierRef::decode(&mut reader)
        .ok()
        .map(|a| a.oid)
}

/// SEC1 `ECPrivateKey` → PKCS#8, taking the curve from the key's own parameters.
fn sec1_to_pkcs8(der: &[u8]) -> Result<Vec<u8>, CertError> {
    let key = sec1::EcPrivateKey::from_der(der)
        .map_err(|e| CertError::new(Rule::NotPemOrDer, format!("malformed EC PRIVATE KEY: {e}")))?;
    let Some(curve) = key.parameters.and_then(|p| p.named_curve()) else {
        return Err(CertError::new(
            Rule::UnsupportedKeyFormat,
            format!("the EC PRIVATE KEY does not name its curve; {CONVERT_HINT}"),
        ));
    };
    let curve = curve
        .to_der()
        .map_err(|e| CertError::new(Rule::NotPemOrDer, format!("EC curve: {e}")))?;
    let params = AnyRef::from_der(&curve)
        .map_err(|e| CertError::new(Rule::NotPemOrDer, format!("EC curve: {e}")))?;
    wrap(OID_EC_PUBLIC_KEY, Some(params), der)
}

fn wrap(
    oid: ObjectIdentifier,
    parameters: Option<AnyRef<'_>>,
    key: &[u8],
) -> Result<Vec<u8>, CertError> {
    let key = OctetStringRef::new(key).map_err(|e| CertError::new(Rule::NotPemOrDer, e))?;
    PrivateKeyInfoRef::new(AlgorithmIdentifierRef { oid, parameters }, key)
        .to_der()
        .map_err(|e| CertError::new(Rule::NotPemOrDer, format!("private key: {e}")))
}

/// Loads PKCS#8 DER with ring: the key types the broker's TLS stack signs with (RSA
/// 2048–4096, ECDSA P-256/P-384, Ed25519).
pub(crate) fn load(pkcs8: &[u8]) -> Result<PrivateKey, CertError> {
    let info = PrivateKeyInfoRef::from_der(pkcs8)
        .map_err(|e| CertError::new(Rule::NotPemOrDer, format!("malformed private key: {e}")))?;
    // Re-encoded without attributes or an embedded public key: the v1 form every
    // consumer reads.
    let normalized = wrap(
        info.algorithm.oid,
        info.algorithm.parameters,
        info.private_key.as_bytes(),
    )?;
    let rejected = |what: &str, e: ring::error::KeyRejected| match e.to_string().as_str() {
        "TooSmall" => CertError::new(
            Rule::WeakKey,
            format!("the {what} private key is too small: use RSA >= 2048 bits"),
        ),
        "TooLarge" | "UnsupportedCurve" | "PrivateModulusLenNotMultipleOf512Bits" => {
            CertError::new(
                Rule::WeakKey,
                format!("the {what} private key is not supported by the TLS stack ({e})"),
            )
        }
        _ => CertError::new(
            Rule::NotPemOrDer,
            format!("the {what} private key could not be read ({e})"),
        ),
    };
    let oid = info.algorithm.oid;
    let curve = info
        .algorithm
        .parameters
        .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    let (public, sign_alg) = if oid == OID_RSA_ENCRYPTION {
        let kp = signature::RsaKeyPair::from_pkcs8(&normalized).map_err(|e| rejected("RSA", e))?;
        (kp.public().as_ref().to_vec(), &rcgen::PKCS_RSA_SHA256)
    } else if oid == OID_EC_PUBLIC_KEY {
        let (alg, rc) = match curve {
            Some(c) if c == OID_P256 => (
                &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                &rcgen::PKCS_ECDSA_P256_SHA256,
            ),
            Some(c) if c == OID_P384 => (
                &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                &rcgen::PKCS_ECDSA_P384_SHA384,
            ),
            other => {
                return Err(CertError::new(
                    Rule::WeakKey,
                    format!(
                        "EC curve {} is not supported: use P-256 or P-384",
                        other.map_or("(unnamed)".into(), |c| c.to_string())
                    ),
                ))
            }
        };
        let rng = ring::rand::SystemRandom::new();
        let kp = signature::EcdsaKeyPair::from_pkcs8(alg, &normalized, &rng)
            .map_err(|e| rejected("EC", e))?;
        (kp.public_key().as_ref().to_vec(), rc)
    } else if oid == OID_ED25519 {
        let kp = signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&normalized)
            .map_err(|e| rejected("Ed25519", e))?;
        (kp.public_key().as_ref().to_vec(), &rcgen::PKCS_ED25519)
    } else {
        return Err(CertError::new(
            Rule::WeakKey,
            format!("key algorithm {oid} is not supported: use RSA, ECDSA P-256/P-384 or Ed25519"),
        ));
    };
    Ok(PrivateKey {
        pkcs8: normalized,
        public,
        sign_alg,
    })
}

/// Reads a PKCS#12 file: its one private key and every certificate in it (in file order).
pub(crate) fn from_pkcs12(
    data: &[u8],
    password: &str,
) -> Result<(PrivateKey, Vec<Vec<u8>>), CertError> {
    use p12_keystore::error::Error as P12;
    let archive =
        p12_keystore::Pkcs12Archive::from_pkcs12(data, password).map_err(|e| match e {
            P12::MacError(_) => CertError::new(
                Rule::BadPassphrase,
                "the password does not open the PKCS#12 file (its integrity check failed)",
            ),
            // Without a MAC, a wrong password shows up as undecryptable bags.
            P12::UnpadError | P12::Pkcs5Error(_) | P12::InvalidPrivateKey => CertError::new(
                Rule::BadPassphrase,
                "the PKCS#12 file could not be decrypted: wrong password or corrupted file",
            ),
            P12::UnsupportedEncryptionScheme | P12::UnsupportedMacAlgorithm => CertError::new(
                Rule::MalformedPkcs12,
                format!(
                "the PKCS#12 file uses an encryption or MAC algorithm certmq does not read ({e}); \
                 re-export it with `openssl pkcs12 -export` (AES-256, SHA-256)"
            ),
            ),
            e => CertError::new(
                Rule::MalformedPkcs12,
                format!("not a readable PKCS#12 file: {e}"),
            ),
        })?;
    let mut keys = archive.keys;
    let key = match keys.len() {
        1 => keys.remove(0).key,
        0 => {
            return Err(CertError::new(
                Rule::MalformedPkcs12,
                "the PKCS#12 file holds no private key",
            ))
        }
        n => {
            return Err(CertError::new(
                Rule::MalformedPkcs12,
                format!("the PKCS#12 file holds {n} private keys; export exactly one"),
            ))
        }
    };
    let certs: Vec<Vec<u8>> = archive
        .certs
        .into_iter()
        .map(|c| c.cert.as_der().to_vec())
        .collect();
    if certs.is_empty() {
        return Err(CertError::new(
            Rule::MalformedPkcs12,
            "the PKCS#12 file holds no certificate",
        ));
    }
    Ok((load(key.as_der())?, certs))
}

/// Generates a key pair of `key_type` (RSA with the `rsa` crate, since ring cannot
/// generate RSA keys; ECDSA with ring) and loads it like an uploaded key.
pub(crate) fn generate(key_type: KeyType) -> Result<PrivateKey, String> {
    let pkcs8 = match key_type {
        KeyType::EcdsaP256 | KeyType::EcdsaP384 => {
            let alg = if key_type == KeyType::EcdsaP256 {
                &rcgen::PKCS_ECDSA_P256_SHA256
            } else {
                &rcgen::PKCS_ECDSA_P384_SHA384
            };
            rcgen::KeyPair::generate_for(alg)
                .map_err(|e| e.to_string())?
                .serialize_der()
        }
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => {
            let bits = match key_type {
                KeyType::Rsa2048 => 2048,
                KeyType::Rsa3072 => 3072,
                _ => 4096,
            };
            let key =
                rsa::PrivateKey::new(&mut getrandom::SysRng, bits).map_err(|e| e.to_string())?;
            key.to_pkcs8_der()
                .map_err(|e| e.to_string())?
                .as_bytes()
                .to_vec()
        }
    };
    load(&pkcs8).map_err(|e| e.message)
}
