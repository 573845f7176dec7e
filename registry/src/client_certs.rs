//! Client certificates: identities an org gives certmq for the connections certmq makes
//! *to others* (bridges to remote brokers, webhooks). A chain with its sealed key, as
//! uploaded (PEM + key, PKCS#12) or made from a CSR generated on the broker (purpose
//! `client`), so the key need never leave certmq.
//!
//! The rules: the key matches the leaf; the chain is one path; the leaf is currently
//! valid, has a strong key, is not a CA and may be used for clientAuth
//! (`not_for_client_auth`). Keys are sealed under `client-key/<org>/<id>` and never
//! returned; the broker opens them with [`Registry::client_identity`].

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cert::{self, CertDetails, CertError, Rule};
use crate::error::{Error, Result};
use crate::keys::PrivateKey;
use crate::layout;
use crate::names::OrgId;
use crate::registry::{b64, new_id, Change, Registry};
use crate::server_upload::{order_chain, public_key_of, subject, UploadServerCert};

/// Most client certificates one org keeps.
pub const MAX_CLIENT_CERTS: usize = 100;

/// A client certificate (chain) with its sealed private key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ClientCert {
    pub(crate) id: String,
    pub(crate) org: OrgId,
    /// `uploaded` or `csr`.
    pub(crate) origin: String,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    /// Leaf first, then intermediates, PEM.
    pub(crate) pem: String,
    /// PKCS#8 DER sealed under the master key; never serialized to API clients.
    #[serde(with = "b64")]
    pub(crate) sealed_key: Vec<u8>,
}

/// The API view of a client certificate: the chain and leaf details, never the key.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientCertView {
    pub id: String,
    pub org: OrgId,
    /// `uploaded` or `csr` (completed from a CSR generated on the broker).
    pub origin: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(flatten)]
    pub details: CertDetails,
    pub pem: String,
    /// The destinations (bridge and webhook ids) that connect with it.
    pub used_by: Vec<String>,
}

/// A client certificate just created, with what certmq did to the input on the way.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewClientCert {
    #[serde(flatten)]
    pub cert: ClientCertView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a client certificate upload would store: the leaf's details, how many
/// certificates the chain has, and what would be fixed on the way.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClientCertPreview {
    #[serde(flatten)]
    pub details: CertDetails,
    pub chain_length: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

pub(crate) fn seal_context(org: &str, id: &str) -> Vec<u8> {
    format!("client-key/{org}/{id}").into_bytes()
}

impl Registry {
    /// Orders `certs` and applies every client-certificate rule; `key` must be the
    /// leaf's key (`key_name` says whose, for the message). Returns the chain, leaf
    /// first, and notes on what was changed.
    pub(crate) fn check_client_chain(
        &self,
        certs: Vec<Vec<u8>>,
        key: &PrivateKey,
        key_name: &str,
    ) -> Result<(Vec<Vec<u8>>, Vec<String>)> {
        let (chain, notes) = order_chain(certs, &key.public)?;
        if public_key_of(&chain[0]) != key.public {
            return Err(CertError::new(
                Rule::KeyMismatch,
                format!(
                    "{key_name} does not belong to the leaf certificate {}: their public keys differ",
                    subject(&chain[0])
                ),
            )
            .into());
        }
        cert::check_client_leaf(&chain[0], OffsetDateTime::now_utc())?;
        Ok((chain, notes))
    }

    /// A new client certificate record, its key sealed under its own id.
    pub(crate) fn new_client_record(
        &self,
        org: &OrgId,
        chain: &[Vec<u8>],
        pkcs8: &[u8],
        origin: &str,
    ) -> ClientCert {
        let id = new_id();
        ClientCert {
            sealed_key: self.key.seal(&seal_context(org.as_str(), &id), pkcs8),
            id,
            org: org.clone(),
            origin: origin.into(),
            created_at: OffsetDateTime::now_utc(),
            pem: chain.iter().map(|d| cert::to_pem(d)).collect(),
        }
    }

    /// Writes `rec` (and `extra`) in one batch after the checks only the lock makes
    /// safe: the org exists, the same leaf is not stored yet, the org is under
    /// [`MAX_CLIENT_CERTS`].
    pub(crate) fn store_client_cert(
        &self,
        org: &OrgId,
        rec: &ClientCert,
        extra: Vec<crate::store::Op>,
    ) -> Result<()> {
        let leaf = cert::read_chain(rec.pem.as_bytes())?;
        let fp = cert::fingerprint(&leaf[0]);
        let _g = self.lock();
        self.get_org(org)?;
        let existing: Vec<ClientCert> = self.scan_json(&layout::client_certs(org))?;
        for c in &existing {
            let same = cert::read_chain(c.pem.as_bytes())
                .is_ok_and(|chain| cert::fingerprint(&chain[0]) == fp);
            if same {
                return Err(Error::Conflict(format!(
                    "this certificate is already stored as client certificate {} \
                     (fingerprint {fp})",
                    c.id
                )));
            }
        }
        if existing.len() >= MAX_CLIENT_CERTS {
            return Err(Error::Conflict(format!(
                "org {org} already has {MAX_CLIENT_CERTS} client certificates, the most it \
                 may keep; delete one it no longer uses"
            )));
        }
        let mut ops = vec![Self::put(layout::client_cert(org, &rec.id), rec)];
        ops.extend(extra);
        self.store.apply(ops)?;
        Ok(())
    }

