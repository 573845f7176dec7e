//! The registry: orgs, their CA certificates and server certificates, kept in a
//! [`Store`], with private keys sealed under the [`MasterKey`].
//!
//! Every mutation validates first, then writes one atomic batch, then tells listeners
//! which org changed. Listeners run synchronously before the call returns, so when the
//! admin API answers, the broker has already dropped the org's old TLS config and the
//! next handshake sees the change.

use std::sync::{Arc, Mutex, RwLock};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cert::{self, CertDetails, CertError};
use crate::layout::{self, Place, PLATFORM_CERT};
use crate::names::{NameError, OrgId};
use crate::seal::{MasterKey, SealError};
use crate::store::{Op, Store, StoreError};

/// Everything a registry call can fail with. The admin API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    /// A certificate broke a rule (422); the error says which.
    #[error(transparent)]
    Rejected(#[from] CertError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("corrupt record {0}")]
    Corrupt(String),
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Error {
        Error::BadRequest(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An organization.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Org {
    pub id: OrgId,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A CA certificate an org uploaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaCert {
    pub id: String,
    pub org: OrgId,
    pub active: bool,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The certificate, PEM.
    pub pem: String,
}

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

/// Serde for sealed bytes as base64 (shared by every record that holds a sealed key).
pub(crate) mod b64 {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};
    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

/// The API view of a CA certificate: the record plus its parsed details.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CaView {
    pub id: String,
    pub org: OrgId,
    pub active: bool,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(flatten)]
    pub details: CertDetails,
    pub pem: String,
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

/// What the broker needs to build an org's TLS config, with the key already opened.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The active server certificate chain (DER, leaf first) and its PKCS#8 key,
    /// or `None` when the org uses the platform default certificate.
    pub server: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    /// The org's active CA certificates: (id, DER, SHA-256 fingerprint).
    pub cas: Vec<(String, Vec<u8>, String)>,
    /// The org's CRLs (DER), checked on every handshake.
    pub crls: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("server", &self.server.as_ref().map(|(c, _)| c.len()))
            .field("cas", &self.cas.len())
            .finish()
    }
}

/// What changed, for listeners (broker TLS cache, session reconciliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Anything about this org's certificates or its existence.
    Org(OrgId),
}

type Listener = Box<dyn Fn(&Change) + Send + Sync>;

/// The control-plane state of the broker.
pub struct Registry {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) key: MasterKey,
    pub(crate) domain: String,
    /// Serializes read-check-write sequences (duplicates, the single active server cert).
    pub(crate) write: Mutex<()>,
    listeners: RwLock<Vec<Listener>>,
    /// SNI routing for custom domains and certificate names (see `domains`).
    pub(crate) hosts: crate::domains::Hosts,
}

pub(crate) fn new_id() -> String {
    hex::encode(crate::seal::random_bytes::<8>())
}

pub(crate) fn to_pem_chain(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| cert::to_pem(d)).collect()
}

impl Registry {
    /// Opens the registry over `store`. `domain` is the base messaging domain
    /// (`messaging.localhost`); org hosts are `<org>.<domain>`.
    pub fn new(store: Arc<dyn Store>, key: MasterKey, domain: &str) -> Result<Registry> {
        let r = Registry {
            store,
            key,
            domain: domain.to_ascii_lowercase(),
            write: Mutex::new(()),
            listeners: RwLock::new(Vec::new()),
            hosts: Default::default(),
        };
        r.ensure_platform_cert()?;
        r.load_hosts()?;
        Ok(r)
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Registers a listener called after every committed change.
    pub fn on_change(&self, f: impl Fn(&Change) + Send + Sync + 'static) {
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    pub(crate) fn notify(&self, change: Change) {
        self.refresh_hosts(&change);
        for l in self
            .listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            l(&change);
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.store.get(key)? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| Error::Corrupt(key.to_owned())),
            None => Ok(None),
        }
    }

