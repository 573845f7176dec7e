//! The persistence boundary: a small ordered key-value [`Store`] with atomic batches,
//! and its embedded [`SledStore`] implementation.
//!
//! The registry owns the key layout and the record encoding; a store only has to keep
//! bytes and apply a batch all-or-nothing. The second implementation, [`crate::pg::PgStore`],
//! keeps the registry of several nodes in PostgreSQL.

use std::path::Path;

/// A storage failure. Always a server-side problem, never the caller's input.
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// How every "the store cannot be reached" error begins ([`StoreError::unavailable`]).
const UNAVAILABLE: &str = "the registry database is unreachable: ";

impl StoreError {
    /// The store's backing database cannot be reached (PostgreSQL down or cut off): no
    /// change can be made until it is back. The admin API answers these with 503.
    pub fn unavailable(cause: impl std::fmt::Display) -> StoreError {
        StoreError(format!(
            "{UNAVAILABLE}{cause}; changes are refused until it is back"
        ))
    }

    /// Whether this is an [`StoreError::unavailable`] error (a temporary condition, not
    /// a fault of the stored data).
    pub fn is_unavailable(&self) -> bool {
        self.0.starts_with(UNAVAILABLE)
    }
}

/// A store shared by several nodes, as the readiness probe reports it.
#[derive(Debug, Clone)]
pub struct SharedStatus {
    /// This node's name.
    pub node: String,
    /// `Err(cause)` while the database cannot be reached.
    pub database: Result<(), String>,
}

/// Called with the keys another node changed (see [`Store::watch`]).
pub type Watcher = Box<dyn Fn(&[String]) + Send + Sync>;

/// One write in an atomic batch.
#[derive(Debug, Clone)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// Ordered key-value storage with atomic multi-key batches.
pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// All entries whose key starts with `prefix`, in key order.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies every op or none, and makes them durable before returning.
    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError>;
    /// Up to `limit` entries whose key starts with `prefix` and sorts after `after`, in
    /// key order: one page of a large prefix (the device inventory) without reading the
    /// rest. The default reads the whole prefix; a store with ordered ranges does better.
    fn scan_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .scan(prefix)?
            .into_iter()
            .filter(|(k, _)| k.as_str() > after)
            .take(limit)
            .collect())
    }

    /// Registers the function told which keys changed *outside* this process (another
    /// node's commit, or a resynchronisation after the store was unreachable); the
    /// store's own `apply` is never reported. Only a shared store has such changes: the
    /// default never calls it.
    fn watch(&self, watcher: Watcher) {
        drop(watcher);
    }

    /// Before a read-check-write: takes the store's write lock shared by every process
    /// using it, then takes in what they committed so far, so the checks see it (a
    /// shared store whose reads come from a local copy). Best effort: when that fails,
    /// the write that follows fails too. Always followed by [`Store::release`]. The
    /// default has no other process to wait for.
    fn catch_up(&self) {}

    /// Releases what [`Store::catch_up`] took.
    fn release(&self) {}

    /// For a store shared by several nodes: this node's name and whether the database
    /// answers. `None` (the default) for a store of this process alone.
    fn shared_status(&self) -> Option<SharedStatus> {
        None
    }
}

/// [`Store`] on an embedded sled database in the data directory.
pub struct SledStore {
    db: sled::Db,
}

/// Memory sled may use to cache pages (its default, 1 GiB, would let a burst of
/// retained or queued messages keep that much resident long after).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl SledStore {
    /// Opens (or creates) the store under `dir`. The store is locked by one process at a
    /// time; a store just dropped in this process may still be held for a moment by
    /// sled's background threads, so a lock conflict is retried for up to 2 s.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let config = sled::Config::new()
                .path(dir.join("store"))
                .cache_capacity(CACHE_BYTES);
            match config.open() {
                Ok(db) => return Ok(SledStore { db }),
                // sled reports the lock conflict as an `Other` I/O error with this text.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    return Err(StoreError(format!(
                        "another certmq is using the data dir {} (its store is locked): stop \
                         that process first, or give this one another --data-dir",
                        dir.display()
                    )))
                }
                Err(e) => return Err(StoreError(format!("opening {}: {e}", dir.display()))),
            }
        }
    }
}

impl SledStore {
    /// Copies every tree of this store into a new store under `dir` (`<dir>/store`,
    /// which must not exist yet), with sled's export and import; for backup and
    /// restore. A consistent copy only while nothing else writes: certmq's commands
    /// call it with the store opened (and so locked) by themselves alone.
    pub fn copy_to(&self, dir: &Path) -> Result<(), StoreError> {
        let path = dir.join("store");
        let target = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_BYTES)
            .create_new(true)
            .open()
            .map_err(|e| StoreError(format!("creating {}: {e}", path.display())))?;
        target.import(self.db.export());
        target.flush().map_err(err)?;
        // The copy holds exactly what the source does, byte for byte.
        if target.checksum().map_err(err)? != self.db.checksum().map_err(err)? {
            return Err(StoreError(format!(
                "the copy in {} differs from the store it was made from",
                path.display()
            )));
        }
        Ok(())
    }
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl Store for SledStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.db
            .scan_prefix(prefix)
            .map(|kv| {
                let (k, v) = kv.map_err(err)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn apply(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Put(k, v) => batch.insert(k.as_bytes(), v),
                Op::Delete(k) => batch.remove(k.as_bytes()),
            }
        }
        self.db.apply_batch(batch).map_err(err)?;
        self.db.flush().map_err(err)?;
        Ok(())
    }

    fn scan_after(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        use std::ops::Bound;
        let start = if after < prefix {
            Bound::Included(prefix.as_bytes().to_vec())
        } else {
            Bound::Excluded(after.as_bytes().to_vec())
        };
        self.db
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
            .take_while(|kv| {
                kv.as_ref()
                    .map_or(true, |(k, _)| k.starts_with(prefix.as_bytes()))
            })
            .take(limit)
            .map(|kv| {
                let (k, v) = kv.map_err(err)?;
                Ok((String::from_utf8_lossy(&k).into_owned(), v.to_vec()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_waits_for_a_store_being_released() {
        let dir = tempfile::tempdir().unwrap();
        let held = SledStore::open(dir.path()).unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        // Locked now, free in 300 ms: the open waits instead of failing.
        let s = SledStore::open(dir.path()).unwrap();
        releaser.join().unwrap();
        s.apply(vec![Op::Put("k".into(), b"v".to_vec())]).unwrap();
    }

    #[test]
    fn batches_scan_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            s.apply(vec![
                Op::Put("a/1".into(), b"x".to_vec()),
                Op::Put("a/2".into(), b"y".to_vec()),
                Op::Put("b/1".into(), b"z".to_vec()),
            ])
            .unwrap();
            s.apply(vec![Op::Delete("a/1".into())]).unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        let page = s.scan_after("a/", "", 10).unwrap();
        assert_eq!(page, vec![("a/2".to_string(), b"y".to_vec())]);
        assert!(s.scan_after("a/", "a/2", 10).unwrap().is_empty());
        assert_eq!(s.scan_after("", "a/2", 1).unwrap()[0].0, "b/1");
        let a = s.scan("a/").unwrap();
        assert_eq!(a, vec![("a/2".to_string(), b"y".to_vec())]);
        assert_eq!(s.get("b/1").unwrap().unwrap(), b"z");
        assert!(s.get("a/1").unwrap().is_none());
    }
}
