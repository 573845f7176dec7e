//! Certificate parsing and the rules an uploaded certificate must pass.
//!
//! Everything here is pure: bytes in, parsed details or a [`CertError`] naming the rule
//! that failed out. The broker uses [`client_summary`] on every handshake; the admin API
//! uses [`check_ca`] on every CA upload.

use std::fmt;

use ::time::OffsetDateTime;
use serde::Serialize;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::pem::Pem;
use x509_parser::prelude::*;

use crate::names::Identity;

/// The rule a certificate broke. Its [`Rule::code`] is the API's machine-readable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Neither a PEM certificate nor a DER certificate.
    NotPemOrDer,
    /// The file holds more (or other) than exactly one certificate.
    MultipleCertificates,
    /// A private key was found in a file that should hold a certificate only.
    UnexpectedPrivateKey,
    /// basicConstraints CA:TRUE is missing.
    NotACa,
    Expired,
    NotYetValid,
    /// RSA below 2048 bits or a key type/curve the TLS stack cannot verify.
    WeakKey,
    /// The signature does not verify or uses an unsupported algorithm.
    BadSignature,
    /// The private key is not the key of the leaf certificate (or of the CSR).
    KeyMismatch,
    /// The certificates do not form one path from the leaf up through its issuers.
    ChainOrder,
    /// The leaf's subjectAltName DNS names do not cover the org's host name.
    HostnameMismatch,
    /// The passphrase of an encrypted key, or the password of a PKCS#12 file, is wrong
    /// or missing.
    BadPassphrase,
    /// Not a PKCS#12 file, or one certmq cannot read (no key, several keys, unsupported
    /// encryption).
    MalformedPkcs12,
    /// The leaf certificate is a CA certificate (basicConstraints CA:TRUE).
    LeafIsCa,
    /// The leaf has an extendedKeyUsage extension without serverAuth, so TLS clients
    /// would refuse it as a server certificate.
    NotForServerAuth,
    /// The leaf has an extendedKeyUsage extension without clientAuth, so a server
    /// would refuse it as a client certificate.
    NotForClientAuth,
    /// A private key format certmq does not read (legacy OpenSSL encrypted PEM, an
    /// unsupported encryption scheme).
    UnsupportedKeyFormat,
    /// Not a PEM or DER certificate revocation list.
    NotACrl,
    /// The CRL is not signed by any CA of the org.
    CrlNotFromOrgCa,
    /// An older CRL than the one already stored for the same CA.
    CrlOutdated,
    /// One more active CA would exceed the org's CA limits
    /// ([`crate::ca_certs::MAX_ACTIVE_CAS`], [`crate::ca_certs::MAX_CA_NAMES_BYTES`]).
    TooManyCas,
    /// An org limit outside its allowed range (`crate::limits::OrgLimits::RANGES`).
    LimitOutOfRange,
    /// A revocation names a certificate no device of the org connected with.
    UnknownCertificate,
    /// A network policy entry is not an IP network (`203.0.113.0/24`) or address.
    InvalidCidr,
    /// A network policy allows a network its deny list already covers.
    CidrOverlap,
    /// The org requires proof of possession and the CA upload carries none.
    ProofOfPossessionRequired,
    /// The verification certificate is not signed by the uploaded CA, or its CN is not
    /// a valid verification code of the org.
    ProofOfPossessionFailed,
    /// A topic policy entry is not valid (`crate::topic_policy`); the message names it.
    InvalidTopicRule,
}

impl Rule {
    /// Every rule, in declaration order: the API documents their codes as the possible
    /// 422 codes. (The `all_lists_every_rule` test fails to compile when a rule is added
    /// and not listed here.)
    pub const ALL: [Rule; 28] = [
        Rule::NotPemOrDer,
        Rule::MultipleCertificates,
        Rule::UnexpectedPrivateKey,
        Rule::NotACa,
        Rule::Expired,
        Rule::NotYetValid,
        Rule::WeakKey,
        Rule::BadSignature,
        Rule::KeyMismatch,
        Rule::ChainOrder,
        Rule::HostnameMismatch,
        Rule::BadPassphrase,
        Rule::MalformedPkcs12,
        Rule::LeafIsCa,
        Rule::NotForServerAuth,
        Rule::NotForClientAuth,
        Rule::UnsupportedKeyFormat,
        Rule::NotACrl,
        Rule::CrlNotFromOrgCa,
        Rule::CrlOutdated,
        Rule::TooManyCas,
        Rule::LimitOutOfRange,
        Rule::UnknownCertificate,
        Rule::InvalidCidr,
        Rule::CidrOverlap,
        Rule::ProofOfPossessionRequired,
        Rule::ProofOfPossessionFailed,
        Rule::InvalidTopicRule,
    ];

