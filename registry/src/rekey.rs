//! Master key rotation: every private key sealed in the store (the platform
//! certificate's, server certificates', CSRs', client certificates') is opened with the old
//! master key and sealed again under a new one, in one atomic batch.
//!
//! Offline only (`certmq rotate-master-key`): the store is locked by one process, so a
//! running broker cannot be re-keyed under its feet. Either every record is re-sealed
//! or none is: a key the old master key cannot open, or a failed write, leaves the
//! store exactly as it was, still sealed under the old key.

use crate::client_certs::{self, ClientCert};
use crate::csr::Csr;
use crate::error::{Error, Result};
use crate::layout;
use crate::registry::Registry;
use crate::seal::MasterKey;
use crate::server_certs::ServerCert;
use crate::store::{Op, Store};

/// Re-seals every sealed key in `store` from `old` to `new`; how many records were
/// rewritten. Writes nothing unless every one of them opened with `old`.
pub fn reseal_all(store: &dyn Store, old: &MasterKey, new: &MasterKey) -> Result<usize> {
    let ops = resealed(store, old, new)?;
    let n = ops.len();
    if n > 0 {
        store.apply(ops)?;
    }
    Ok(n)
}

/// Whether `key` opens every sealed key in `store` (`Err` names the first it does not).
pub fn opens_all(store: &dyn Store, key: &MasterKey) -> Result<()> {
    resealed(store, key, key).map(|_| ())
}

/// The writes that re-seal every sealed key from `old` to `new`.
fn resealed(store: &dyn Store, old: &MasterKey, new: &MasterKey) -> Result<Vec<Op>> {
    let mut ops = Vec::new();
    for prefix in layout::SEALED {
        for (key, value) in store.scan(prefix)? {
            let cannot_open = |_| {
                Error::BadRequest(format!(
                    "the current master key does not open the sealed key in {key}: is it the \
                     key this data dir was sealed with? Nothing was changed"
                ))
            };
            let corrupt = |_| Error::Corrupt(key.clone());
            let rewritten = if prefix == layout::CSRS {
                let mut rec: Csr = serde_json::from_slice(&value).map_err(corrupt)?;
                rec.reseal(old, new).map_err(cannot_open)?;
                Registry::put(key.clone(), &rec)
            } else if prefix == layout::PLATFORM_CERT || prefix == layout::SERVER_CERTS {
                let mut rec: ServerCert = serde_json::from_slice(&value).map_err(corrupt)?;
                rec.reseal(old, new).map_err(cannot_open)?;
                Registry::put(key.clone(), &rec)
            } else if prefix == layout::CLIENT_CERTS {
                let mut rec: ClientCert = serde_json::from_slice(&value).map_err(corrupt)?;
                let context = client_certs::seal_context(rec.org.as_str(), &rec.id);
                let plain = old.open(&context, &rec.sealed_key).map_err(cannot_open)?;
                rec.sealed_key = new.seal(&context, &plain);
                Registry::put(key.clone(), &rec)
            } else {
                // A new kind of sealed record must say here how it is re-sealed.
                return Err(Error::Corrupt(format!(
                    "{key}: no re-sealing rule for records under {prefix}"
                )));
            };
            ops.push(rewritten);
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;
    use std::sync::Arc;

    #[test]
    fn every_key_opens_under_the_new_master_key_and_a_wrong_old_key_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let old = MasterKey::from_bytes(&[1; 32]);
        let new = MasterKey::from_bytes(&[2; 32]);
        let r = Registry::new(
            store.clone(),
            MasterKey::from_bytes(&[1; 32]),
            "example.com",
        )
        .unwrap();
        let before = store.scan(layout::PLATFORM_CERT).unwrap();
        drop(r);
        // A client certificate's key (outgoing connections), stored as the registry does.
        let acme = crate::names::OrgId::try_from("acme").unwrap();
        let context = client_certs::seal_context("acme", "c1");
        let client = ClientCert {
            id: "c1".into(),
            org: acme.clone(),
            origin: "uploaded".into(),
            created_at: time::OffsetDateTime::now_utc(),
            pem: String::new(),
            sealed_key: old.seal(&context, b"client key"),
        };
        let client_key = layout::client_cert(&acme, "c1");
        store
            .apply(vec![Registry::put(client_key.clone(), &client)])
            .unwrap();

        // The wrong "old" key: refused, nothing written.
        let e = reseal_all(store.as_ref(), &new, &old).unwrap_err();
        assert!(e.to_string().contains("does not open"), "{e}");
        assert_eq!(store.scan(layout::PLATFORM_CERT).unwrap(), before);

        assert_eq!(reseal_all(store.as_ref(), &old, &new).unwrap(), 2);
        let rec: ClientCert =
            serde_json::from_slice(&store.get(&client_key).unwrap().unwrap()).unwrap();
        assert_eq!(new.open(&context, &rec.sealed_key).unwrap(), b"client key");
        let r = Registry::new(store.clone(), new, "example.com").unwrap();
        r.platform_cert().unwrap();
        drop(r);
        assert!(Registry::new(store, old, "example.com").is_err());
    }
}
