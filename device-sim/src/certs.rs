//! Test certificate authority: mints CA, intermediate and client certificates (and CRLs)
//! for simulated devices, gateways and applications.
//!
//! Everything here is ECDSA P-256 (the cheapest key type to generate and to verify), and
//! meant for tests, demos and benchmarks — not for production PKI.

use anyhow::{anyhow, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

/// How long a freshly minted CA (root or intermediate) is valid.
const CA_VALIDITY: Duration = Duration::days(365);
/// How far in the past `not_before` is put by default, to tolerate clock skew.
const BACKDATE: Duration = Duration::hours(1);
/// Default validity of a client certificate.
const CLIENT_VALIDITY: Duration = Duration::days(30);

/// A certificate authority that can sign client certificates, intermediates and CRLs.
///
/// It keeps the signing key in memory. A root is made with [`TestCa::new`], an
/// intermediate with [`TestCa::issue_intermediate`], and an existing CA (e.g. written by
/// `certmq-sim provision`) is loaded with [`TestCa::from_pem`].
pub struct TestCa {
    common_name: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// The intermediates between a leaf issued by this CA and the root: this CA's own
    /// certificate first (when it is not a root), then its parents'. Empty for a root.
    intermediates: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("common_name", &self.common_name)
            .field("intermediates", &self.intermediates.len())
            .finish_non_exhaustive()
    }
}

/// Which extended key usage a client certificate carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientEku {
    /// `id-kp-clientAuth` (what a device certificate should have).
    #[default]
    ClientAuth,
    /// `id-kp-serverAuth` only: a certificate the broker must refuse for client auth.
    ServerAuthOnly,
    /// No extendedKeyUsage extension at all (allowed by the spec: "clientAuth when present").
    None,
}

/// Options for [`TestCa::issue_client`].
#[derive(Debug, Clone)]
pub struct ClientCertOptions {
    /// Start of validity. Default: now − 1 h.
    pub not_before: OffsetDateTime,
    /// End of validity. Default: now + 30 days.
    pub not_after: OffsetDateTime,
    /// Adds an `rfc822Name` SAN (`email:` in OpenSSL terms) with this value. Used for
    /// identities carried in the SAN rather than in the CN, e.g. `Some("d:sensor:dev1")`
    /// together with a `cn` override that is not an identity.
    pub email_san: Option<String>,
    /// Subject CN to use instead of the identity passed to [`TestCa::issue_client`].
    pub cn: Option<String>,
    /// Extended key usage. Default: clientAuth.
    pub eku: ClientEku,
}

impl Default for ClientCertOptions {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - BACKDATE,
            not_after: now + CLIENT_VALIDITY,
            email_san: None,
            cn: None,
            eku: ClientEku::ClientAuth,
        }
    }
}

/// A client certificate with its private key.
#[derive(Clone)]
pub struct ClientCert {
    /// The leaf certificate alone, PEM.
    pub cert_pem: String,
    /// The leaf followed by the intermediates of the issuing CA (not the root): what a
    /// client sends in its TLS `Certificate` message. Equal to `cert_pem` for a leaf issued
    /// directly by a root.
    pub chain_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The leaf certificate, DER.
    pub der: Vec<u8>,
    /// The certificate serial number, big-endian bytes as encoded in the certificate.
    pub serial: Vec<u8>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("serial", &hex_lower(&self.serial))
            .field("der_len", &self.der.len())
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// Builds a `ClientCert` from existing PEM files (leaf first, optionally followed by
    /// intermediates, and its private key).
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self> {
        let chain = parse_certs(chain_pem)?;
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow!("no certificate in client certificate PEM"))?;
        KeyPair::from_pem(key_pem).context("parse client private key")?;
        Ok(Self {
            cert_pem: der_to_pem(leaf),
            chain_pem: chain_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            der: leaf.to_vec(),
            serial: serial_of(leaf)?,
        })
    }
}