    /// The machine code of the API's 422 answer, e.g. `not_a_ca`.
    pub fn code(self) -> &'static str {
        match self {
            Rule::NotACrl => "not_a_crl",
            Rule::CrlNotFromOrgCa => "crl_not_from_org_ca",
            Rule::CrlOutdated => "crl_outdated",
            Rule::TooManyCas => "too_many_cas",
            Rule::LimitOutOfRange => "limit_out_of_range",
            Rule::NotPemOrDer => "not_pem_or_der",
            Rule::MultipleCertificates => "multiple_certificates",
            Rule::UnexpectedPrivateKey => "unexpected_private_key",
            Rule::NotACa => "not_a_ca",
            Rule::Expired => "expired",
            Rule::NotYetValid => "not_yet_valid",
            Rule::WeakKey => "weak_key",
            Rule::BadSignature => "bad_signature",
            Rule::KeyMismatch => "key_mismatch",
            Rule::ChainOrder => "chain_order",
            Rule::HostnameMismatch => "hostname_mismatch",
            Rule::BadPassphrase => "bad_passphrase",
            Rule::MalformedPkcs12 => "malformed_pkcs12",
            Rule::LeafIsCa => "leaf_is_ca",
            Rule::NotForServerAuth => "not_for_server_auth",
            Rule::NotForClientAuth => "not_for_client_auth",
            Rule::UnsupportedKeyFormat => "unsupported_key_format",
            Rule::UnknownCertificate => "unknown_certificate",
            Rule::InvalidCidr => "invalid_cidr",
            Rule::CidrOverlap => "cidr_overlap",
            Rule::ProofOfPossessionRequired => "proof_of_possession_required",
            Rule::ProofOfPossessionFailed => "proof_of_possession_failed",
            Rule::InvalidTopicRule => "invalid_topic_rule",
        }
    }
}

/// A certificate was refused; `message` is meant for a human and says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CertError {
    pub rule: Rule,
    pub message: String,
}

impl CertError {
    pub(crate) fn new(rule: Rule, message: impl fmt::Display) -> CertError {
        CertError {
            rule,
            message: message.to_string(),
        }
    }
}

/// What the API shows about a certificate.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CertDetails {
    pub subject: String,
    pub issuer: String,
    /// Hex, colon separated, as `openssl x509 -serial` shows it (lowercase).
    pub serial: String,
    #[serde(with = "::time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "::time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Lowercase hex SHA-256 of the DER encoding, no separators.
    pub fingerprint_sha256: String,
    /// e.g. `EC P-256`, `RSA 2048`, `Ed25519`.
    pub key_type: String,
    /// Whole days until `not_after`; negative once expired.
    pub days_to_expiry: i64,
    pub is_ca: bool,
    /// DNS names in the subjectAltName extension.
    pub dns_names: Vec<String>,
}

/// SHA-256 of `der` as lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// PEM-encodes one DER certificate.
pub fn to_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// PEM-encodes `der` under `label`, 64 columns.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes
        .windows(b"-----BEGIN ".len())
        .any(|w| w == b"-----BEGIN ")
}

