//! The device inventory: every identity that ever connected to an org, with the
//! certificates it used (docs/api.md, "Device inventory").
//!
//! **Cheap at admission.** The broker reports each admitted connection with
//! [`Registry::record_admission`], which only updates an in-memory map of pending
//! activity (one short lock, no store access). [`Registry::flush_device_activity`]
//! merges everything pending into the stored records in batches of
//! [`FLUSH_CHUNK`] identities — the broker calls it every [`FLUSH_EVERY`], and every
//! inventory read calls it first, so the API never shows a stale record. A device that
//! reconnects ten times between two flushes costs one record write; a flush with
//! nothing pending writes nothing.
//!
//! **Records.** `dev/<org>/<identity>` holds the identity's record; two indexes sit
//! beside it: `devcert/<org>/<fingerprint>` (which identity used a certificate: a
//! revocation by fingerprint and the clone check look there) and
//! `devexp/<org>/<not_after>/<identity>` (identities by the expiry of the certificate
//! they last connected with: the expiring-soon gauge scans only its front). All three
//! are deleted with the org (see `layout::org_data`).
//!
//! **Cloned devices.** A certificate is flagged `clone_suspected` when it was seen on
//! two identities, or when a connection from one address took over a live session
//! from another address with the same certificate: two devices holding one key pair
//! fight over the session. (A device that roams to a new address while its old TCP
//! connection is still open is flagged too; the flag records both addresses and when,
//! for the operator to judge.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::layout;
use crate::names::{Identity, OrgId};
use crate::registry::Registry;
use crate::store::Op;

/// How often the broker merges pending admissions into the stored inventory.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);

/// The most identities one flush writes in one store batch (the registry's write lock
/// is held for one batch at a time).
///
/// Small on purpose: sled keeps every page version a batch replaces until the whole
/// batch is applied (one epoch guard per batch), so a batch of 5,000 new identities
/// (15,000 keys) peaked at ~50 MB of heap, which the allocator then kept as resident
/// memory: ~10 KiB per device written, for good. At 128 identities a batch the peak
/// stays under 1 MB, and 20,000 new identities are written faster than in 5,000-sized
/// batches (docs/benchmarks.md, "Idle memory, lever by lever").
pub const FLUSH_CHUNK: usize = 128;

/// The most devices one inventory page may hold.
pub const MAX_PAGE: usize = 1000;

/// The window of the expiring-soon gauge, in days.
pub const EXPIRING_SOON_DAYS: u32 = 30;

/// One certificate a device connected with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceCert {
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fingerprint_sha256: String,
    /// Lowercase hex with colons, as certificate details show serials.
    pub serial: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The org CA that admitted it.
    pub ca_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// Seen on two identities, or presented from two addresses at once (see
    /// [`CloneSuspicion`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_suspected: Option<CloneSuspicion>,
}

/// Why a certificate looks cloned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloneSuspicion {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What was seen, e.g. `live session from 10.0.0.5 taken over from 10.0.0.9`.
    pub detail: String,
}

/// An identity of the org's inventory (the stored record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Device {
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "d:sensor:dev1"))]
    pub identity: Identity,
    /// The client id of its last connection.
    pub client_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// Its last admission (updated at most every few seconds, see the API docs).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// The remote address (IP) of its last connection.
    pub last_addr: String,
    /// Every certificate it connected with, oldest first; the last is its current one.
    /// Empty for an identity that only ever used a token.
    pub certificates: Vec<DeviceCert>,
}

impl Device {
    /// The certificate it last connected with.
    pub fn current_cert(&self) -> Option<&DeviceCert> {
        self.certificates.last()
    }
}

/// A certificate as the broker saw it at admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCert {
    pub fingerprint_sha256: String,
    pub serial: String,
    pub not_after: OffsetDateTime,
    pub ca_id: String,
}

/// One admitted connection, as the broker reports it.
#[derive(Debug, Clone)]
pub struct Admission {
    pub org: OrgId,
    pub identity: Identity,
    pub client_id: String,
    pub addr: std::net::IpAddr,
    pub cert: Option<SeenCert>,
    /// Set when this connection took over a live session that used the same
    /// certificate from another address (that address).
    pub took_over_from: Option<std::net::IpAddr>,
}

