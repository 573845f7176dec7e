//! Persistent sessions that resume on any node, also after their node died
//! (docs/cluster-sessions.md).
//!
//! A persistent session lives on the node its client is connected to (or was last),
//! in that node's message state, as on a single node. What the rest of the cluster
//! needs to take it over is kept in the JetStream key-value bucket
//! [`BUCKET`], one entry per session:
//!
//! - its **record** (subscriptions, identifiers, expiry, when it went offline), and
//!   the node that holds it;
//! - its **cursor**: a sequence number in the message stream (`CERTMQ_MSGS`) such that
//!   every QoS ≥ 1 message up to it that the session matched has been acknowledged by
//!   its client. Every QoS ≥ 1 message of the cluster is in that stream, so what the
//!   session still owes its client is: the stream's messages after the cursor that
//!   match its subscriptions.
//!
//! A node that gets a `clean session = 0` connection for a session another node holds
//! (or held before it died) takes the record over ([`Cluster::before_attach`]): it
//! writes itself in as the holder, puts the subscriptions in force, and reads the
//! stream from the cursor into the session's queue before the CONNACK. The old
//! holder, told by the takeover, drops its copy; its later writes fail on the entry's
//! revision.
//!
//! **The cursor.** A node samples the stream's last sequence every second. A message
//! queued for a session remembers the sample taken [`LAG`] before it arrived (a
//! message reaches every interested node within that, unless the node's connection or
//! subscriptions failed — then the catch-up reads it from the stream, with its exact
//! sequence — or it is behind, holding messages back for a slow subscriber — then
//! sampling stops and starts afresh once it has caught up); a message read from the
//! stream remembers its own sequence. The cursor is
//! the lowest of those over the session's unacknowledged messages, or the newest
//! sample older than [`LAG`] when it has none. It errs early: a takeover re-reads up
//! to [`LAG`] (and a second) of what the client had already acknowledged, and skips
//! those by the ids the entry lists (`acked`: acknowledged in the last 12 s); what the
//! list misses comes again — at least once, never lost.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use registry::OrgId;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{subject, Cluster, STREAM};
use crate::lock;
use crate::state::record::SessionRecord;
use crate::state::tree::split_shared;
use crate::state::Scope;

/// The key-value bucket of persistent sessions (and of the nodes' heartbeats).
pub(crate) const BUCKET: &str = "CERTMQ_SESSIONS";
/// How late a message may reach a node after entering the stream (see the module
/// documentation); what a takeover may resend.
pub(crate) const LAG: Duration = Duration::from_secs(10);
/// How long a takeover reads the stream before the CONNACK goes out.
const READ_FOR: Duration = Duration::from_secs(10);
/// How long a key-value request may take before the node goes on without it.
const KV_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node writes its heartbeat (a dead node's sessions went offline when its
/// heartbeat stopped).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// A session's entry in the bucket.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Stored {
    node: String,
    record: SessionRecord,
    cursor: u64,
    /// Ids of messages after the cursor that the client acknowledged lately: a node
    /// taking the session over does not send them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    acked: Vec<String>,
    /// When it was written (Unix seconds).
    at: u64,
}

/// A node's heartbeat in the bucket.
#[derive(Serialize, Deserialize)]
struct Heartbeat {
    /// Unix seconds.
    at: u64,
}

/// What this node last wrote of a session it holds.
#[derive(Clone)]
struct Written {
    revision: u64,
    /// The record and cursor written (a change is written, nothing else).
    record: SessionRecord,
    cursor: u64,
    acked: Vec<String>,
}

/// This node's side of the sessions bucket.
#[derive(Default)]
pub(crate) struct Sessions {
    kv: OnceLock<kv::Store>,
    js: OnceLock<jetstream::Context>,
    /// The cursor a message queued now may let its session advance to (0: not yet
    /// known), kept current by [`Cluster::sample_loop`].
    hint: AtomicU64,
    /// Recent (when, the stream's last sequence) samples, oldest first.
    samples: Mutex<VecDeque<(Instant, u64)>>,
    /// Set while messages may be missing here (the connection or a subscription was
    /// lost, a catch-up is due): the hint does not move.
    frozen: AtomicBool,
    written: Mutex<HashMap<String, Written>>,
    changed: Notify,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The bucket key of `client` of `org` (keys allow few characters: both are base64url).
fn key(org: &OrgId, client: &str) -> String {
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("s.{}.{}", b.encode(org.as_str()), b.encode(client))
}

fn heartbeat_key(node: &str) -> String {
    format!(
        "n.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(node)
    )
}

impl Sessions {
    /// See [`Sessions::hint`].
    pub(crate) fn hint(&self) -> u64 {
        self.hint.load(Ordering::Relaxed)
    }