/// Reads every PEM block of `bytes` as `(label, der)`.
pub fn pem_blocks(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, CertError> {
    Pem::iter_from_buffer(bytes)
        .map(|block| {
            block
                .map(|p| (p.label, p.contents))
                .map_err(|e| CertError::new(Rule::NotPemOrDer, format!("malformed PEM: {e}")))
        })
        .collect()
}

/// Reads a certificate chain: PEM with one or more CERTIFICATE blocks, or one DER
/// certificate. Private-key blocks are refused so a key never lands in a certificate field.
pub fn read_chain(bytes: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    if looks_like_pem(bytes) {
        let mut certs = Vec::new();
        for (label, der) in pem_blocks(bytes)? {
            match label.as_str() {
                "CERTIFICATE" | "X509 CERTIFICATE" | "TRUSTED CERTIFICATE" => {
                    parse(&der)?;
                    certs.push(der);
                }
                l if l.contains("PRIVATE KEY") => {
                    return Err(CertError::new(
                        Rule::UnexpectedPrivateKey,
                        "the file contains a private key; upload the certificate only",
                    ))
                }
                other => {
                    return Err(CertError::new(
                        Rule::NotPemOrDer,
                        format!("unexpected PEM block {other:?}; expected CERTIFICATE"),
                    ))
                }
            }
        }
        if certs.is_empty() {
            return Err(CertError::new(
                Rule::NotPemOrDer,
                "no CERTIFICATE block in the PEM file",
            ));
        }
        Ok(certs)
    } else {
        match X509Certificate::from_der(bytes) {
            Ok(([], _)) => Ok(vec![bytes.to_vec()]),
            Ok(_) => Err(CertError::new(
                Rule::MultipleCertificates,
                "data after the first DER certificate; upload exactly one certificate",
            )),
            Err(_) => Err(CertError::new(
                Rule::NotPemOrDer,
                "not a certificate: expected a PEM file or a DER-encoded X.509 certificate",
            )),
        }
    }
}

/// Reads exactly one certificate (PEM or DER).
pub fn read_single(bytes: &[u8]) -> Result<Vec<u8>, CertError> {
    let mut chain = read_chain(bytes)?;
    if chain.len() != 1 {
        return Err(CertError::new(
            Rule::MultipleCertificates,
            format!(
                "the file holds {} certificates; upload exactly one per request",
                chain.len()
            ),
        ));
    }
    Ok(chain.remove(0))
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => Ok(cert),
        Err(e) => Err(CertError::new(
            Rule::NotPemOrDer,
            format!("malformed certificate: {e}"),
        )),
    }
}

fn key_type(cert: &X509Certificate<'_>) -> Result<(String, bool), CertError> {
    let spki = cert.public_key();
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => {
                let m = rsa.modulus;
                let m = &m[m.iter().take_while(|b| **b == 0).count()..];
                m.first()
                    .map_or(0, |b| m.len() * 8 - b.leading_zeros() as usize)
            }
            _ => 0,
        };
        Ok((format!("RSA {bits}"), bits >= 2048))
    } else if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        Ok(match curve {
            Some(c) if c == OID_EC_P256 => ("EC P-256".into(), true),
            Some(c) if c == OID_NIST_EC_P384 => ("EC P-384".into(), true),
            Some(c) if c == OID_NIST_EC_P521 => ("EC P-521".into(), false),
            Some(c) => (format!("EC {c}"), false),
            None => ("EC (unknown curve)".into(), false),
        })
    } else if *alg == OID_SIG_ED25519 {
        Ok(("Ed25519".into(), true))
    } else {
        Ok((format!("unsupported ({alg})"), false))
    }
}

/// Parses `der` into the details the API shows.
pub fn details(der: &[u8]) -> Result<CertDetails, CertError> {
    let cert = parse(der)?;
    let (key_type, _) = key_type(&cert)?;
    let not_after = cert.validity().not_after.to_datetime();
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(CertDetails {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string().to_lowercase(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after,
        fingerprint_sha256: fingerprint(der),
        key_type,
        days_to_expiry: (not_after - OffsetDateTime::now_utc()).whole_days(),
        is_ca: cert.is_ca(),
        dns_names,
    })
}

/// Checks the time window and key strength shared by CA and server certificates.
fn check_validity_and_key(
    cert: &X509Certificate<'_>,
    now: OffsetDateTime,
) -> Result<(), CertError> {
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    if na < now {
        return Err(CertError::new(
            Rule::Expired,
            format!("certificate expired on {na}"),
        ));
    }
    if nb > now {
        return Err(CertError::new(
            Rule::NotYetValid,
            format!("certificate is not valid before {nb}"),
        ));
    }
    let (kt, strong) = key_type(cert)?;
    if !strong {
        return Err(CertError::new(
            Rule::WeakKey,
            format!(
                "key {kt} is too weak or unsupported: use RSA >= 2048, EC P-256/P-384 or Ed25519"
            ),
        ));
    }
    Ok(())
}

/// Applies the CA upload rules (docs/contract.md, section 6) to one certificate: CA:TRUE, currently
/// valid, a strong key, and — for a self-signed root — a signature that verifies.
pub fn check_ca(der: &[u8], now: OffsetDateTime) -> Result<CertDetails, CertError> {
    let cert = parse(der)?;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(_) => {
            return Err(CertError::new(
                Rule::NotACa,
                "not a CA certificate: basicConstraints CA:TRUE is required",
            ))
        }
        Err(e) => {
            return Err(CertError::new(
                Rule::NotACa,
                format!("unreadable basicConstraints: {e}"),
            ))
        }
    }
    check_validity_and_key(&cert, now)?;
    if cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_err() {
        return Err(CertError::new(
            Rule::BadSignature,
            "the self-signed CA certificate's signature does not verify",
        ));
    }
    details(der)
}

