//! Server certificates: an org's chains with their sealed keys, of which at most one
//! is active (presented to devices), and the self-signed ones certmq generates.
//! Uploads and CSR completions are checked in `server_upload` and stored here.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cert::{self, CertDetails};
use crate::claims::leaf_dns_names;
use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::registry::{b64, new_id, Change, Registry};
use crate::seal::{MasterKey, SealError};
use crate::store::Op;

/// A server certificate (chain) with its sealed private key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerCert {
    pub id: String,
    pub org: OrgId,
    pub active: bool,
    /// `self-signed`, `uploaded` or `csr`.
    pub origin: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Leaf first, then intermediates, PEM.
    pub pem: String,
    /// PKCS#8 DER sealed under the master key; never serialized to API clients.
    #[serde(with = "b64")]
    pub(crate) sealed_key: Vec<u8>,
}

impl ServerCert {
    /// Re-seals the certificate's key under `new` (`rekey`).
    pub(crate) fn reseal(
        &mut self,
        old: &MasterKey,
        new: &MasterKey,
    ) -> std::result::Result<(), SealError> {
        let context = Registry::seal_context(self.org.as_str(), &self.id);
        let plain = old.open(&context, &self.sealed_key)?;
        self.sealed_key = new.seal(&context, &plain);
        Ok(())
    }
}

/// The API view of a server certificate: chain PEM and leaf details, never the key.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerCertView {
    pub id: String,
    pub org: OrgId,
    pub active: bool,
    pub origin: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(flatten)]
    pub details: CertDetails,
    pub pem: String,
}

fn to_pem_chain(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| cert::to_pem(d)).collect()
}

impl Registry {
    pub(crate) fn self_signed(&self, names: Vec<String>) -> Result<(Vec<u8>, Vec<u8>)> {
        let mut params = rcgen::CertificateParams::new(names.clone())
            .map_err(|e| Error::BadRequest(format!("invalid host name: {e}")))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "certmq");
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(397);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate()
            .map_err(|e| Error::BadRequest(format!("key generation failed: {e}")))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| Error::BadRequest(format!("certificate generation failed: {e}")))?;
        Ok((cert.der().to_vec(), key.serialize_der()))
    }

    pub(crate) fn seal_context(org: &str, id: &str) -> Vec<u8> {
        format!("server-key/{org}/{id}").into_bytes()
    }

    /// Generates a self-signed certificate for the org's host names (`<org>.<domain>`
    /// and `<org>.<custom domain>` for each custom domain), stored inactive unless the
    /// org has no active server certificate yet.
    pub fn create_self_signed(&self, org: &OrgId) -> Result<ServerCertView> {
        let names = self.org_host_names(org);
        let (der, key) = self.self_signed(names.clone())?;
        let _g = self.lock();
        self.get_org(org)?;
        self.ensure_names_unclaimed(org, &names)?;
        let existing: Vec<ServerCert> = self.scan_json(&layout::server_certs(org))?;
        let mut rec = self.new_server_record(org, &[der], &key, "self-signed");
        // An org's first server certificate replaces the platform default at once; later
        // ones wait for an activation, so generating one never swaps out a certificate
        // devices already connect with.
        rec.active = !existing.iter().any(|c| c.active);
        self.store
            .apply(vec![Self::put(layout::server_cert(org, &rec.id), &rec)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        ServerCertView::try_from(rec)
    }

    /// A new inactive server certificate record, its key sealed under its own id.
    pub(crate) fn new_server_record(
        &self,
        org: &OrgId,
        chain: &[Vec<u8>],
        pkcs8: &[u8],
        origin: &str,
    ) -> ServerCert {
        let id = new_id();
        ServerCert {
            sealed_key: self.key.seal(&Self::seal_context(org.as_str(), &id), pkcs8),
            id,
            org: org.clone(),
            active: false,
            origin: origin.into(),
            created_at: OffsetDateTime::now_utc(),
            pem: to_pem_chain(chain),
        }
    }

    pub(crate) fn server_record(&self, org: &OrgId, id: &str) -> Result<ServerCert> {
        self.get_json(&layout::server_cert(org, id))?
            .ok_or_else(|| {
                Error::NotFound(format!("server certificate {id} not found in org {org}"))
            })
    }

    /// The org's server certificates: the active one first, then the newest first.
    pub fn list_server_certs(&self, org: &OrgId) -> Result<Vec<ServerCertView>> {
        self.get_org(org)?;
        let mut views = self
            .scan_json::<ServerCert>(&layout::server_certs(org))?
            .into_iter()
            .map(ServerCertView::try_from)
            .collect::<Result<Vec<_>>>()?;
        views.sort_by(|a, b| {
            b.active
                .cmp(&a.active)
                .then(b.created_at.cmp(&a.created_at))
                .then(a.id.cmp(&b.id))
        });
        Ok(views)
    }

    pub fn get_server_cert(&self, org: &OrgId, id: &str) -> Result<ServerCertView> {
        self.get_org(org)?;
        ServerCertView::try_from(self.server_record(org, id)?)
    }

    /// Makes `id` the org's one active server certificate, atomically. 409 `name_taken`
    /// when one of its names belongs to another org ([`crate::claims`]).
    pub fn activate_server_cert(&self, org: &OrgId, id: &str) -> Result<ServerCertView> {
        let _g = self.lock();
        self.get_org(org)?;
        let target = self.server_record(org, id)?;
        let leaf = cert::read_chain(target.pem.as_bytes())?;
        cert::check_server_leaf(&leaf[0], OffsetDateTime::now_utc())?;
        // Activating claims the leaf's names (docs/security.md); checked under the lock
        // the write holds, so of two orgs activating one name only the first wins.
        self.ensure_names_unclaimed(org, &leaf_dns_names(&target.pem)?)?;
        let mut ops = Vec::new();
        let mut activated = None;
        for mut c in self.scan_json::<ServerCert>(&layout::server_certs(org))? {
            let want = c.id == id;
            if c.active != want {
                c.active = want;
                ops.push(Self::put(layout::server_cert(org, &c.id), &c));
            }
            if want {
                activated = Some(c);
            }
        }
        self.store.apply(ops)?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        ServerCertView::try_from(activated.unwrap_or(target))
    }

    pub fn delete_server_cert(&self, org: &OrgId, id: &str) -> Result<()> {
        let _g = self.lock();
        self.get_org(org)?;
        let rec = self.server_record(org, id)?;
        if rec.active {
            return Err(Error::Conflict(
                "this server certificate is active; activate another one before deleting it".into(),
            ));
        }
        self.store
            .apply(vec![Op::Delete(layout::server_cert(org, id))])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(())
    }

    pub(crate) fn open_server(&self, rec: &ServerCert) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
        let chain = cert::read_chain(rec.pem.as_bytes())?;
        let key = self.key.open(
            &Self::seal_context(rec.org.as_str(), &rec.id),
            &rec.sealed_key,
        )?;
        Ok((chain, key))
    }
}