    /// Uploads a client certificate chain with its key, or a PKCS#12 file, for
    /// outgoing connections. Errors: 404 no such org, 409 the same leaf is already
    /// stored, 422 a rule failed (`key_mismatch`, `expired`, `not_yet_valid`,
    /// `weak_key`, `leaf_is_ca`, `not_for_client_auth`, and the parsing rules).
    pub fn upload_client_cert(
        &self,
        org: &OrgId,
        upload: UploadServerCert,
    ) -> Result<NewClientCert> {
        self.get_org(org)?;
        let (key, chain, notes) = self.read_client_upload(&upload)?;
        let rec = self.new_client_record(org, &chain, &key.pkcs8, "uploaded");
        self.store_client_cert(org, &rec, Vec::new())?;
        self.notify(Change::Org(org.clone()));
        Ok(NewClientCert {
            cert: self.client_view(rec)?,
            notes,
        })
    }

    /// Runs every check of [`Registry::upload_client_cert`] and stores nothing: what the
    /// upload would be, or the rule it breaks. The key is read to check it, then dropped.
    pub fn preview_client_cert(
        &self,
        org: &OrgId,
        upload: UploadServerCert,
    ) -> Result<ClientCertPreview> {
        self.get_org(org)?;
        let (_, chain, notes) = self.read_client_upload(&upload)?;
        Ok(ClientCertPreview {
            details: cert::details(&chain[0])?,
            chain_length: chain.len(),
            notes,
        })
    }

    /// Reads an upload's key and chain and applies the client-certificate rules.
    fn read_client_upload(
        &self,
        upload: &UploadServerCert,
    ) -> Result<(PrivateKey, Vec<Vec<u8>>, Vec<String>)> {
        let (key, certs) = upload.read()?;
        let (chain, notes) = self.check_client_chain(certs, &key, "the private key")?;
        Ok((key, chain, notes))
    }

    pub(crate) fn client_record(&self, org: &OrgId, id: &str) -> Result<ClientCert> {
        self.get_json(&layout::client_cert(org, id))?
            .ok_or_else(|| {
                Error::NotFound(format!("client certificate {id} not found in org {org}"))
            })
    }

    fn client_view(&self, rec: ClientCert) -> Result<ClientCertView> {
        let used_by = self
            .list_destination_records(&rec.org)?
            .into_iter()
            .filter(|d| d.client_cert.as_deref() == Some(rec.id.as_str()))
            .map(|d| d.id)
            .collect();
        let chain = cert::read_chain(rec.pem.as_bytes())?;
        Ok(ClientCertView {
            details: cert::details(&chain[0])?,
            id: rec.id,
            org: rec.org,
            origin: rec.origin,
            created_at: rec.created_at,
            pem: rec.pem,
            used_by,
        })
    }

    /// The org's client certificates, newest first.
    pub fn list_client_certs(&self, org: &OrgId) -> Result<Vec<ClientCertView>> {
        self.get_org(org)?;
        let mut all: Vec<ClientCert> = self.scan_json(&layout::client_certs(org))?;
        all.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        all.into_iter().map(|c| self.client_view(c)).collect()
    }

    pub fn get_client_cert(&self, org: &OrgId, id: &str) -> Result<ClientCertView> {
        self.get_org(org)?;
        let rec = self.client_record(org, id)?;
        self.client_view(rec)
    }

