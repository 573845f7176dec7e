//! Refusals in plain words for the log: what was refused, by whom, and what to do next.
//! The metrics count every refusal; the log explains them (and is kept from flooding
//! where a stranger decides how many there are).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use registry::live::Stage;
use tracing::{debug, info};

/// At most one info line per this long for handshakes naming no org; the others are
/// logged at debug and counted into the next info line (and always in
/// `certmq_handshakes_total{reason="unrecognized_name"}`).
const UNKNOWN_NAME_EVERY: Duration = Duration::from_secs(10);

/// Longest part of a client-chosen server name that reaches the log.
const MAX_NAME_IN_LOG: usize = 80;

/// Logs a handshake refused because its server name (SNI) maps to no org: scanners and
/// misconfigured clients can send any number of these, so at info only once per
/// [`UNKNOWN_NAME_EVERY`], with how many were seen since.
pub(crate) fn unknown_server_name(sni: Option<&str>) {
    static LAST: Mutex<(Option<Instant>, u64)> = Mutex::new((None, 0));
    let shown: String = sni.unwrap_or("").chars().take(MAX_NAME_IN_LOG).collect();
    let now = Instant::now();
    let mut last = crate::lock(&LAST);
    if last
        .0
        .is_some_and(|t| now.duration_since(t) < UNKNOWN_NAME_EVERY)
    {
        last.1 += 1;
        drop(last);
        debug!(sni = ?shown, "TLS handshake refused: no org has this server name");
        return;
    }
    let more = std::mem::take(&mut last.1);
    last.0 = Some(now);
    drop(last);
    let what = if sni.is_none() {
        "the client sent no server name (SNI)".to_owned()
    } else {
        format!("no org has the server name {shown:?}")
    };
    info!(
        more_since_last_line = more,
        "TLS handshake refused (unrecognized_name): {what}; a device must connect to \
         <org>.<domain> or a custom domain of its org, with that name as SNI"
    );
}

/// What a failed TLS handshake means, in plain words: which side refused and the next
/// step. `reason` is the metrics label ([`crate::metrics::handshake_reason`]).
pub(crate) fn handshake_failure(reason: &str, e: &std::io::Error) -> String {
    match reason {
        "client_alert" => format!(
            "the client refused the handshake ({e}): it most likely does not trust the \
             org's server certificate; give the client the chain the org presents \
             (GET /api/v1/orgs/<org>/server-certs/<id>/chain.pem)"
        ),
        "no_client_certificate" => "the client sent no certificate, and this org's \
             security level requires one: configure the client's certificate and key"
            .to_owned(),
        "unknown_ca"
        | "certificate_expired"
        | "certificate_not_yet_valid"
        | "certificate_revoked"
        | "bad_certificate" => format!(
            "the broker refused the client certificate ({reason}: {e}); \
             POST /api/v1/orgs/<org>/authz/check with the certificate says which rule"
        ),
        _ => format!("the TLS handshake failed ({reason}: {e})"),
    }
}

/// The next step after a CONNECT refused at `stage`.
pub(crate) fn connect_refusal_next_step(stage: Stage, bad_credentials: bool) -> &'static str {
    // Stages added later fall to the generic hint instead of failing the build.
    #[allow(unreachable_patterns)]
    match stage {
        Stage::Certificate => {
            "the certificate is no longer admitted (its CA inactive or gone, or revoked): \
             GET /api/v1/orgs/<org>/ca-certs, or the dry run POST /api/v1/orgs/<org>/authz/check"
        }
        Stage::Identity => {
            "the certificate holds no identity: its subject CN (or an email SAN) must be \
             d:<type>:<id>, g:<type>:<id> or a:<app>"
        }
        Stage::ClientId => {
            "the MQTT client id must be built from the org and the certificate's identity, \
             e.g. d:<org>:<type>:<id>: fix the client's id"
        }
        Stage::SecurityLevel if bad_credentials => {
            "the device token is wrong or unknown (username use-token-auth): set it with \
             POST /api/v1/orgs/<org>/device-tokens"
        }
        Stage::SecurityLevel => {
            "the org's security level does not admit these credentials on this listener: \
             GET /api/v1/orgs/<org>/security-policy"
        }
        Stage::Blocked => {
            "the identity is blocked: GET /api/v1/orgs/<org>/blocked-devices (DELETE there \
             to lift it)"
        }
        _ => "POST /api/v1/orgs/<org>/authz/check with the client's certificate and id says which rule refused it",
    }
}

/// Why TLS refuses a client certificate, in plain words (no Rust debug text such as
/// `Other(OtherError(UnsupportedCertVersion))`): for the dry run and the log.
pub(crate) fn certificate_refusal(e: &rustls::Error) -> String {
    use rustls::{CertificateError as C, Error};
    let cert = match e {
        Error::InvalidCertificate(c) => c,
        Error::NoCertificatesPresented => return "no certificate was presented".into(),
        other => return words(&format!("{other:?}")),
    };
    match cert {
        C::Expired | C::ExpiredContext { .. } => "the certificate has expired".into(),
        C::NotValidYet | C::NotValidYetContext { .. } => "the certificate is not valid yet".into(),
        C::UnknownIssuer => {
            "it does not chain to an active CA certificate of this org (unknown_ca)".into()
        }
        C::Revoked => "the certificate is revoked".into(),
        C::BadSignature => "a signature in the chain does not verify".into(),
        C::BadEncoding => "the certificate is not valid DER".into(),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            "the certificate is not for client authentication (its extendedKeyUsage lacks clientAuth)".into()
        }
        other => {
            // webpki's own errors arrive as `Other`, whose text is the error's name.
            let name = match other {
                C::Other(o) => words(&o.to_string()),
                _ => words(&format!("{other:?}")),
            };
            if name.contains("unsupported cert version") {
                "the certificate is not X.509 v3 (only v3 certificates are accepted; \
                 `openssl x509 -req` makes v3 only with -extfile)"
                    .into()
            } else {
                format!("the certificate is refused: {name}")
            }
        }
    }
}

/// The innermost name of a debug text, in lowercase words:
/// `Other(OtherError(UnsupportedCriticalExtension))` → `unsupported critical extension`.
fn words(debug: &str) -> String {
    let inner = debug
        .rsplit('(')
        .next()
        .unwrap_or(debug)
        .trim_end_matches(')')
        .split([' ', '{', ','])
        .next()
        .unwrap_or("");
    let mut out = String::new();
    for (i, c) in inner.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    if out.is_empty() {
        "unknown reason".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_words_not_debug_text() {
        assert_eq!(
            words("Other(OtherError(UnsupportedCriticalExtension))"),
            "unsupported critical extension"
        );
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(certificate_refusal(&e).contains("active CA"));
        let e =
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                std::sync::Arc::new(std::io::Error::other("UnsupportedCertVersion")),
            )));
        let text = certificate_refusal(&e);
        assert!(
            text.contains("not X.509 v3") && !text.contains("Other("),
            "{text}"
        );
    }
}
