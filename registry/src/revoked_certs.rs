//! Single certificates an org revoked (`/orgs/{org}/revoked-certs`), as AWS IoT revokes
//! one device certificate: by its SHA-256 fingerprint, or by the org CA that admits it
//! and its serial. The broker refuses a revoked certificate in the handshake (TLS alert
//! `certificate_revoked`) and closes the live sessions it admitted; the identity itself
//! stays free to connect with another certificate (blocking is for the device itself).
//!
//! A revocation by fingerprint must name a certificate the org's inventory has seen
//! (else 422 `unknown_certificate`: a typo must not pass for a revocation); one by CA
//! and serial may name a certificate that never connected, so a leaked certificate can
//! be revoked before it is used.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ca_certs::CaCert;
use crate::cert::{CertError, Rule};
use crate::error::{Error, Result};
use crate::layout;
use crate::names::{Identity, OrgId};
use crate::registry::{new_id, Change, Registry};
use crate::store::Op;

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokedCert {
    pub id: String,
    /// Known when revoked by fingerprint, or when the certificate had connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint_sha256: Option<String>,
    /// The org CA that admits the certificate.
    pub ca_id: String,
    /// Lowercase hex with colons.
    pub serial: String,
    /// The identity that used it, when the inventory knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub identity: Option<Identity>,
    #[serde(default)]
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// What to revoke: a fingerprint, or a CA and a serial.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", schema(example = json!({"fingerprint_sha256": "5f1c…64 hex", "reason": "key leaked"})))]
pub struct RevokeRequest {
    /// SHA-256 of the certificate's DER, 64 hex digits (colons allowed).
    pub fingerprint_sha256: Option<String>,
    /// The org CA that admits the certificate (with `serial`).
    pub ca_id: Option<String>,
    /// The certificate's serial in hex, colons optional (with `ca_id`).
    pub serial: Option<String>,
    /// Free text, at most 500 characters.
    #[serde(default)]
    pub reason: String,
}

/// `ab:CD:01` / `abcd01` → `ab:cd:01`; `None` unless 1-20 bytes of hex.
fn canonical_serial(s: &str) -> Option<String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let hex = hex.to_ascii_lowercase();
    let hex = if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    };
    if hex.is_empty() || hex.len() > 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(
        hex.as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// A fingerprint as certmq writes them: 64 lowercase hex digits.
fn canonical_fingerprint(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

impl Registry {
    /// Revokes one certificate; the broker closes its live sessions before this returns.
    pub fn revoke_cert(&self, org: &OrgId, req: RevokeRequest) -> Result<RevokedCert> {
        crate::text::check("reason", &req.reason, 500)?;
        self.get_org(org)?;
        let rec = match (&req.fingerprint_sha256, &req.ca_id, &req.serial) {
            (Some(fp), None, None) => {
                let fp = canonical_fingerprint(fp).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "fingerprint_sha256 must be 64 hex digits (SHA-256 of the certificate's DER); got {fp:?}"
                    ))
                })?;
                let Some((identity, cert)) = self.device_by_cert(org, &fp)? else {
                    return Err(CertError::new(
                        Rule::UnknownCertificate,
                        format!(
                            "no device of org {org} connected with the certificate {fp}; \
                             revoke by ca_id and serial to revoke one that never connected"
                        ),
                    )
                    .into());
                };
                RevokedCert {
                    id: new_id(),
                    fingerprint_sha256: Some(fp),
                    ca_id: cert.ca_id,
                    serial: cert.serial,
                    identity: Some(identity),
                    reason: req.reason,
                    created_at: OffsetDateTime::now_utc(),
                }
            }
            (None, Some(ca_id), Some(serial)) => {
                let serial = canonical_serial(serial).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "serial must be 1-20 bytes of hex, colons optional; got {serial:?}"
                    ))
                })?;
                if self.get_json::<CaCert>(&layout::ca(org, ca_id))?.is_none() {
                    return Err(Error::NotFound(format!(
                        "CA certificate {ca_id} not found in org {org}"
                    )));
                }
                RevokedCert {
                    id: new_id(),
                    fingerprint_sha256: None,
                    ca_id: ca_id.clone(),
                    serial,
                    identity: None,
                    reason: req.reason,
                    created_at: OffsetDateTime::now_utc(),
                }
            }
            _ => {
                return Err(Error::BadRequest(
                    "give either fingerprint_sha256, or ca_id and serial".into(),
                ))
            }
        };
        let _g = self.lock();
        self.get_org(org)?;
        let existing: Vec<RevokedCert> = self.scan_json(&layout::revoked_certs(org))?;
        if let Some(old) = existing.iter().find(|o| {
            (o.ca_id == rec.ca_id && o.serial == rec.serial)
                || (o.fingerprint_sha256.is_some()
                    && o.fingerprint_sha256 == rec.fingerprint_sha256)
        }) {
            return Err(Error::Conflict(format!(
                "this certificate is already revoked ({})",
                old.id
            )));
        }
        self.store
            .apply(vec![Self::put(layout::revoked_cert(org, &rec.id), &rec)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(rec)
    }

    /// The org's revoked certificates, oldest first.
    pub fn list_revoked_certs(&self, org: &OrgId) -> Result<Vec<RevokedCert>> {
        self.get_org(org)?;
        let mut v: Vec<RevokedCert> = self.scan_json(&layout::revoked_certs(org))?;
        v.sort_by_key(|r| r.created_at);
        Ok(v)
    }

    /// Lifts a revocation: the certificate is admitted again from the next handshake.
    pub fn unrevoke_cert(&self, org: &OrgId, id: &str) -> Result<()> {
        let _g = self.lock();
        self.get_org(org)?;
        let key = layout::revoked_cert(org, id);
        if self.store.get(&key)?.is_none() {
            return Err(Error::NotFound(format!(
                "revocation {id} not found in org {org}"
            )));
        }
        self.store.apply(vec![Op::Delete(key)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(())
    }

    /// The org's revocations, for the broker's handshake and admission rules.
    pub fn revoked_cert_list(&self, org: &OrgId) -> Result<Vec<RevokedCert>> {
        self.scan_json(&layout::revoked_certs(org))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_and_fingerprints_are_canonical() {
        assert_eq!(canonical_serial("AB:cd:1").as_deref(), Some("0a:bc:d1"));
        assert_eq!(canonical_serial("0102").as_deref(), Some("01:02"));
        assert_eq!(canonical_serial("zz"), None);
        assert_eq!(canonical_serial(""), None);
        assert_eq!(canonical_serial(&"1".repeat(41)), None);
        assert!(canonical_fingerprint(&"A".repeat(64)).is_some());
        assert!(canonical_fingerprint("abc").is_none());
    }

    #[test]
    fn revocations_need_a_known_certificate_or_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let fp = "ab".repeat(32);
        let by_fp = RevokeRequest {
            fingerprint_sha256: Some(fp.clone()),
            ..Default::default()
        };
        match r.revoke_cert(&acme, by_fp.clone()) {
            Err(Error::Rejected(e)) => assert_eq!(e.rule, Rule::UnknownCertificate),
            other => panic!("{other:?}"),
        }
        assert!(r.list_revoked_certs(&acme).unwrap().is_empty());
        r.record_admission(crate::devices::Admission {
            org: acme.clone(),
            identity: Identity::parse("d:s:1").unwrap(),
            client_id: "d:acme:s:1".into(),
            addr: "127.0.0.1".parse().unwrap(),
            cert: Some(crate::devices::SeenCert {
                fingerprint_sha256: fp.clone(),
                serial: "01".into(),
                not_after: OffsetDateTime::now_utc(),
                ca_id: "ca1".into(),
            }),
            took_over_from: None,
        });
        let rec = r.revoke_cert(&acme, by_fp.clone()).unwrap();
        assert_eq!(rec.serial, "01");
        assert_eq!(rec.identity.unwrap().to_string(), "d:s:1");
        assert!(matches!(
            r.revoke_cert(&acme, by_fp),
            Err(Error::Conflict(_))
        ));
        let by_serial = RevokeRequest {
            ca_id: Some("nope".into()),
            serial: Some("02".into()),
            ..Default::default()
        };
        assert!(matches!(
            r.revoke_cert(&acme, by_serial),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            r.revoke_cert(&acme, RevokeRequest::default()),
            Err(Error::BadRequest(_))
        ));
        r.unrevoke_cert(&acme, &rec.id).unwrap();
        assert!(r.list_revoked_certs(&acme).unwrap().is_empty());
    }
}