/// What happened to one identity since the last flush.
#[derive(Debug, Clone)]
struct Activity {
    client_id: String,
    first: OffsetDateTime,
    last: OffsetDateTime,
    addr: std::net::IpAddr,
    /// Certificates in the order they were first seen since the last flush, each
    /// with when it was last seen.
    certs: Vec<(SeenCert, OffsetDateTime)>,
    clone: Option<CloneSuspicion>,
}

impl Activity {
    /// Folds in `older` activity of the same identity that could not be written.
    fn absorb_older(&mut self, older: Activity) {
        self.first = self.first.min(older.first);
        let mut certs = older.certs;
        certs.retain(|(c, _)| !self.certs.iter().any(|(n, _)| n == c));
        certs.append(&mut self.certs);
        self.certs = certs;
        if self.clone.is_none() {
            self.clone = older.clone;
        }
    }
}

/// Admissions not yet merged into the store, by org and identity.
#[derive(Default)]
pub(crate) struct PendingActivity {
    pending: Mutex<HashMap<(OrgId, Identity), Activity>>,
    /// Held for a whole flush.
    flush: Mutex<()>,
}

impl PendingActivity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(OrgId, Identity), Activity>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flushing(&self) -> std::sync::MutexGuard<'_, ()> {
        self.flush.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Filters and position of an inventory page.
#[derive(Debug, Clone, Default)]
pub struct DeviceQuery {
    /// Only identities starting with this (e.g. `d:sensor:`).
    pub prefix: String,
    /// Only identities whose current certificate expires within this many days (and
    /// has not expired yet).
    pub expiring_within_days: Option<u32>,
    /// Only identities after this one (the last identity of the previous page).
    pub after: Option<String>,
    /// At most this many ([`MAX_PAGE`] at most).
    pub limit: usize,
}

fn unix(t: OffsetDateTime) -> u64 {
    u64::try_from(t.unix_timestamp()).unwrap_or(0)
}

/// Folds one flush's activity into the stored record (or a new one); the store writes
/// this implies are pushed to `ops`.
fn merge(
    org: &OrgId,
    identity: &Identity,
    stored: Option<Device>,
    act: Activity,
    cert_owner: impl Fn(&str) -> Option<Identity>,
    ops: &mut Vec<Op>,
) -> Device {
    let mut dev = stored.unwrap_or_else(|| Device {
        identity: identity.clone(),
        client_id: act.client_id.clone(),
        first_seen: act.first,
        last_seen: act.last,
        last_addr: act.addr.to_string(),
        certificates: Vec::new(),
    });
    let old_current = dev
        .current_cert()
        .map(|c| (c.fingerprint_sha256.clone(), c.not_after));
    if act.last >= dev.last_seen {
        dev.last_seen = act.last;
        dev.client_id = act.client_id;
        dev.last_addr = act.addr.to_string();
    }
    for (seen, at) in act.certs {
        let owner = cert_owner(&seen.fingerprint_sha256);
        let elsewhere = owner.as_ref().filter(|o| *o != identity).cloned();
        let idx = dev
            .certificates
            .iter()
            .position(|c| c.fingerprint_sha256 == seen.fingerprint_sha256);
        let mut entry = match idx {
            Some(i) => dev.certificates.remove(i),
            None => {
                // The index keeps the first identity that used the certificate.
                if owner.is_none() {
                    ops.push(Registry::put(
                        layout::device_cert(org, &seen.fingerprint_sha256),
                        identity,
                    ));
                }
                DeviceCert {
                    fingerprint_sha256: seen.fingerprint_sha256,
                    serial: seen.serial,
                    not_after: seen.not_after,
                    ca_id: seen.ca_id,
                    first_seen: at,
                    last_seen: at,
                    clone_suspected: None,
                }
            }
        };
        entry.last_seen = entry.last_seen.max(at);
        if let Some(other) = elsewhere {
            entry.clone_suspected = Some(CloneSuspicion {
                at,
                detail: format!("the certificate was also used by {other}"),
            });
        }
        // The most recently used certificate goes last: it is the current one.
        dev.certificates.push(entry);
    }
    if let Some(c) = act.clone {
        if let Some(fp) = dev.current_cert().map(|c| c.fingerprint_sha256.clone()) {
            flag(&mut dev, &fp, c.at, c.detail);
        }
    }
    let new_current = dev
        .current_cert()
        .map(|c| (c.fingerprint_sha256.clone(), c.not_after));
    if new_current != old_current {
        if let Some((_, t)) = old_current {
            ops.push(Op::Delete(layout::device_expiry(org, unix(t), identity)));
        }
        if let Some((_, t)) = new_current {
            ops.push(Op::Put(
                layout::device_expiry(org, unix(t), identity),
                Vec::new(),
            ));
        }
    }
    dev
}