    pub(crate) fn scan_json<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        self.store
            .scan(prefix)?
            .into_iter()
            .map(|(k, v)| serde_json::from_slice(&v).map_err(|_| Error::Corrupt(k)))
            .collect()
    }

    pub(crate) fn put<T: Serialize>(key: String, value: &T) -> Op {
        // Our own record types always serialize.
        Op::Put(key, serde_json::to_vec(value).unwrap_or_default())
    }

    // ---- orgs ----

    pub fn create_org(&self, id: &str, name: &str) -> Result<Org> {
        let id = OrgId::try_from(id)?;
        if name.chars().count() > 200 {
            return Err(Error::BadRequest(
                "org name is longer than 200 characters".into(),
            ));
        }
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
        drop(_g);
        self.notify(Change::Org(id.clone()));
        Ok(())
    }

    // ---- CA certificates ----

    /// Checks a CA upload without storing it.
    pub fn preview_ca(&self, bytes: &[u8]) -> Result<CertDetails> {
        let der = cert::read_single(bytes)?;
        Ok(cert::check_ca(&der, OffsetDateTime::now_utc())?)
    }

    pub fn add_ca(&self, org: &OrgId, bytes: &[u8], description: &str) -> Result<CaView> {
        if description.chars().count() > 500 {
            return Err(Error::BadRequest(
                "description is longer than 500 characters".into(),
            ));
        }
        let der = cert::read_single(bytes)?;
        let details = cert::check_ca(&der, OffsetDateTime::now_utc())?;
        let _g = self.lock();
        self.get_org(org)?;
        let existing: Vec<CaCert> = self.scan_json(&layout::cas(org))?;
        if let Some(dup) = existing.iter().find(|c| {
            cert::read_single(c.pem.as_bytes())
                .is_ok_and(|d| cert::fingerprint(&d) == details.fingerprint_sha256)
        }) {
            return Err(Error::Conflict(format!(
                "this CA certificate is already uploaded as {} (fingerprint {})",
                dup.id, details.fingerprint_sha256
            )));
        }
        let ca = CaCert {
            id: new_id(),
            org: org.clone(),
            active: true,
            description: description.to_owned(),
            created_at: OffsetDateTime::now_utc(),
            pem: cert::to_pem(&der),
        };
        self.store
            .apply(vec![Self::put(layout::ca(org, &ca.id), &ca)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(CaView::from_record(ca, details))
    }

    pub(crate) fn ca_record(&self, org: &OrgId, id: &str) -> Result<CaCert> {
        self.get_json(&layout::ca(org, id))?
            .ok_or_else(|| Error::NotFound(format!("CA certificate {id} not found in org {org}")))
    }

    pub fn list_cas(&self, org: &OrgId) -> Result<Vec<CaView>> {
        self.get_org(org)?;
        self.scan_json::<CaCert>(&layout::cas(org))?
            .into_iter()
            .map(CaView::try_from)
            .collect()
    }

    pub fn get_ca(&self, org: &OrgId, id: &str) -> Result<CaView> {
        self.get_org(org)?;
        CaView::try_from(self.ca_record(org, id)?)
    }

    pub fn update_ca(
        &self,
        org: &OrgId,
        id: &str,
        active: Option<bool>,
        description: Option<String>,
    ) -> Result<CaView> {
        let _g = self.lock();
        self.get_org(org)?;
        let mut ca = self.ca_record(org, id)?;
        if let Some(a) = active {
            ca.active = a;
        }
        if let Some(d) = description {
            if d.chars().count() > 500 {
                return Err(Error::BadRequest(
                    "description is longer than 500 characters".into(),
                ));
            }
            ca.description = d;
        }
        self.store
            .apply(vec![Self::put(layout::ca(org, id), &ca)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        CaView::try_from(ca)
    }

    pub fn delete_ca(&self, org: &OrgId, id: &str) -> Result<()> {
        let _g = self.lock();
        self.get_org(org)?;
        self.ca_record(org, id)?;
        self.store.apply(vec![Op::Delete(layout::ca(org, id))])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(())
    }

    // ---- server certificates ----

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
        let (der, key) = self.self_signed(self.org_host_names(org))?;
        let id = new_id();
        let _g = self.lock();
        self.get_org(org)?;
        let existing: Vec<ServerCert> = self.scan_json(&layout::server_certs(org))?;
        let rec = ServerCert {
            sealed_key: self.key.seal(&Self::seal_context(org.as_str(), &id), &key),
            id: id.clone(),
            org: org.clone(),
            active: !existing.iter().any(|c| c.active),
            origin: "self-signed".into(),
            created_at: OffsetDateTime::now_utc(),
            pem: cert::to_pem(&der),
        };
        self.store
            .apply(vec![Self::put(layout::server_cert(org, &id), &rec)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        ServerCertView::try_from(rec)
    }

    pub(crate) fn server_record(&self, org: &OrgId, id: &str) -> Result<ServerCert> {
        self.get_json(&layout::server_cert(org, id))?
            .ok_or_else(|| {
                Error::NotFound(format!("server certificate {id} not found in org {org}"))
            })
    }

    pub fn list_server_certs(&self, org: &OrgId) -> Result<Vec<ServerCertView>> {
        self.get_org(org)?;
        self.scan_json::<ServerCert>(&layout::server_certs(org))?
            .into_iter()
            .map(ServerCertView::try_from)
            .collect()
    }

    pub fn get_server_cert(&self, org: &OrgId, id: &str) -> Result<ServerCertView> {
        self.get_org(org)?;
        ServerCertView::try_from(self.server_record(org, id)?)
    }

    /// Makes `id` the org's one active server certificate, atomically.
    pub fn activate_server_cert(&self, org: &OrgId, id: &str) -> Result<ServerCertView> {
        let _g = self.lock();
        self.get_org(org)?;
        let target = self.server_record(org, id)?;
        let leaf = cert::read_chain(target.pem.as_bytes())?;
        cert::check_server_leaf(&leaf[0], OffsetDateTime::now_utc())?;
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

    // ---- what the broker reads ----

    /// The TLS material of `org`, or `None` when the org does not exist.
    pub fn tls_material(&self, org: &OrgId) -> Result<Option<TlsMaterial>> {
        if self.store.get(&layout::org(org))?.is_none() {
            return Ok(None);
        }
        let server = match self
            .scan_json::<ServerCert>(&layout::server_certs(org))?
            .into_iter()
            .find(|c| c.active)
        {
            Some(rec) => Some(self.open_server(&rec)?),
            None => None,
        };
        let mut cas = Vec::new();
        for ca in self.scan_json::<CaCert>(&layout::cas(org))? {
            if ca.active {
                let der = cert::read_single(ca.pem.as_bytes())?;
                let fp = cert::fingerprint(&der);
                cas.push((ca.id, der, fp));
            }
        }
        let crls = self.crl_ders(org)?;
        Ok(Some(TlsMaterial { server, cas, crls }))
    }

    /// The platform default certificate (SAN `*.<domain>`), presented to orgs that
    /// have no active server certificate of their own. Chain DER and PKCS#8 key.
    pub fn platform_cert(&self) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
        let rec: ServerCert = self
            .get_json(PLATFORM_CERT)?
            .ok_or_else(|| Error::Corrupt(PLATFORM_CERT.into()))?;
        self.open_server(&rec)
    }

    fn ensure_platform_cert(&self) -> Result<()> {
        if let Some(rec) = self.get_json::<ServerCert>(PLATFORM_CERT)? {
            let chain = cert::read_chain(rec.pem.as_bytes())?;
            let fresh = cert::details(&chain[0]).is_ok_and(|d| d.days_to_expiry > 30);
            if fresh {
                // Proves the master key still opens it; a wrong key fails start-up loudly.
                self.open_server(&rec)?;
                return Ok(());
            }
        }
        let (der, key) =
            self.self_signed(vec![format!("*.{}", self.domain), self.domain.clone()])?;
        let org = OrgId::try_from("platform").map_err(Error::from)?;
        let rec = ServerCert {
            sealed_key: self
                .key
                .seal(&Self::seal_context("platform", "default"), &key),
            id: "default".into(),
            org,
            active: true,
            origin: "self-signed".into(),
            created_at: OffsetDateTime::now_utc(),
            pem: cert::to_pem(&der),
        };
        self.store
            .apply(vec![Self::put(PLATFORM_CERT.into(), &rec)])?;
        Ok(())
    }
}

impl CaView {
    fn from_record(r: CaCert, details: CertDetails) -> CaView {
        CaView {
            id: r.id,
            org: r.org,
            active: r.active,
            description: r.description,
            created_at: r.created_at,
            details,
            pem: r.pem,
        }
    }
}

impl TryFrom<CaCert> for CaView {
    type Error = Error;
    fn try_from(r: CaCert) -> Result<CaView> {
        let der = cert::read_single(r.pem.as_bytes())?;
        let details = cert::details(&der)?;
        Ok(CaView::from_record(r, details))
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
pub(crate) mod tests {
    use super::*;
    use crate::store::SledStore;

    pub(crate) fn registry(dir: &std::path::Path) -> Registry {
        let store = Arc::new(SledStore::open(dir).unwrap());
        Registry::new(
            store,
            MasterKey::from_bytes(&[1; 32]),
            "messaging.localhost",
        )
        .unwrap()
    }

    fn ca_pem() -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, "CA");
        p.self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }

    #[test]
    fn org_ca_and_server_cert_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let changes = Arc::new(Mutex::new(Vec::new()));
        let c2 = changes.clone();
        r.on_change(move |c| c2.lock().unwrap().push(c.clone()));

        let org = r.create_org("acme", "Acme").unwrap().id;
        assert!(matches!(r.create_org("acme", ""), Err(Error::Conflict(_))));
        assert!(matches!(
            r.create_org("Bad!", ""),
            Err(Error::BadRequest(_))
        ));

        let pem = ca_pem();
        let ca = r.add_ca(&org, pem.as_bytes(), "first").unwrap();
        assert!(ca.active);
        assert!(matches!(
            r.add_ca(&org, pem.as_bytes(), ""),
            Err(Error::Conflict(_))
        ));
        assert_eq!(r.tls_material(&org).unwrap().unwrap().cas.len(), 1);
        r.update_ca(&org, &ca.id, Some(false), None).unwrap();
        assert!(r.tls_material(&org).unwrap().unwrap().cas.is_empty());

        let a = r.create_self_signed(&org).unwrap();
        assert!(a.active, "the first server cert becomes active");
        assert_eq!(a.details.dns_names, vec!["acme.messaging.localhost"]);
        let b = r.create_self_signed(&org).unwrap();
        assert!(!b.active);
        r.activate_server_cert(&org, &b.id).unwrap();
        let active: Vec<_> = r
            .list_server_certs(&org)
            .unwrap()
            .into_iter()
            .filter(|c| c.active)
            .map(|c| c.id)
            .collect();
        assert_eq!(active, vec![b.id.clone()]);
        assert!(matches!(
            r.delete_server_cert(&org, &b.id),
            Err(Error::Conflict(_))
        ));
        r.delete_server_cert(&org, &a.id).unwrap();
        assert!(changes.lock().unwrap().len() >= 6);
        drop(r);

        // Everything survives a reopen, and the key opens with the same master key.
        let r = registry(dir.path());
        let m = r.tls_material(&org).unwrap().unwrap();
        assert!(m.server.is_some());
        r.delete_org(&org).unwrap();
        assert!(r.tls_material(&org).unwrap().is_none());
        assert!(r.list_cas(&org).is_err());
    }

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

    /// Gives `org` one of every kind of data the registry stores for an org.
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
        r.record_audit(Some(org), event).unwrap();
        r.set_domains(org, &[format!("{org}-devices.example")])
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

    pub(crate) fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
