//! The TLS client side of outgoing connections: one rustls config per destination
//! (its own trust, its own client certificate), and failures told in words.

use std::sync::Arc;

use registry::{Destination, Registry};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};

/// The rustls config `d` connects with: `d`'s CA bundle (plus the system roots when it
/// asks), and `d`'s client certificate when it names one. `alpn`: protocols to offer.
pub(super) fn client_config(
    registry: &Registry,
    d: &Destination,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let anchors = d
        .trust_anchors()
        .map_err(|e| format!("ca_certificates: {e}"))?;
    for (i, der) in anchors.into_iter().enumerate() {
        roots.add(CertificateDer::from(der)).map_err(|e| {
            format!(
                "ca_certificates: certificate {} is no trust anchor: {e}",
                i + 1
            )
        })?;
    }
    if d.trust_system_roots {
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            return Err("trust_system_roots: the system has no readable root CAs".into());
        }
    }
    let provider = Arc::new(crate::tls::provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let mut config = match &d.client_cert {
        Some(id) => {
            let (chain, key) = registry
                .client_identity(&d.org, id)
                .map_err(|e| format!("client_cert {id}: {e}"))?;
            let chain = chain.into_iter().map(CertificateDer::from).collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client_cert {id}: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The server name `d`'s remote certificate is checked against.
pub(super) fn server_name(d: &Destination) -> Result<ServerName<'static>, String> {
    let name = d.tls_server_name().map_err(|e| e.to_string())?;
    ServerName::try_from(name.clone())
        .map_err(|_| format!("server_name {name:?} is not a valid name"))
}

/// `BadCertificate` → `bad_certificate`, as the TLS RFCs name alerts.
fn alert_name(a: &AlertDescription) -> String {
    let mut out = String::new();
    for (i, c) in format!("{a:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A TLS failure in words: which side refused what.
pub(super) fn describe_tls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::AlertReceived(a) => {
            use AlertDescription as A;
            let hint = match a {
                A::BadCertificate
                | A::CertificateRequired
                | A::UnknownCA
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::AccessDenied => ": the remote refused our client certificate",
                A::UnrecognisedName => ": the remote does not serve this server_name",
                A::HandshakeFailure => {
                    ": no TLS parameters in common, or the remote wants a client certificate"
                }
                _ => "",
            };
            format!("the remote sent the TLS alert {}{hint}", alert_name(a))
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the remote's certificate was refused: it does not chain to a CA in \
             ca_certificates (unknown issuer)"
                .into()
        }
        rustls::Error::InvalidCertificate(c) => {
            format!(
                "the remote's certificate was refused: {}",
                rustls::Error::InvalidCertificate(c.clone())
            )
        }
        other => format!("TLS: {other}"),
    }
}

/// An I/O failure of a connection in words (a TLS failure inside it told as such).
pub(super) fn describe_io(e: &std::io::Error, peer: &str) -> String {
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return describe_tls(t);
    }
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => format!("{peer} refused the connection (nothing listens there?)"),
        K::ConnectionReset => format!("{peer} reset the connection"),
        K::UnexpectedEof => format!("{peer} closed the connection"),
        K::TimedOut => format!("{peer} did not answer in time"),
        _ => format!("{peer}: {e}"),
    }
}