fn flag(dev: &mut Device, fingerprint: &str, at: OffsetDateTime, detail: String) {
    if let Some(c) = dev
        .certificates
        .iter_mut()
        .find(|c| c.fingerprint_sha256 == fingerprint)
    {
        c.clone_suspected = Some(CloneSuspicion { at, detail });
    }
}

impl Registry {
    /// Notes an admitted connection for the inventory: an in-memory update only (see the
    /// module docs); [`Registry::flush_device_activity`] stores it.
    pub fn record_admission(&self, a: Admission) {
        let now = OffsetDateTime::now_utc();
        let mut pending = self.activity.lock();
        let act = pending
            .entry((a.org, a.identity))
            .or_insert_with(|| Activity {
                client_id: String::new(),
                first: now,
                last: now,
                addr: a.addr,
                certs: Vec::new(),
                clone: None,
            });
        act.client_id = a.client_id;
        act.last = now;
        act.addr = a.addr;
        if let Some(cert) = a.cert {
            if let Some(from) = a.took_over_from {
                act.clone = Some(CloneSuspicion {
                    at: now,
                    detail: format!(
                        "the certificate took over a live session from {from} while connecting from {}",
                        a.addr
                    ),
                });
            }
            // The current certificate goes last (see `merge`).
            if let Some(i) = act.certs.iter().position(|(c, _)| *c == cert) {
                act.certs.remove(i);
            }
            act.certs.push((cert, now));
        }
    }