impl TestCa {
    /// Mints a self-signed root CA: ECDSA P-256, `CA:TRUE`, keyCertSign + cRLSign,
    /// valid from now − 1 h to now + 365 days.
    pub fn new(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate().context("generate CA key")?;
        let params = ca_params(common_name)?;
        let cert = params.self_signed(&key).context("self-sign CA")?;
        Ok(Self {
            common_name: common_name.to_owned(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            intermediates: Vec::new(),
        })
    }

    /// Loads a CA from its certificate and private key (PEM), e.g. the `ca.pem` and
    /// `ca-key.pem` written by `certmq-sim provision`. Intermediates are not known, so
    /// leaves it issues carry no chain.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(key_pem).context("parse CA private key")?;
        let cert_der = parse_certs(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no certificate in CA PEM"))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).context("parse CA certificate")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| anyhow!("parse CA certificate: {e}"))?;
        let common_name = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            common_name,
            cert_der,
            issuer,
            intermediates: Vec::new(),
        })
    }

    /// The subject common name of this CA.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// This CA's certificate, PEM (what gets uploaded to `POST /orgs/{org}/ca-certs`).
    pub fn pem(&self) -> String {
        der_to_pem(&self.cert_der)
    }

    /// This CA's certificate, DER.
    pub fn der(&self) -> &[u8] {
        &self.cert_der
    }

    /// This CA's private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The intermediates a leaf issued by this CA must send (this CA first when it is an
    /// intermediate, up to but excluding the root), PEM. Empty for a root.
    pub fn chain_pem(&self) -> String {
        self.intermediates.iter().map(|c| der_to_pem(c)).collect()
    }

    /// Issues a client certificate whose subject CN is `identity_cn` (e.g. `d:sensor:dev1`,
    /// `g:gw:gw1`, `a:dashboard`) unless `opts.cn` overrides it. ECDSA P-256 key,
    /// keyUsage digitalSignature, extendedKeyUsage per `opts.eku` (clientAuth by default).
    pub fn issue_client(&self, identity_cn: &str, opts: ClientCertOptions) -> Result<ClientCert> {
        if opts.not_after <= opts.not_before {
            return Err(anyhow!("not_after must be later than not_before"));
        }
        let key = KeyPair::generate().context("generate client key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            opts.cn.as_deref().unwrap_or(identity_cn),
        );
        params.distinguished_name = dn;
        params.not_before = opts.not_before;
        params.not_after = opts.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match opts.eku {
            ClientEku::ClientAuth => vec![ExtendedKeyUsagePurpose::ClientAuth],
            ClientEku::ServerAuthOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
            ClientEku::None => Vec::new(),
        };
        if let Some(email) = &opts.email_san {
            let value = email
                .clone()
                .try_into()
                .map_err(|e| anyhow!("email SAN {email:?} is not IA5: {e}"))?;
            params.subject_alt_names.push(SanType::Rfc822Name(value));
        }
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("sign client certificate")?;
        let cert_pem = der_to_pem(cert.der());
        let chain_pem = format!("{cert_pem}{}", self.chain_pem());
        Ok(ClientCert {
            cert_pem,
            chain_pem,
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial: serial_of(cert.der())?,
        })
    }

    /// Issues a TLS server certificate for `dns_names` (SANs; the first is also the CN):
    /// ECDSA P-256 key, keyUsage digitalSignature, extendedKeyUsage serverAuth, valid now
    /// − 1 h to now + 365 days. Returned as a [`ClientCert`] (certificate, chain, key):
    /// e.g. for a mosquitto listener and a certmq org presenting the same certificate.
    pub fn issue_server(&self, dns_names: &[String]) -> Result<ClientCert> {
        let first = dns_names
            .first()
            .ok_or_else(|| anyhow!("a server certificate needs at least one DNS name"))?;
        let key = KeyPair::generate().context("generate server key")?;
        let mut params =
            CertificateParams::new(dns_names.to_vec()).context("server certificate names")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, first.as_str());
        params.distinguished_name = dn;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("sign server certificate")?;
        let cert_pem = der_to_pem(cert.der());
        Ok(ClientCert {
            chain_pem: format!("{cert_pem}{}", self.chain_pem()),
            cert_pem,
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            serial: serial_of(cert.der())?,
        })
    }

    /// Issues an intermediate CA (`CA:TRUE`, keyCertSign + cRLSign, valid now − 1 h to
    /// now + 365 days) signed by this CA. Leaves it issues carry the chain up to the root.
    pub fn issue_intermediate(&self, common_name: &str) -> Result<TestCa> {
        let key = KeyPair::generate().context("generate intermediate key")?;
        let mut params = ca_params(common_name)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("sign intermediate")?;
        let cert_der = cert.der().clone();
        let mut intermediates = vec![cert_der.clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Ok(TestCa {
            common_name: common_name.to_owned(),
            cert_der,
            issuer: Issuer::new(params, key),
            intermediates,
        })
    }

    /// Signs a CRL (valid now − 1 h to now + 7 days) listing the given certificate
    /// serials as revoked, PEM (what gets uploaded to `POST /orgs/{org}/crls`).
    pub fn crl_pem(&self, revoked_serials: &[&[u8]], crl_number: u64) -> Result<String> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + Duration::days(7),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now - BACKDATE,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .context("sign CRL")?
            .pem()
            .context("encode CRL")
    }
}