    /// Messages may be missing here until [`Sessions::thaw`].
    pub(crate) fn freeze(&self) {
        self.frozen.store(true, Ordering::Release);
    }

    /// What was missing has been read back from the stream: sampling starts afresh
    /// (samples taken before are no bound for what arrives after).
    pub(crate) fn thaw(&self) {
        lock(&self.samples).clear();
        self.frozen.store(false, Ordering::Release);
    }

    /// What this node wrote of the session at `key` (revision `revision`).
    fn remember(
        &self,
        key: &str,
        revision: u64,
        record: &SessionRecord,
        cursor: u64,
        acked: &[String],
    ) {
        let w = Written {
            revision,
            record: record.clone(),
            cursor,
            acked: acked.to_vec(),
        };
        lock(&self.written).insert(key.to_owned(), w);
    }

    /// A persistent session's record changed: written out soon.
    pub(crate) fn changed(&self) {
        self.changed.notify_one();
    }

    /// Records a sample of the stream's last sequence and moves the hint to the newest
    /// one at least [`LAG`] old (the first sample ever, before there is one: nothing
    /// before it was routed to a session made after it).
    fn sample(&self, last: u64) {
        let now = Instant::now();
        let mut samples = lock(&self.samples);
        samples.push_back((now, last));
        let mut settled = None;
        while let Some(&(t, seq)) = samples.front() {
            if now.duration_since(t) < LAG {
                break;
            }
            settled = Some(seq);
            samples.pop_front();
        }
        if let Some(seq) = settled {
            // The newest settled sample stays, in case no newer one settles for a while.
            samples.push_front((now - LAG, seq));
            self.hint.store(seq, Ordering::Relaxed);
        } else if self.hint.load(Ordering::Relaxed) == 0 {
            self.hint.store(last, Ordering::Relaxed);
        }
    }
}

impl Cluster {
    /// Opens the sessions bucket (creating it if needed) and starts sampling the stream
    /// and writing this node's sessions to the bucket.
    pub(super) async fn start_sessions(self: &Arc<Self>, js: jetstream::Context) {
        use jetstream::stream;
        // The bucket's stream as `create_key_value` would make it; made here because
        // that call first asks for account details NATS 2.9 does not answer as the
        // client expects.
        let config = stream::Config {
            name: format!("KV_{BUCKET}"),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        };
        for attempt in 0u32.. {
            let store = match js.get_or_create_stream(config.clone()).await {
                Ok(_) => js.get_key_value(BUCKET).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match store {
                Ok(s) => {
                    let _ = self.sessions.kv.set(s);
                    break;
                }
                Err(e) => {
                    if attempt % 10 == 0 {
                        warn!(bucket = BUCKET, cause = %e, "cannot open the cluster's sessions bucket; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let _ = self.sessions.js.set(js);
        tokio::spawn(self.clone().sample_loop());
        tokio::spawn(self.clone().write_loop());
    }

    /// See [`Sessions::hint`].
    pub(crate) fn live_hint(&self) -> u64 {
        self.sessions.hint()
    }

    /// A persistent session's record changed.
    pub(crate) fn session_changed(&self) {
        self.sessions.changed();
    }

    async fn last_sequence(&self) -> Option<u64> {
        let js = self.sessions.js.get()?;
        let stream = tokio::time::timeout(KV_TIMEOUT, js.get_stream(STREAM))
            .await
            .ok()?
            .ok()?;
        Some(stream.cached_info().state.last_sequence)
    }

    /// Samples the stream's last sequence every second (see the module documentation).
    async fn sample_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !self.connected.load(Ordering::Acquire)
                || self.sessions.frozen.load(Ordering::Acquire)
            {
                continue;
            }
            if self.load.any_behind() {
                // Messages wait in this node's subscriptions (flow control): they may
                // be older than any sample. Sampling starts afresh once caught up.
                lock(&self.sessions.samples).clear();
                continue;
            }
            // Taken before the request: a message in the stream by then is in the sample.
            if let Some(last) = self.last_sequence().await {
                if !self.sessions.frozen.load(Ordering::Acquire) {
                    self.sessions.sample(last);
                }
            }
        }
    }

    /// Writes this node's persistent sessions to the bucket as they change: records,
    /// cursors, sessions gone; and the node's heartbeat.
    async fn write_loop(self: Arc<Self>) {
        let Some(kv) = self.sessions.kv.get().cloned() else {
            return;
        };
        let mut beat = Instant::now() - HEARTBEAT;
        loop {
            tokio::select! {
                _ = self.sessions.changed.notified() => {
                    // A burst of changes (a fleet reconnecting) is written in one pass.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if !self.connected.load(Ordering::Acquire) {
                continue;
            }
            let Some(ctx) = self.ctx.upgrade() else {
                return;
            };
            if beat.elapsed() >= HEARTBEAT {
                beat = Instant::now();
                if let Ok(body) = serde_json::to_vec(&Heartbeat { at: unix_now() }) {
                    let _ = tokio::time::timeout(
                        KV_TIMEOUT,
                        kv.put(heartbeat_key(self.node()), Bytes::from(body)),
                    )
                    .await;
                }
            }
            let held = ctx.state.persistent_sessions();
            let mut here = HashSet::with_capacity(held.len());
            for h in held {
                let key = key(&h.org, &h.client);
                here.insert(key.clone());
                let known = lock(&self.sessions.written).get(&key).cloned();
                let outcome = match known {
                    Some(w) => self.write_known(&kv, &key, &h, w).await,
                    None => self.write_first(&kv, &key, &h, &ctx).await,
                };
                if outcome.is_err() {
                    break; // NATS is struggling: the next pass tries again
                }
            }
            let gone: Vec<(String, u64)> = lock(&self.sessions.written)
                .iter()
                .filter(|(k, _)| !here.contains(*k))
                .map(|(k, w)| (k.clone(), w.revision))
                .collect();
            for (key, revision) in gone {
                // Fails when another node holds the session now: then it is theirs.
                let _ = tokio::time::timeout(
                    KV_TIMEOUT,
                    kv.delete_expect_revision(&key, Some(revision)),
                )
                .await;
                lock(&self.sessions.written).remove(&key);
            }
            let held = lock(&self.sessions.written).len();
            crate::metrics::cluster_sessions_held(self.node(), held);
        }
    }

    fn stored(&self, h: &crate::state::HeldSession, cursor: u64) -> Option<Bytes> {
        let stored = Stored {
            node: self.node().to_owned(),
            record: h.record.clone(),
            cursor,
            acked: h.acked.clone(),
            at: unix_now(),
        };
        serde_json::to_vec(&stored).ok().map(Bytes::from)
    }

    /// A session this node has written before: its changes, unless another node took
    /// it over meanwhile (then this node's copy goes, once no connection has it here).
    async fn write_known(
        &self,
        kv: &kv::Store,
        key: &str,
        h: &crate::state::HeldSession,
        w: Written,
    ) -> Result<(), ()> {
        let cursor = h.cursor.unwrap_or(w.cursor);
        if cursor == w.cursor && h.record == w.record && h.acked == w.acked {
            return Ok(());
        }
        let Some(value) = self.stored(h, cursor) else {
            return Ok(());
        };
        match tokio::time::timeout(KV_TIMEOUT, kv.update(key, value, w.revision)).await {
            Ok(Ok(revision)) => {
                self.sessions
                    .remember(key, revision, &h.record, cursor, &h.acked);
                Ok(())
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                lock(&self.sessions.written).remove(key);
                if !h.online {
                    if let Some(ctx) = self.ctx.upgrade() {
                        ctx.state.discard_session(&h.org, &h.client);
                    }
                    debug!(org = %h.org, client_id = h.client, "session taken over by another node: dropped here");
                }
                Ok(())
            }
            _ => Err(()),
        }
    }

    /// A session this node has not written yet: one made here, or one loaded from the
    /// store when the node started (then the bucket says whether it is still this
    /// node's, and its queue is read again from the stream: what was published while
    /// the node was down is in there).
    async fn write_first(
        &self,
        kv: &kv::Store,
        key: &str,
        h: &crate::state::HeldSession,
        ctx: &Arc<crate::session::SessionCtx>,
    ) -> Result<(), ()> {
        let entry = match tokio::time::timeout(KV_TIMEOUT, kv.entry(key)).await {
            Ok(Ok(e)) => e.filter(|e| e.operation == kv::Operation::Put),
            _ => return Err(()),
        };
        let theirs = entry
            .as_ref()
            .and_then(|e| serde_json::from_slice::<Stored>(&e.value).ok());
        match (entry, theirs) {
            (Some(e), Some(s)) if s.node == self.node() && !h.online => {
                // Loaded from this node's store at start: the stream has everything it
                // is owed since the cursor, including what came while the node was down.
                self.sessions
                    .remember(key, e.revision, &s.record, s.cursor, &s.acked);
                ctx.state.adopt(&h.org, &h.client, h.record.clone());
                self.interest_ready().await;
                let n = self
                    .read_owed(&h.org, &h.client, &h.record, s.cursor, &s.acked)
                    .await;
                info!(org = %h.org, client_id = h.client, messages = n, "persistent session read again from the cluster stream");
                Ok(())
            }
            (Some(_), Some(s)) if s.node != self.node() && !h.online => {
                // Another node took it over while this one was away.
                ctx.state.discard_session(&h.org, &h.client);
                debug!(org = %h.org, client_id = h.client, holder = s.node, "stale persistent session dropped");
                Ok(())
            }
            (e, _) => {
                let Some(cursor) = h.cursor else {
                    return Ok(()); // written once the node knows where it stands
                };
                let Some(value) = self.stored(h, cursor) else {
                    return Ok(());
                };
                let put = match e {
                    None => tokio::time::timeout(KV_TIMEOUT, kv.create(key, value))
                        .await
                        .map(|r| r.map_err(|_| ())),
                    // Connected here: the newest connection holds the session.
                    Some(_) => tokio::time::timeout(KV_TIMEOUT, kv.put(key, value))
                        .await
                        .map(|r| r.map_err(|_| ())),
                };
                if let Ok(Ok(revision)) = put {
                    self.sessions
                        .remember(key, revision, &h.record, cursor, &h.acked);
                }
                Ok(())
            }
        }
    }

    /// Before a connection of `client` attaches to its session here: with a clean
    /// start, the session the cluster holds for it ends; otherwise, when another node
    /// holds (or held) it, it is taken over from there with what its client is owed.
    /// Without the cluster (NATS unreachable), the node decides alone.
    pub(crate) async fn before_attach(&self, org: &OrgId, client: &str, clean_start: bool) {
        let Some(kv) = self.sessions.kv.get() else {
            return;
        };
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        if !self.connected.load(Ordering::Acquire) {
            return;
        }
        let key = key(org, client);
        let entry = match tokio::time::timeout(KV_TIMEOUT, kv.entry(&key)).await {
            Ok(Ok(Some(e))) if e.operation == kv::Operation::Put => e,
            _ => return,
        };
        if clean_start {
            let _ = tokio::time::timeout(
                KV_TIMEOUT,
                kv.delete_expect_revision(&key, Some(entry.revision)),
            )
            .await;
            lock(&self.sessions.written).remove(&key);
            return;
        }
        let Ok(stored) = serde_json::from_slice::<Stored>(&entry.value) else {
            warn!(org = %org, client_id = client, "unreadable session entry in the cluster: starting anew");
            return;
        };
        // This node's own, written by it since it started: as on a single node. (One
        // it loaded from its store at start is read again from the stream: what was
        // published while the node was down is only there.)
        let verified = lock(&self.sessions.written).contains_key(&key);
        if stored.node == self.node() && verified && ctx.state.session_here(org, client).is_some() {
            return;
        }
        if ctx.state.session_here(org, client) == Some(true) {
            return; // a connection of it is live here (a takeover on this node)
        }
        let mut record = stored.record;
        let since = match record.offline_since {
            Some(since) => since,
            // It was connected when its node stopped writing: offline since then.
            None => self.heartbeat(kv, &stored.node).await.unwrap_or(stored.at),
        };
        if record
            .expiry
            .is_some_and(|e| since + u64::from(e) < unix_now())
        {
            let _ = tokio::time::timeout(
                KV_TIMEOUT,
                kv.delete_expect_revision(&key, Some(entry.revision)),
            )
            .await;
            info!(org = %org, client_id = client, holder = stored.node, "the cluster's session had expired: starting anew");
            return;
        }
        record.offline_since = Some(since);
        ctx.state.adopt(org, client, record.clone());
        let mine = Stored {
            node: self.node().to_owned(),
            record: record.clone(),
            cursor: stored.cursor,
            acked: stored.acked.clone(),
            at: unix_now(),
        };
        if let Ok(body) = serde_json::to_vec(&mine) {
            if let Ok(Ok(revision)) =
                tokio::time::timeout(KV_TIMEOUT, kv.put(&key, Bytes::from(body))).await
            {
                self.sessions
                    .remember(&key, revision, &record, stored.cursor, &stored.acked);
            }
        }
        // Subscribed here before the stream is read: what comes after the read is live.
        self.interest_ready().await;
        let n = self
            .read_owed(org, client, &record, stored.cursor, &stored.acked)
            .await;
        crate::metrics::cluster_session_taken_over(self.node(), n);
        info!(org = %org, client_id = client, from = stored.node, messages = n, "persistent session taken over from another node");
    }

    /// The last heartbeat of `node` (Unix seconds).
    async fn heartbeat(&self, kv: &kv::Store, node: &str) -> Option<u64> {
        let v = tokio::time::timeout(KV_TIMEOUT, kv.get(heartbeat_key(node)))
            .await
            .ok()?
            .ok()??;
        serde_json::from_slice::<Heartbeat>(&v).ok().map(|h| h.at)
    }

    /// Reads the stream after `cursor` into the queue of `client`'s session (the
    /// messages its subscriptions match, but those with an id in `acked`), for at most
    /// [`READ_FOR`]. How many were queued.
    async fn read_owed(
        &self,
        org: &OrgId,
        client: &str,
        record: &SessionRecord,
        cursor: u64,
        acked: &[String],
    ) -> u64 {
        let acked: HashSet<&str> = acked.iter().map(String::as_str).collect();
        use jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        let Some(js) = self.sessions.js.get() else {
            return 0;
        };
        let deadline = Instant::now() + READ_FOR;
        let Ok(Ok(stream)) = tokio::time::timeout_at(deadline, js.get_stream(STREAM)).await else {
            warn!(org = %org, client_id = client, "cannot read the cluster stream for a session taken over");
            return 0;
        };
        let last = stream.cached_info().state.last_sequence;
        if last <= cursor {
            return 0;
        }
        // One filter per consumer (NATS 2.9): the session's own subject when it has one
        // plain filter that is one subject, else the org's.
        let plain: Vec<&str> = record
            .subs
            .iter()
            .filter(|(f, _)| split_shared(f).0.is_none())
            .map(|(f, _)| f.as_str())
            .collect();
        if plain.is_empty() {
            return 0;
        }
        let single = match plain.as_slice() {
            [f] => subject::filter_subjects(f).filter(|s| s.len() == 1),
            _ => None,
        };
        let filter_subject = match single {
            Some(mut s) => s.remove(0),
            None => format!("{}.{}.>", subject::MESSAGES, subject::token(org.as_str())),
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject,
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: cursor + 1,
                },
                ..Default::default()
            })
            .await;
        let consumer = match consumer {
            Ok(c) => c,
            Err(e) => {
                warn!(org = %org, client_id = client, cause = %e, "cannot read the cluster stream for a session taken over");
                return 0;
            }
        };
        if consumer.cached_info().num_pending == 0 {
            return 0;
        }
        let Ok(mut messages) = consumer.messages().await else {
            return 0;
        };
        let mut n = 0;
        loop {
            let next = tokio::time::timeout_at(deadline, messages.next()).await;
            let Ok(Some(Ok(m))) = next else {
                if Instant::now() >= deadline {
                    warn!(org = %org, client_id = client, read = n, "reading the cluster stream for a session taken over took too long: the rest is not delivered");
                }
                break;
            };
            let Ok(info) = m.info() else { break };
            let (seq, pending) = (info.stream_sequence, info.pending);
            let had = super::header(&m.headers, super::H_ID).is_some_and(|id| acked.contains(id));
            if !had {
                self.receive(
                    &m.subject,
                    &m.headers,
                    &m.payload,
                    Scope::Session(client),
                    Some(seq),
                    None,
                );
                n += 1;
            }
            if pending == 0 || seq >= last {
                break;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_bucket_keys_for_any_client_id() {
        let org = OrgId::try_from("acme").unwrap();
        for client in ["d:acme:pump:7", "a/b.c*d>e f", "ünïcode", ""] {
            let k = key(&org, client);
            assert!(
                k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b)),
                "{k}"
            );
        }
        assert_ne!(key(&org, "a"), key(&org, "b"));
    }

    #[test]
    fn the_hint_is_the_newest_sample_at_least_the_lag_old() {
        let s = Sessions::default();
        s.sample(10);
        // Nothing settled yet: the first sample bounds what came before the node.
        assert_eq!(s.hint(), 10);
        s.sample(20);
        assert_eq!(s.hint(), 10);
        // Pretend the samples are old.
        {
            let mut samples = lock(&s.samples);
            for (t, _) in samples.iter_mut() {
                *t -= LAG + Duration::from_secs(1);
            }
        }
        s.sample(30);
        assert_eq!(s.hint(), 20);
    }
}