    /// Deletes a client certificate and its key; 409 while a destination uses it.
    pub fn delete_client_cert(&self, org: &OrgId, id: &str) -> Result<()> {
        let _g = self.lock();
        self.get_org(org)?;
        self.client_record(org, id)?;
        let users: Vec<String> = self
            .list_destination_records(org)?
            .into_iter()
            .filter(|d| d.client_cert.as_deref() == Some(id))
            .map(|d| format!("{} {} ({})", d.kind.as_str(), d.name, d.id))
            .collect();
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "client certificate {id} is used by {}; give them another client_cert or \
                 delete them first",
                users.join(", ")
            )));
        }
        self.store
            .apply(vec![crate::store::Op::Delete(layout::client_cert(org, id))])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(())
    }

    /// The chain (DER, leaf first) and the opened PKCS#8 key of client certificate
    /// `id` of `org`, for the broker's outgoing TLS. Only the org's own certificates
    /// are found: another org's id is a 404.
    pub fn client_identity(&self, org: &OrgId, id: &str) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
        let rec = self.client_record(org, id)?;
        let chain = cert::read_chain(rec.pem.as_bytes())?;
        let key = self
            .key
            .open(&seal_context(org.as_str(), &rec.id), &rec.sealed_key)?;
        Ok((chain, key))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{ExtendedKeyUsagePurpose, KeyPair};

    use super::*;
    use crate::cert::Rule;
    use crate::registry::tests::registry;
    use crate::server_upload::tests::Ca;
    use crate::{BridgeRequest, CsrCompletion, CsrPurpose, CsrRequest, CsrSubject, ForwardRule};

    fn pem_upload(cert: String, key: &KeyPair) -> UploadServerCert {
        UploadServerCert::Pem {
            certificate: cert,
            private_key: key.serialize_pem(),
            passphrase: None,
        }
    }

    fn rule_of<T: std::fmt::Debug>(r: Result<T>) -> Rule {
        match r {
            Err(Error::Rejected(e)) => e.rule,
            other => panic!("expected a rule, got {other:?}"),
        }
    }

    pub(crate) fn client_leaf(ca: &Ca, key: &KeyPair) -> String {
        ca.leaf(key, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        })
    }

    #[test]
    fn upload_checks_the_client_rules_and_never_shows_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let org = r.create_org("acme", "").unwrap().id;
        let ca = Ca::root("Partner CA");
        let key = KeyPair::generate().unwrap();

        // serverAuth only: refused by name.
        let server_only = ca.leaf(&key, |_| {});
        let e = r.upload_client_cert(&org, pem_upload(server_only, &key));
        assert_eq!(rule_of(e), Rule::NotForClientAuth);
        // Another key.
        let other = KeyPair::generate().unwrap();
        let e = r.upload_client_cert(&org, pem_upload(client_leaf(&ca, &key), &other));
        assert_eq!(rule_of(e), Rule::KeyMismatch);
        // Expired.
        let expired = ca.leaf(&key, |p| {
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            p.not_after = OffsetDateTime::now_utc() - time::Duration::days(1);
        });
        assert_eq!(
            rule_of(r.upload_client_cert(&org, pem_upload(expired, &key))),
            Rule::Expired
        );
        assert!(
            r.list_client_certs(&org).unwrap().is_empty(),
            "nothing stored"
        );

        // The chain in reverse order is fixed, and the same leaf twice is a conflict.
        let chain = format!("{}{}", ca.pem, client_leaf(&ca, &key));
        let made = r
            .upload_client_cert(&org, pem_upload(chain.clone(), &key))
            .unwrap();
        assert_eq!(made.cert.origin, "uploaded");
        assert_eq!(made.notes.len(), 1, "{:?}", made.notes);
        assert!(matches!(
            r.upload_client_cert(&org, pem_upload(chain, &key)),
            Err(Error::Conflict(_))
        ));
        let json = serde_json::to_string(&r.list_client_certs(&org).unwrap()).unwrap();
        assert!(
            !json.contains("PRIVATE KEY") && !json.contains("sealed"),
            "{json}"
        );
        let (chain, pkcs8) = r.client_identity(&org, &made.cert.id).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(pkcs8, key.serialize_der());

        // Another org cannot reach it.
        let beta = r.create_org("beta", "").unwrap().id;
        assert!(matches!(
            r.client_identity(&beta, &made.cert.id),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn a_client_csr_becomes_a_client_cert_and_a_used_one_cannot_be_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let org = r.create_org("acme", "").unwrap().id;
        let csr = r
            .create_csr(
                &org,
                CsrRequest {
                    subject: CsrSubject {
                        common_name: "certmq acme bridge".into(),
                        ..Default::default()
                    },
                    purpose: CsrPurpose::Client,
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(csr.sans.is_empty(), "no host name needed: {:?}", csr.sans);
        let ca = Ca::root("Partner CA");
        let signed = ca.sign_csr(&csr.csr_pem, |_| {});
        let done = match r.complete_csr(&org, &csr.id, signed.as_bytes()).unwrap() {
            CsrCompletion::Client(c) => c,
            CsrCompletion::Server(s) => panic!("a server certificate {}", s.cert.id),
        };
        assert_eq!(done.cert.origin, "csr");
        let view = r.get_csr(&org, &csr.id).unwrap();
        assert_eq!(view.client_cert_id.as_deref(), Some(done.cert.id.as_str()));
        assert!(matches!(
            r.complete_csr(&org, &csr.id, signed.as_bytes()),
            Err(Error::Conflict(_))
        ));

        let bridge = r
            .create_bridge(
                &org,
                BridgeRequest {
                    name: "upstream".into(),
                    url: "mqtts://broker.example.com".into(),
                    server_name: None,
                    client_cert: Some(done.cert.id.clone()),
                    ca_certificates: Some(ca.pem.clone()),
                    trust_system_roots: false,
                    client_id: None,
                    forward: vec![ForwardRule {
                        filter: "iot-2/type/+/id/+/evt/+/fmt/+".into(),
                        topic: "fleet/{type}/{id}/{event}".into(),
                        qos: 1,
                    }],
                    receive: Vec::new(),
                },
            )
            .unwrap();
        assert_eq!(
            r.get_client_cert(&org, &done.cert.id).unwrap().used_by,
            vec![bridge.id.clone()]
        );
        assert!(matches!(
            r.delete_client_cert(&org, &done.cert.id),
            Err(Error::Conflict(_))
        ));
        r.delete_destination(&org, crate::DestinationKind::Bridge, &bridge.id)
            .unwrap();
        r.delete_client_cert(&org, &done.cert.id).unwrap();
    }
}