/// Parameters shared by roots and intermediates.
fn ca_params(common_name: &str) -> Result<CertificateParams> {
    if common_name.is_empty() {
        return Err(anyhow!("CA common name must not be empty"));
    }
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

/// Parses every `CERTIFICATE` block of a PEM string.
pub(crate) fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("invalid certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err(anyhow!("no CERTIFICATE block found in PEM"));
    }
    Ok(certs)
}

/// Encodes a DER certificate as a PEM block (64-column base64, trailing newline).
pub(crate) fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Extracts the serial number of a DER certificate.
fn serial_of(der: &[u8]) -> Result<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow!("parse issued certificate: {e}"))?;
    Ok(cert.raw_serial().to_vec())
}

/// Lower-case hex of some bytes.
fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::UnixTime;
    use rustls::server::WebPkiClientVerifier;
    use std::sync::Arc;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::X509Certificate;

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(der).expect("parse").1
    }

    fn cn(cert: &X509Certificate<'_>) -> String {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .expect("cn")
            .to_owned()
    }

    /// Verifies `cert` as a TLS client certificate against `root` with rustls/webpki.
    fn verify_client(
        root: &TestCa,
        cert: &ClientCert,
        send_chain: bool,
    ) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(root.der().to_vec()))
            .expect("root");
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let chain = parse_certs(&cert.chain_pem).expect("chain");
        let intermediates = if send_chain { &chain[1..] } else { &[][..] };
        verifier
            .verify_client_cert(
                &CertificateDer::from(cert.der.clone()),
                intermediates,
                UnixTime::now(),
            )
            .map(|_| ())
    }

    fn close_to(actual: i64, expected: OffsetDateTime) {
        let diff = (actual - expected.unix_timestamp()).abs();
        assert!(diff <= 120, "timestamp off by {diff} s");
    }

    #[test]
    fn root_ca_is_a_ca_with_expected_validity() {
        let ca = TestCa::new("Acme Devices CA").expect("ca");
        assert_eq!(ca.common_name(), "Acme Devices CA");
        assert!(ca.chain_pem().is_empty());
        let cert = parse(ca.der());
        assert_eq!(cn(&cert), "Acme Devices CA");
        let bc = cert.basic_constraints().expect("ext").expect("bc");
        assert!(bc.value.ca);
        let ku = cert.key_usage().expect("ext").expect("ku");
        assert!(ku.value.key_cert_sign());
        let now = OffsetDateTime::now_utc();
        close_to(cert.validity().not_before.timestamp(), now - BACKDATE);
        close_to(cert.validity().not_after.timestamp(), now + CA_VALIDITY);
        assert!(ca.pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(parse_certs(&ca.pem()).expect("pem")[0].as_ref(), ca.der());
    }

    #[test]
    fn client_identity_in_cn_with_client_auth() {
        let ca = TestCa::new("ca").expect("ca");
        let c = ca
            .issue_client("d:sensor:dev1", ClientCertOptions::default())
            .expect("cert");
        let cert = parse(&c.der);
        assert_eq!(cn(&cert), "d:sensor:dev1");
        assert_eq!(cert.raw_serial(), c.serial.as_slice());
        let eku = cert.extended_key_usage().expect("ext").expect("eku");
        assert!(eku.value.client_auth);
        let bc = cert.basic_constraints().expect("ext").expect("bc");
        assert!(!bc.value.ca);
        assert_eq!(c.cert_pem, c.chain_pem);
        let now = OffsetDateTime::now_utc();
        close_to(cert.validity().not_before.timestamp(), now - BACKDATE);
        close_to(cert.validity().not_after.timestamp(), now + CLIENT_VALIDITY);
        verify_client(&ca, &c, true).expect("valid client cert");
        // The key matches the certificate.
        let key = KeyPair::from_pem(&c.key_pem).expect("key");
        assert_eq!(
            key.public_key_raw(),
            cert.public_key().subject_public_key.data.as_ref()
        );
    }

    #[test]
    fn identity_in_email_san() {
        let ca = TestCa::new("ca").expect("ca");
        let c = ca
            .issue_client(
                "ignored",
                ClientCertOptions {
                    email_san: Some("d:sensor:dev7".into()),
                    cn: Some("Sensor seven".into()),
                    ..Default::default()
                },
            )
            .expect("cert");
        let cert = parse(&c.der);
        assert_eq!(cn(&cert), "Sensor seven");
        let mut emails = Vec::new();
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
                for name in &san.general_names {
                    if let GeneralName::RFC822Name(e) = name {
                        emails.push(e.to_string());
                    }
                }
            }
        }
        assert_eq!(emails, vec!["d:sensor:dev7".to_owned()]);
        verify_client(&ca, &c, true).expect("valid client cert");
    }

    #[test]
    fn validity_window_is_honored() {
        let ca = TestCa::new("ca").expect("ca");
        let now = OffsetDateTime::now_utc();
        let expired = ca
            .issue_client(
                "d:sensor:old",
                ClientCertOptions {
                    not_before: now - Duration::days(10),
                    not_after: now - Duration::days(1),
                    ..Default::default()
                },
            )
            .expect("cert");
        let cert = parse(&expired.der);
        assert_eq!(
            cert.validity().not_before.timestamp(),
            (now - Duration::days(10)).unix_timestamp()
        );
        assert_eq!(
            cert.validity().not_after.timestamp(),
            (now - Duration::days(1)).unix_timestamp()
        );
        assert!(matches!(
            verify_client(&ca, &expired, true),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ExpiredContext { .. } | rustls::CertificateError::Expired
            ))
        ));
        let future = ca
            .issue_client(
                "d:sensor:new",
                ClientCertOptions {
                    not_before: now + Duration::days(1),
                    not_after: now + Duration::days(2),
                    ..Default::default()
                },
            )
            .expect("cert");
        assert!(verify_client(&ca, &future, true).is_err());
        let inverted = ca.issue_client(
            "d:sensor:x",
            ClientCertOptions {
                not_before: now,
                not_after: now - Duration::hours(1),
                ..Default::default()
            },
        );
        assert!(inverted.is_err());
    }

    #[test]
    fn eku_variants() {
        let ca = TestCa::new("ca").expect("ca");
        let server_only = ca
            .issue_client(
                "d:sensor:s",
                ClientCertOptions {
                    eku: ClientEku::ServerAuthOnly,
                    ..Default::default()
                },
            )
            .expect("cert");
        assert!(verify_client(&ca, &server_only, true).is_err());
        let none = ca
            .issue_client(
                "d:sensor:n",
                ClientCertOptions {
                    eku: ClientEku::None,
                    ..Default::default()
                },
            )
            .expect("cert");
        assert!(parse(&none.der)
            .extended_key_usage()
            .expect("ext")
            .is_none());
    }

    #[test]
    fn another_ca_does_not_verify() {
        let ca = TestCa::new("ca").expect("ca");
        let other = TestCa::new("other").expect("other");
        let c = other
            .issue_client("d:sensor:dev1", ClientCertOptions::default())
            .expect("cert");
        assert!(verify_client(&ca, &c, true).is_err());
    }

    #[test]
    fn intermediate_chains() {
        let root = TestCa::new("root").expect("root");
        let inter = root.issue_intermediate("issuing 1").expect("intermediate");
        let inter2 = inter
            .issue_intermediate("issuing 2")
            .expect("intermediate 2");

        let ic = parse(inter.der());
        assert_eq!(cn(&ic), "issuing 1");
        assert_eq!(
            ic.issuer().to_string(),
            parse(root.der()).subject().to_string()
        );
        assert!(ic.basic_constraints().expect("ext").expect("bc").value.ca);

        let c = inter
            .issue_client("d:sensor:dev1", ClientCertOptions::default())
            .expect("cert");
        let chain = parse_certs(&c.chain_pem).expect("chain");
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].as_ref(), c.der.as_slice());
        assert_eq!(chain[1].as_ref(), inter.der());
        verify_client(&root, &c, true).expect("chain to root");
        assert!(
            verify_client(&root, &c, false).is_err(),
            "needs the intermediate"
        );

        let c2 = inter2
            .issue_client("d:sensor:dev2", ClientCertOptions::default())
            .expect("cert");
        let chain2 = parse_certs(&c2.chain_pem).expect("chain");
        assert_eq!(chain2.len(), 3);
        assert_eq!(chain2[1].as_ref(), inter2.der());
        assert_eq!(chain2[2].as_ref(), inter.der());
        verify_client(&root, &c2, true).expect("two-level chain to root");
    }

    #[test]
    fn loads_from_pem_and_keeps_signing() {
        let ca = TestCa::new("Loaded CA").expect("ca");
        let loaded = TestCa::from_pem(&ca.pem(), &ca.key_pem()).expect("load");
        assert_eq!(loaded.common_name(), "Loaded CA");
        assert_eq!(loaded.der(), ca.der());
        let c = loaded
            .issue_client("d:sensor:dev1", ClientCertOptions::default())
            .expect("cert");
        verify_client(&ca, &c, true).expect("issued by the loaded CA");
        assert!(TestCa::from_pem("garbage", &ca.key_pem()).is_err());
        assert!(TestCa::from_pem(&ca.pem(), "garbage").is_err());

        let again = ClientCert::from_pem(&c.chain_pem, &c.key_pem).expect("client from pem");
        assert_eq!(again.der, c.der);
        assert_eq!(again.serial, c.serial);
    }

    #[test]
    fn server_certificate_verifies_for_its_name() {
        use rustls::client::danger::ServerCertVerifier;
        let ca = TestCa::new("server ca").expect("ca");
        let name = "acme.messaging.localhost".to_owned();
        let s = ca
            .issue_server(std::slice::from_ref(&name))
            .expect("server cert");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca.der().to_vec()))
            .expect("root");
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .expect("verifier");
        let server_name = rustls::pki_types::ServerName::try_from(name).expect("name");
        verifier
            .verify_server_cert(
                &CertificateDer::from(s.der.clone()),
                &[],
                &server_name,
                &[],
                UnixTime::now(),
            )
            .expect("valid for its name");
        let other =
            rustls::pki_types::ServerName::try_from("other.messaging.localhost").expect("name");
        assert!(verifier
            .verify_server_cert(
                &CertificateDer::from(s.der.clone()),
                &[],
                &other,
                &[],
                UnixTime::now()
            )
            .is_err());
        assert!(ca.issue_server(&[]).is_err());
        assert!(KeyPair::from_pem(&s.key_pem).is_ok());
    }

    #[test]
    fn crl_lists_revoked_serials() {
        let ca = TestCa::new("ca").expect("ca");
        let c = ca
            .issue_client("d:sensor:dev1", ClientCertOptions::default())
            .expect("cert");
        let pem = ca.crl_pem(&[&c.serial], 1).expect("crl");
        let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
            .expect("crl pem");
        let (_, crl) = x509_parser::parse_x509_crl(&der).expect("parse crl");
        let serials: Vec<Vec<u8>> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect();
        assert_eq!(serials, vec![c.serial.clone()]);
        assert_eq!(
            crl.issuer().to_string(),
            parse(ca.der()).subject().to_string()
        );
    }
}
