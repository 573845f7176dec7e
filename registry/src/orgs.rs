//! Orgs: the tenant records, and deleting an org with everything it owns.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::layout::{self, Place};
use crate::names::OrgId;
use crate::registry::{Change, Registry};
use crate::store::Op;

/// An organization.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Registry {
    pub fn create_org(&self, id: &str, name: &str) -> Result<Org> {
        let id = OrgId::try_from(id)?;
        crate::text::check("org name", name, 200)?;
        let _g = self.lock();
        if self.store.get(&layout::org(&id))?.is_some() {
            return Err(Error::Conflict(format!("org {id} already exists")));
        }
        let org = Org {
            id: id.clone(),
            name: if name.is_empty() {
                id.to_string()
            } else {
                name.to_owned()
            },
            created_at: OffsetDateTime::now_utc(),
        };
        self.store.apply(vec![Self::put(layout::org(&id), &org)])?;
        drop(_g);
        self.notify(Change::Org(id));
        Ok(org)
    }

    pub fn list_orgs(&self) -> Result<Vec<Org>> {
        self.scan_json(layout::ORGS)
    }

    pub fn get_org(&self, id: &OrgId) -> Result<Org> {
        self.get_json(&layout::org(id))?
            .ok_or_else(|| Error::NotFound(format!("org {id} not found")))
    }

    /// Deletes the org and everything it owns in one batch: whatever
    /// `layout::org_data` lists, with the global index entries its records imply.
    pub fn delete_org(&self, id: &OrgId) -> Result<()> {
        let _g = self.lock();
        self.get_org(id)?;
        let mut ops = Vec::new();
        for data in layout::org_data(id) {
            let records = match data.place {
                Place::Key(key) => self
                    .store
                    .get(&key)?
                    .map(|v| (key, v))
                    .into_iter()
                    .collect(),
                Place::Prefix(prefix) => self.store.scan(&prefix)?,
            };
            for (key, value) in records {
                if let Some(index_keys) = data.index_keys {
                    let keys =
                        index_keys(&key, &value).ok_or_else(|| Error::Corrupt(key.clone()))?;
                    ops.extend(keys.into_iter().map(Op::Delete));
                }
                ops.push(Op::Delete(key));
            }
        }
        self.store.apply(ops)?;
        self.forget_device_activity(id);
        drop(_g);
        self.notify(Change::Org(id.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::registry;

    pub(crate) fn fill_org(r: &Registry, org: &OrgId) {
        use crate::server_upload::tests::Ca;
        let policy = crate::SecurityPolicy {
            level: crate::Level::TlsOptional,
            ..Default::default()
        };
        r.set_security_policy(org, policy).unwrap();
        let ca = Ca::root(&format!("{org} CA"));
        r.add_ca(org, ca.pem.as_bytes(), "devices").unwrap();
        r.add_crl(org, ca.crl().as_bytes()).unwrap();
        r.create_self_signed(org).unwrap();
        let subject = crate::CsrSubject {
            common_name: format!("{org}.messaging.localhost"),
            ..Default::default()
        };
        let csr = crate::CsrRequest {
            subject,
            ..Default::default()
        };
        r.create_csr(org, csr).unwrap();
        r.block_device(org, "d:sensor:1", "lost").unwrap();
        r.set_device_token(org, "d:sensor:2", None).unwrap();
        r.create_token(org, "ci").unwrap();
        let event = crate::AuditEvent {
            token_id: "platform".into(),
            method: "PUT".into(),
            path: format!("/api/v1/orgs/{org}/domains"),
            org: Some(org.to_string()),
            summary: "set domains".into(),
            status: 200,
            error: None,
        };
        r.record_audit(Some(org), crate::Actor::PlatformAdmin, event)
            .unwrap();
        r.set_domains(org, &[format!("{org}-devices.example")])
            .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let client = r
            .upload_client_cert(
                org,
                crate::UploadServerCert::Pem {
                    certificate: crate::client_certs::tests::client_leaf(&ca, &key),
                    private_key: key.serialize_pem(),
                    passphrase: None,
                },
            )
            .unwrap();
        r.create_webhook(
            org,
            crate::WebhookRequest {
                name: "archive".into(),
                url: "https://hooks.example.com/in".into(),
                server_name: None,
                client_cert: Some(client.cert.id),
                ca_certificates: Some(ca.pem.clone()),
                trust_system_roots: false,
                filter: "iot-2/type/+/id/+/evt/+/fmt/+".into(),
                qos: 1,
            },
        )
        .unwrap();
    }

    #[test]
    fn deleting_an_org_leaves_nothing_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let beta = r.create_org("beta", "").unwrap().id;
        fill_org(&r, &acme);
        fill_org(&r, &beta);
        let everything = r.store.scan("").unwrap();
        // Keys name the org by id or by domain; values by `"org": "acme"` or as the
        // owner of an index entry. Ids are hex and PEM is base64, so neither has `"acme"`.
        let mentions_acme = |(k, v): &(String, Vec<u8>)| {
            k.contains("acme") || String::from_utf8_lossy(v).contains("\"acme\"")
        };
        let (of_acme, others): (Vec<_>, Vec<_>) = everything.into_iter().partition(mentions_acme);
        assert!(of_acme.len() >= 12, "{of_acme:?}");

        let token = r.create_token(&acme, "last").unwrap().token;
        r.delete_org(&acme).unwrap();
        let left = r.store.scan("").unwrap();
        let keys = |kv: &[(String, Vec<u8>)]| kv.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&left), keys(&others), "only acme's data is gone");

        // The same id starts from nothing.
        r.create_org("acme", "").unwrap();
        let left = r.store.scan("").unwrap();
        let of_new_acme: Vec<_> = left.iter().filter(|kv| mentions_acme(kv)).collect();
        assert_eq!(of_new_acme.len(), 1, "{of_new_acme:?}");
        assert_eq!(of_new_acme[0].0, "org/acme");
        assert!(r.list_cas(&acme).unwrap().is_empty());
        assert!(r.list_server_certs(&acme).unwrap().is_empty());
        assert!(r.list_csrs(&acme).unwrap().is_empty());
        assert!(r.list_client_certs(&acme).unwrap().is_empty());
        assert!(r
            .list_destinations(&acme, crate::DestinationKind::Webhook)
            .unwrap()
            .is_empty());
        assert!(r.list_blocked(&acme).unwrap().is_empty());
        assert!(r.list_crls(&acme).unwrap().is_empty());
        assert!(r.list_device_tokens(&acme).unwrap().is_empty());
        assert!(r.list_tokens(&acme).unwrap().is_empty());
        assert!(r.domains(&acme).unwrap().is_empty());
        assert_eq!(r.security_policy(&acme).unwrap(), Default::default());
        let log = crate::AuditLog::Org(acme.clone());
        assert!(r.list_audit(&log, 10, None).unwrap().is_empty());
        assert_eq!(r.authenticate_token(&token).unwrap(), None);
        assert_eq!(r.org_for_host("acme.acme-devices.example"), None);
        let m = r.tls_material(&acme).unwrap().unwrap();
        assert!(m.server.is_none() && m.cas.is_empty() && m.crls.is_empty());
        // beta's routing was not touched.
        assert_eq!(r.org_for_host("beta.beta-devices.example"), Some(beta));
    }
}