/// Applies the rules for a server certificate leaf: currently valid and a strong key.
pub fn check_server_leaf(der: &[u8], now: OffsetDateTime) -> Result<CertDetails, CertError> {
    let cert = parse(der)?;
    check_validity_and_key(&cert, now)?;
    details(der)
}

/// Applies the rules for a leaf certmq presents as a *client* (outgoing connections):
/// currently valid, a strong key, not a CA, and usable for clientAuth.
pub fn check_client_leaf(der: &[u8], now: OffsetDateTime) -> Result<CertDetails, CertError> {
    let cert = parse(der)?;
    check_validity_and_key(&cert, now)?;
    if cert.is_ca() {
        return Err(CertError::new(
            Rule::LeafIsCa,
            format!(
                "the leaf certificate \"{}\" is a CA certificate (basicConstraints CA:TRUE); \
                 servers refuse a CA as a client certificate",
                cert.subject()
            ),
        ));
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        if !eku.value.client_auth && !eku.value.any {
            return Err(CertError::new(
                Rule::NotForClientAuth,
                "the leaf certificate's extendedKeyUsage does not include clientAuth, so \
                 servers would refuse it as a client certificate",
            ));
        }
    }
    details(der)
}

/// What the broker keeps about a client certificate after a handshake, read in one
/// parse (this runs for every connection).
#[derive(Debug, Clone)]
pub struct ClientCertSummary {
    pub identity: Option<Identity>,
    /// Lowercase hex with colons, as [`CertDetails::serial`].
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// Parses a client certificate once for identity, serial and expiry.
pub fn client_summary(der: &[u8]) -> Option<ClientCertSummary> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(ClientCertSummary {
        identity: identity_in(&cert),
        serial: cert.raw_serial_as_string().to_lowercase(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// The identity a client certificate carries: the subject CN when it is one, else the
/// first `rfc822Name` SAN that is one (docs/contract.md, 2.2).
fn identity_in(cert: &X509Certificate<'_>) -> Option<Identity> {
    let from_cn = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .find_map(|cn| Identity::parse(cn).ok());
    from_cn.or_else(|| match cert.subject_alternative_name() {
        Ok(Some(san)) => san.value.general_names.iter().find_map(|n| match n {
            GeneralName::RFC822Name(e) => Identity::parse(e).ok(),
            _ => None,
        }),
        _ => None,
    })
}

/// Whether `issuer_der` issued `child_der`: names match and the signature verifies.
pub fn issued_by(child_der: &[u8], issuer_der: &[u8]) -> bool {
    let (Ok((_, child)), Ok((_, issuer))) = (
        X509Certificate::from_der(child_der),
        X509Certificate::from_der(issuer_der),
    ) else {
        return false;
    };
    child.issuer().as_raw() == issuer.subject().as_raw()
        && child.verify_signature(Some(issuer.public_key())).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};

    fn ca(days_from: i64, days_to: i64) -> (String, Vec<u8>) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "Test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let now = OffsetDateTime::now_utc();
        p.not_before = now + ::time::Duration::days(days_from);
        p.not_after = now + ::time::Duration::days(days_to);
        let k = KeyPair::generate().unwrap();
        let c = p.self_signed(&k).unwrap();
        (c.pem(), c.der().to_vec())
    }

    #[test]
    fn accepts_a_valid_ca_pem_and_der() {
        let (pem, der) = ca(-1, 30);
        let now = OffsetDateTime::now_utc();
        assert_eq!(read_single(pem.as_bytes()).unwrap(), der);
        assert_eq!(read_single(&der).unwrap(), der);
        let d = check_ca(&der, now).unwrap();
        assert_eq!(d.key_type, "EC P-256");
        assert_eq!(d.fingerprint_sha256.len(), 64);
        assert!(d.is_ca);
        assert!((28..=30).contains(&d.days_to_expiry));
    }

    #[test]
    fn refuses_by_rule() {
        let now = OffsetDateTime::now_utc();
        let (p1, _) = ca(-1, 30);
        let (p2, _) = ca(-1, 30);
        let two = format!("{p1}{p2}");
        assert_eq!(
            read_single(two.as_bytes()).unwrap_err().rule,
            Rule::MultipleCertificates
        );
        assert_eq!(read_single(b"garbage").unwrap_err().rule, Rule::NotPemOrDer);
        assert_eq!(read_single(b"").unwrap_err().rule, Rule::NotPemOrDer);
        let (_, expired) = ca(-10, -1);
        assert_eq!(check_ca(&expired, now).unwrap_err().rule, Rule::Expired);
        let (_, future) = ca(2, 10);
        assert_eq!(check_ca(&future, now).unwrap_err().rule, Rule::NotYetValid);
        let key = KeyPair::generate().unwrap().serialize_pem();
        assert_eq!(
            read_single(format!("{p1}{key}").as_bytes())
                .unwrap_err()
                .rule,
            Rule::UnexpectedPrivateKey
        );
        let leaf = CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap();
        assert_eq!(check_ca(leaf.der(), now).unwrap_err().rule, Rule::NotACa);
    }

    fn identity_of(der: &[u8]) -> Option<Identity> {
        client_summary(der).and_then(|s| s.identity)
    }

    #[test]
    fn identity_from_cn_or_email_san() {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, "d:sensor:dev1");
        let c = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert_eq!(identity_of(c.der()).unwrap().to_string(), "d:sensor:dev1");

        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "Device 7");
        p.subject_alt_names = vec![SanType::Rfc822Name("a:dash".try_into().unwrap())];
        let c = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert_eq!(identity_of(c.der()).unwrap().to_string(), "a:dash");

        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "nobody");
        let c = p.self_signed(&KeyPair::generate().unwrap()).unwrap();
        assert!(identity_of(c.der()).is_none());
    }

    #[test]
    fn all_lists_every_rule() {
        // Exhaustive on purpose: a new rule does not compile here until it has a place,
        // which is its place in `Rule::ALL`.
        let position = |r: Rule| match r {
            Rule::NotPemOrDer => 0,
            Rule::MultipleCertificates => 1,
            Rule::UnexpectedPrivateKey => 2,
            Rule::NotACa => 3,
            Rule::Expired => 4,
            Rule::NotYetValid => 5,
            Rule::WeakKey => 6,
            Rule::BadSignature => 7,
            Rule::KeyMismatch => 8,
            Rule::ChainOrder => 9,
            Rule::HostnameMismatch => 10,
            Rule::BadPassphrase => 11,
            Rule::MalformedPkcs12 => 12,
            Rule::LeafIsCa => 13,
            Rule::NotForServerAuth => 14,
            Rule::NotForClientAuth => 15,
            Rule::UnsupportedKeyFormat => 16,
            Rule::NotACrl => 17,
            Rule::CrlNotFromOrgCa => 18,
            Rule::CrlOutdated => 19,
            Rule::TooManyCas => 20,
            Rule::LimitOutOfRange => 21,
            Rule::UnknownCertificate => 22,
            Rule::InvalidCidr => 23,
            Rule::CidrOverlap => 24,
            Rule::ProofOfPossessionRequired => 25,
            Rule::ProofOfPossessionFailed => 26,
            Rule::InvalidTopicRule => 27,
        };
        for (i, r) in Rule::ALL.iter().enumerate() {
            assert_eq!(position(*r), i, "{r:?}");
        }
        let codes: std::collections::HashSet<_> = Rule::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Rule::ALL.len(), "codes are distinct");
    }
}