impl TryFrom<ServerCert> for ServerCertView {
    type Error = Error;
    fn try_from(r: ServerCert) -> Result<ServerCertView> {
        let chain = cert::read_chain(r.pem.as_bytes())?;
        let details = cert::details(&chain[0])?;
        Ok(ServerCertView {
            id: r.id,
            org: r.org,
            active: r.active,
            origin: r.origin,
            created_at: r.created_at,
            details,
            pem: r.pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::registry::tests::{registry, walk};

    #[test]
    fn concurrent_activations_leave_exactly_one_active() {
        let dir = tempfile::tempdir().unwrap();
        let r = Arc::new(registry(dir.path()));
        let org = r.create_org("acme", "").unwrap().id;
        let ids: Vec<String> = (0..8)
            .map(|_| r.create_self_signed(&org).unwrap().id)
            .collect();
        for _ in 0..5 {
            let barrier = Arc::new(std::sync::Barrier::new(ids.len()));
            let handles: Vec<_> = ids
                .iter()
                .cloned()
                .map(|id| {
                    let (r, org, barrier) = (r.clone(), org.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        r.activate_server_cert(&org, &id).unwrap();
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
            let active = r
                .list_server_certs(&org)
                .unwrap()
                .into_iter()
                .filter(|c| c.active)
                .count();
            assert_eq!(active, 1);
        }
    }

    #[test]
    fn private_keys_are_not_stored_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let org = r.create_org("acme", "").unwrap().id;
        r.create_self_signed(&org).unwrap();
        let key = r.tls_material(&org).unwrap().unwrap().server.unwrap().1;
        drop(r);
        let mut found = false;
        for entry in walk(dir.path()) {
            let bytes = std::fs::read(entry).unwrap();
            found |= bytes.windows(key.len()).any(|w| w == key.as_slice());
        }
        assert!(!found, "the PKCS#8 key bytes appear in the store files");
    }
}