    /// Merges every pending admission into the stored inventory, a batch of at most
    /// [`FLUSH_CHUNK`] identities at a time; how many identities it wrote. Activity of
    /// an org deleted meanwhile is dropped; activity a failed write did not store is
    /// pending again.
    pub fn flush_device_activity(&self) -> Result<usize> {
        // One flush at a time, so activity reaches the store in the order it happened.
        let _flushing = self.activity.flushing();
        let pending = std::mem::take(&mut *self.activity.lock());
        let mut pending = pending.into_iter();
        let mut written = 0;
        loop {
            let chunk: Vec<_> = pending.by_ref().take(FLUSH_CHUNK).collect();
            if chunk.is_empty() {
                return Ok(written);
            }
            match self.flush_chunk(&chunk) {
                Ok(n) => written += n,
                Err(e) => {
                    tracing::warn!(cause = %e, "device inventory flush failed; will retry");
                    let mut again = self.activity.lock();
                    for (key, older) in chunk.into_iter().chain(pending) {
                        match again.get_mut(&key) {
                            Some(newer) => newer.absorb_older(older),
                            None => {
                                again.insert(key, older);
                            }
                        }
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Writes one chunk of activity in one batch (under the write lock, so an org is not
    /// deleted between the check and the write).
    fn flush_chunk(&self, chunk: &[((OrgId, Identity), Activity)]) -> Result<usize> {
        let _g = self.lock();
        let mut exists: HashMap<&OrgId, bool> = HashMap::new();
        let mut ops = Vec::new();
        let mut written = 0;
        for ((org, identity), act) in chunk {
            let live = match exists.get(org) {
                Some(e) => *e,
                None => {
                    let e = self.store.get(&layout::org(org))?.is_some();
                    exists.insert(org, e);
                    e
                }
            };
            if !live {
                continue;
            }
            let stored = self.get_json::<Device>(&layout::device(org, identity))?;
            let owner = |fp: &str| {
                self.get_json::<Identity>(&layout::device_cert(org, fp))
                    .ok()
                    .flatten()
            };
            let dev = merge(org, identity, stored, act.clone(), owner, &mut ops);
            ops.push(Self::put(layout::device(org, identity), &dev));
            written += 1;
        }
        self.store.apply(ops)?;
        Ok(written)
    }

    /// One identity of the org's inventory.
    pub fn device(&self, org: &OrgId, identity: &str) -> Result<Device> {
        let identity = Identity::parse(identity)?;
        self.get_org(org)?;
        self.flush_device_activity()?;
        self.get_json(&layout::device(org, &identity))?
            .ok_or_else(|| Error::NotFound(format!("{identity} never connected to org {org}")))
    }

    /// A page of the org's inventory in identity order, filtered by `query` and by
    /// `keep` (the API's `connected` filter, which needs the broker's live sessions).
    pub fn list_devices(
        &self,
        org: &OrgId,
        query: &DeviceQuery,
        keep: impl Fn(&Device) -> bool,
    ) -> Result<Vec<Device>> {
        if query.limit == 0 || query.limit > MAX_PAGE {
            return Err(Error::BadRequest(format!(
                "limit must be 1-{MAX_PAGE}; got {}",
                query.limit
            )));
        }
        self.get_org(org)?;
        self.flush_device_activity()?;
        let base = layout::devices(org);
        let prefix = format!("{base}{}", query.prefix);
        let mut after = match &query.after {
            Some(a) => format!("{base}{a}"),
            None => String::new(),
        };
        let now = OffsetDateTime::now_utc();
        let until = query
            .expiring_within_days
            .map(|d| now + time::Duration::days(i64::from(d)));
        let mut out = Vec::new();
        // Read in chunks, so a selective filter does not hold the whole inventory.
        const CHUNK: usize = 1000;
        loop {
            let chunk = self.store.scan_after(&prefix, &after, CHUNK)?;
            let done = chunk.len() < CHUNK;
            for (k, v) in chunk {
                let dev: Device =
                    serde_json::from_slice(&v).map_err(|_| Error::Corrupt(k.clone()))?;
                after = k;
                let expiring = until.is_none_or(|u| {
                    dev.current_cert()
                        .is_some_and(|c| c.not_after >= now && c.not_after <= u)
                });
                if expiring && keep(&dev) {
                    out.push(dev);
                    if out.len() == query.limit {
                        return Ok(out);
                    }
                }
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// How many identities of the org last connected with a certificate that expires
    /// within `days` (and has not expired yet): a scan of the expiry index's front.
    pub fn devices_expiring(&self, org: &OrgId, days: u32) -> Result<usize> {
        let now = OffsetDateTime::now_utc();
        let base = layout::device_expiries(org);
        let from = format!("{base}{:020}", unix(now));
        let until = format!(
            "{base}{:020}~",
            unix(now + time::Duration::days(i64::from(days)))
        );
        let mut after = from;
        let mut n = 0;
        loop {
            let chunk = self.store.scan_after(&base, &after, 1000)?;
            let done = chunk.len() < 1000;
            for (k, _) in chunk {
                if k > until {
                    return Ok(n);
                }
                n += 1;
                after = k;
            }
            if done {
                return Ok(n);
            }
        }
    }

    /// The identity that connected with the certificate of `fingerprint`, and that
    /// certificate, if any did.
    pub fn device_by_cert(
        &self,
        org: &OrgId,
        fingerprint: &str,
    ) -> Result<Option<(Identity, DeviceCert)>> {
        self.flush_device_activity()?;
        let Some(identity) = self.get_json::<Identity>(&layout::device_cert(org, fingerprint))?
        else {
            return Ok(None);
        };
        let dev: Option<Device> = self.get_json(&layout::device(org, &identity))?;
        Ok(dev.and_then(|d| {
            d.certificates
                .into_iter()
                .find(|c| c.fingerprint_sha256 == fingerprint)
                .map(|c| (identity, c))
        }))
    }

    /// Forgets the org's pending activity (the org is being deleted).
    pub(crate) fn forget_device_activity(&self, org: &OrgId) {
        self.activity.lock().retain(|(o, _), _| o != org);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(fp: &str, days: i64) -> SeenCert {
        SeenCert {
            fingerprint_sha256: fp.into(),
            serial: "01".into(),
            not_after: OffsetDateTime::now_utc() + time::Duration::days(days),
            ca_id: "ca1".into(),
        }
    }

    fn admit(r: &Registry, org: &OrgId, id: &str, cert: Option<SeenCert>) {
        r.record_admission(Admission {
            org: org.clone(),
            identity: Identity::parse(id).unwrap(),
            client_id: format!("{}:{org}:{}", &id[..1], &id[2..]),
            addr: "10.0.0.1".parse().unwrap(),
            cert,
            took_over_from: None,
        });
    }

    #[test]
    fn admissions_are_batched_and_merged() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        for _ in 0..10 {
            admit(&r, &acme, "d:sensor:a", Some(seen("aa", 10)));
        }
        admit(&r, &acme, "d:sensor:b", Some(seen("bb", 100)));
        assert_eq!(
            r.flush_device_activity().unwrap(),
            2,
            "one write per identity"
        );
        assert_eq!(r.flush_device_activity().unwrap(), 0, "nothing pending");
        // A renewed certificate becomes the current one; the old stays in the history.
        admit(&r, &acme, "d:sensor:a", Some(seen("cc", 200)));
        let a = r.device(&acme, "d:sensor:a").unwrap();
        let fps: Vec<_> = a
            .certificates
            .iter()
            .map(|c| c.fingerprint_sha256.as_str())
            .collect();
        assert_eq!(fps, ["aa", "cc"]);
        assert_eq!(r.devices_expiring(&acme, 30).unwrap(), 0);
        admit(&r, &acme, "d:sensor:c", Some(seen("dd", 5)));
        r.flush_device_activity().unwrap();
        assert_eq!(r.devices_expiring(&acme, 30).unwrap(), 1);
        assert_eq!(
            r.device_by_cert(&acme, "aa").unwrap().unwrap().0,
            a.identity
        );
        assert!(r.device_by_cert(&acme, "zz").unwrap().is_none());

        // Paging, prefix and expiry filters.
        let q = |prefix: &str, after: Option<&str>, exp, limit| DeviceQuery {
            prefix: prefix.into(),
            after: after.map(str::to_owned),
            expiring_within_days: exp,
            limit,
        };
        let page = r
            .list_devices(&acme, &q("", None, None, 2), |_| true)
            .unwrap();
        assert_eq!(page.len(), 2);
        let rest = r
            .list_devices(&acme, &q("", Some("d:sensor:b"), None, 2), |_| true)
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].identity.to_string(), "d:sensor:c");
        let soon = r
            .list_devices(&acme, &q("d:", None, Some(30), 10), |_| true)
            .unwrap();
        assert_eq!(soon.len(), 1);
        assert!(r
            .list_devices(&acme, &q("a:", None, None, 10), |_| true)
            .unwrap()
            .is_empty());
        assert!(matches!(
            r.list_devices(&acme, &q("", None, None, MAX_PAGE + 1), |_| true),
            Err(Error::BadRequest(_))
        ));

        // The inventory goes with the org, pending activity included.
        admit(&r, &acme, "d:sensor:z", None);
        r.delete_org(&acme).unwrap();
        let acme = r.create_org("acme", "").unwrap().id;
        assert!(r
            .list_devices(&acme, &q("", None, None, 10), |_| true)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_takeover_from_another_address_flags_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        admit(&r, &acme, "d:sensor:a", Some(seen("aa", 10)));
        r.record_admission(Admission {
            org: acme.clone(),
            identity: Identity::parse("d:sensor:a").unwrap(),
            client_id: "d:acme:sensor:a".into(),
            addr: "10.0.0.2".parse().unwrap(),
            cert: Some(seen("aa", 10)),
            took_over_from: Some("10.0.0.1".parse().unwrap()),
        });
        let a = r.device(&acme, "d:sensor:a").unwrap();
        assert_eq!(a.last_addr, "10.0.0.2");
        let flag = a.certificates[0].clone_suspected.as_ref().unwrap();
        assert!(flag.detail.contains("10.0.0.1"), "{}", flag.detail);
    }

    /// A store whose batches fail while `failing` is set.
    struct Flaky {
        inner: crate::store::SledStore,
        failing: std::sync::atomic::AtomicBool,
    }

    impl crate::store::Store for Flaky {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
            self.inner.get(key)
        }
        fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, crate::store::StoreError> {
            self.inner.scan(prefix)
        }
        fn apply(&self, ops: Vec<Op>) -> Result<(), crate::store::StoreError> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::store::StoreError("disk full".into()));
            }
            self.inner.apply(ops)
        }
    }

    #[test]
    fn activity_a_failed_write_did_not_store_is_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Flaky {
            inner: crate::store::SledStore::open(dir.path()).unwrap(),
            failing: Default::default(),
        });
        let r = Registry::new(
            store.clone(),
            crate::seal::MasterKey::from_bytes(&[1; 32]),
            "messaging.localhost",
        )
        .unwrap();
        let acme = r.create_org("acme", "").unwrap().id;
        admit(&r, &acme, "d:sensor:a", Some(seen("aa", 10)));
        store
            .failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(r.flush_device_activity().is_err());
        // Newer activity meanwhile, with another certificate: both survive.
        admit(&r, &acme, "d:sensor:a", Some(seen("bb", 10)));
        store
            .failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let a = r.device(&acme, "d:sensor:a").unwrap();
        let fps: Vec<_> = a
            .certificates
            .iter()
            .map(|c| c.fingerprint_sha256.as_str())
            .collect();
        assert_eq!(fps, ["aa", "bb"]);
    }

    /// 100,000 devices: one flush, then pages. Run with
    /// `cargo test --release -p certmq-registry --lib -- --ignored --nocapture inventory_of_100k`.
    #[test]
    #[ignore = "a timing run, about a minute in debug"]
    fn inventory_of_100k_devices() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let t = std::time::Instant::now();
        for i in 0..100_000 {
            let days = if i % 1000 == 0 { 10 } else { 365 };
            admit(
                &r,
                &acme,
                &format!("d:sensor:{i:06}"),
                Some(seen(&format!("{i:064}"), days)),
            );
        }
        let admitted = t.elapsed();
        let t = std::time::Instant::now();
        assert_eq!(r.flush_device_activity().unwrap(), 100_000);
        let flushed = t.elapsed();
        let q = |exp, after: Option<&str>| DeviceQuery {
            prefix: String::new(),
            expiring_within_days: exp,
            after: after.map(str::to_owned),
            limit: MAX_PAGE,
        };
        let t = std::time::Instant::now();
        let page = r
            .list_devices(&acme, &q(None, Some("d:sensor:050000")), |_| true)
            .unwrap();
        let paged = t.elapsed();
        assert_eq!(page.len(), MAX_PAGE);
        let t = std::time::Instant::now();
        let soon = r.list_devices(&acme, &q(Some(30), None), |_| true).unwrap();
        let filtered = t.elapsed();
        assert_eq!(soon.len(), 100);
        let t = std::time::Instant::now();
        assert_eq!(r.devices_expiring(&acme, 30).unwrap(), 100);
        let gauge = t.elapsed();
        eprintln!(
            "100k admissions {admitted:?}, flush {flushed:?}, page of 1000 {paged:?}, \
             expiring filter over all {filtered:?}, gauge {gauge:?}"
        );
    }

    /// The resident memory a flush of 5,000 new devices leaves behind, per device. Run
    /// alone (the figure is the whole process's RSS) with
    /// `cargo test --release -p certmq-registry --lib -- --ignored --nocapture inventory_memory`.
    #[test]
    #[ignore = "a measurement, run alone"]
    fn inventory_memory_per_device() {
        fn rss_kib() -> f64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        const N: usize = 5000;
        let before = rss_kib();
        for i in 0..N {
            // Like the broker: real-sized fingerprints and serials, flushed as they come.
            let mut cert = seen(&format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15), 365);
            cert.serial = "3a:5f:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff:00:11:22".into();
            admit(&r, &acme, &format!("d:sensor:{i:06}"), Some(cert));
            if i % 3000 == 2999 {
                r.flush_device_activity().unwrap();
            }
        }
        r.flush_device_activity().unwrap();
        let after = rss_kib();
        eprintln!(
            "{N} devices written: RSS {before} → {after} KiB, {:.2} KiB per device",
            (after - before) / N as f64
        );
    }

    #[test]
    fn a_certificate_on_two_identities_is_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        admit(&r, &acme, "d:sensor:a", Some(seen("aa", 10)));
        r.flush_device_activity().unwrap();
        admit(&r, &acme, "d:sensor:b", Some(seen("aa", 10)));
        let b = r.device(&acme, "d:sensor:b").unwrap();
        let flag = b.certificates[0].clone_suspected.as_ref().unwrap();
        assert!(flag.detail.contains("d:sensor:a"), "{}", flag.detail);
        let a = r.device(&acme, "d:sensor:a").unwrap();
        assert!(a.certificates[0].clone_suspected.is_none());
    }
}
