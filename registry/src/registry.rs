//! The [`Registry`]: the control-plane state, kept in a [`Store`] with private keys
//! sealed under the [`MasterKey`]. This module owns its construction, the change
//! listeners and the store helpers every resource module uses; the resources
//! themselves (`orgs`, `ca_certs`, `server_certs`, `platform`, `tls`, …) add their
//! operations in their own `impl Registry` blocks, and `layout` builds their keys.
//!
//! Every mutation validates first, then writes one atomic batch, then tells listeners
//! which org changed. Listeners run synchronously before the call returns, so when the
//! admin API answers, the broker has already dropped the org's old TLS config and the
//! next handshake sees the change.

use std::sync::{Arc, Mutex, RwLock};

use serde::{de::DeserializeOwned, Serialize};

use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::seal::MasterKey;
use crate::store::{Op, Store};

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

/// What changed, for listeners (broker TLS cache, session reconciliation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Anything about this org's certificates or its existence.
    Org(OrgId),
}

type Listener = Box<dyn Fn(&Change) + Send + Sync>;

/// Held while a read-check-write runs ([`Registry::lock`]): releases the shared
/// store's lock, then this process's.
pub(crate) struct WriteGuard<'a> {
    store: &'a dyn Store,
    _local: std::sync::MutexGuard<'a, ()>,
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        self.store.release();
    }
}

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
    /// How long audit entries are kept (see `audit`).
    pub(crate) audit_retention: time::Duration,
    /// Device admissions not yet in the inventory (see `devices`).
    pub(crate) activity: crate::devices::PendingActivity,
}

pub(crate) fn new_id() -> String {
    hex::encode(crate::seal::random_bytes::<8>())
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
            audit_retention: time::Duration::days(
                crate::audit::DEFAULT_AUDIT_RETENTION_DAYS.into(),
            ),
            activity: Default::default(),
        };
        r.ensure_platform_cert()?;
        r.load_hosts()?;
        Ok(r)
    }

    /// Whether `store` holds keys sealed under a master key (the platform certificate,
    /// server certificates, CSRs): then a missing master key is a lost one, and start-up
    /// must not create another (`MasterKey::load_or_create`).
    pub fn has_sealed_keys(store: &dyn Store) -> Result<bool> {
        for prefix in layout::SEALED {
            // The platform certificate comes first and exists after any start: usually
            // one small scan answers.
            if !store.scan(prefix)?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The store under the registry. With the embedded store the broker keeps its
    /// message state there too (under [`crate::message_keys`]); with the registry in
    /// PostgreSQL it has its own, node-local one (`Broker::with_message_store`) and
    /// purges an org's messages when it hears the org is gone.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Registers a listener called after every committed change.
    pub fn on_change(&self, f: impl Fn(&Change) + Send + Sync + 'static) {
        self.listeners
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    /// Follows changes made to the store outside this process (other nodes sharing a
    /// [`crate::pg::PgStore`]): each org they touch gets the same [`Change`] a change
    /// made here sends, so the broker rebuilds its TLS config and re-checks its live
    /// sessions. A store that is not shared never reports any.
    pub fn follow_store(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.store.watch(Box::new(move |keys| {
            if let Some(r) = weak.upgrade() {
                r.changed_elsewhere(keys);
            }
        }));
    }

    /// Sends the changes `keys` (changed by another node) imply.
    pub(crate) fn changed_elsewhere(&self, keys: &[String]) {
        let mut orgs = std::collections::BTreeSet::new();
        let mut all = false;
        for key in keys {
            match layout::scope(key) {
                layout::Scope::Org(org) => {
                    orgs.insert(org);
                }
                layout::Scope::All => all = true,
                layout::Scope::Nothing => {}
            }
        }
        if all {
            match self.list_orgs() {
                Ok(list) => orgs.extend(list.into_iter().map(|o| o.id)),
                Err(e) => tracing::error!(cause = %e, "cannot list the orgs to refresh"),
            }
        }
        for org in orgs {
            tracing::debug!(%org, "org changed on another node");
            self.notify(Change::Org(org));
        }
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

    /// The write lock: this process's, and with a shared store the one every node
    /// shares, after catching up with what other nodes committed, so the checks that
    /// follow see it and no other node's change slips between them and the write.
    pub(crate) fn lock(&self) -> WriteGuard<'_> {
        let local = self.write.lock().unwrap_or_else(|e| e.into_inner());
        self.store.catch_up();
        WriteGuard {
            store: self.store.as_ref(),
            _local: local,
        }
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
