//! Message state certmq owns: retained messages and persistent sessions, kept in the
//! store so they survive a restart, bounded per org, and purged with their org.
//!
//! rumqttd routes messages between live clean sessions; what must survive is here:
//!
//! - **Retained messages** of every org, written through to the store and replayed
//!   into the engine on start (so clean subscribers get them from the engine as
//!   before);
//! - **Persistent sessions** (MQTT 3.1.1 clean-session 0, MQTT 5 session expiry > 0):
//!   their subscriptions (in a [`tree::FilterTree`] per org), the messages queued for
//!   them, the QoS 2 exchanges in flight. Their deliveries do not go through rumqttd at
//!   all: every publish of the org is matched against the tree here, and a QoS 1/2
//!   message for a persistent session is appended to its queue in the store before
//!   the publisher's PUBACK/PUBREC goes out. Writes are group-committed
//!   ([`commit::Committer`]): one fsync for everything waiting.
//!
//! Each org has its own lock; an org with no persistent subscription and a publish
//! without retain pass without taking it.

mod commit;
pub(crate) mod record;
pub(crate) mod tree;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use registry::store::{Op, Store};
use registry::OrgId;
use tokio::sync::Notify;
use tracing::{error, info, warn};

pub(crate) use commit::Ticket;
use record::{Key, Message, SessionRecord};
use tree::FilterTree;

use crate::engine::packet::{self, Publish, PublishProperties};
use crate::lock;

/// A subscription's options, in one byte (as stored with the session): the maximum
/// QoS in the low two bits, then MQTT 5's flags.
pub(crate) mod opts {
    pub(crate) const QOS: u8 = 0b11;
    /// Not delivered to the session that published it.
    pub(crate) const NO_LOCAL: u8 = 0b100;
    /// Delivered with the retain flag it was published with.
    pub(crate) const RETAIN_AS_PUBLISHED: u8 = 0b1000;
}

/// Which retained messages a SUBSCRIBE gets (MQTT 5 retain handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendRetained {
    Always,
    /// Only when the session did not hold the filter already.
    IfNew,
    Never,
}

/// The bounds on one org's message state (from the org's limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateLimits {
    pub max_retained_messages: usize,
    pub max_retained_bytes: u64,
    pub max_queued_messages: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits::from(&registry::OrgLimits::default())
    }
}

impl From<&registry::OrgLimits> for StateLimits {
    fn from(l: &registry::OrgLimits) -> StateLimits {
        StateLimits {
            max_retained_messages: l.max_retained_messages as usize,
            max_retained_bytes: l.max_retained_bytes,
            max_queued_messages: l.max_queued_messages_per_session as usize,
        }
    }
}

/// A publish refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    RetainedMessages,
    RetainedBytes,
}

impl Refused {
    /// The limit's name (metrics, logs).
    pub(crate) fn limit(self) -> &'static str {
        match self {
            Refused::RetainedMessages => "max_retained_messages",
            Refused::RetainedBytes => "max_retained_bytes",
        }
    }
}

/// A retained message as the admin API lists it.
#[derive(Debug, Clone)]
pub(crate) struct RetainedInfo {
    /// Internal topic.
    pub topic: String,
    pub bytes: usize,
    pub qos: u8,
    /// When it was retained, Unix seconds.
    pub at: u64,
}

/// Which subscribers a publish is routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    /// Every matching subscription (a node alone).
    All,
    /// Plain (not shared) subscriptions only: in a cluster, shared groups get a
    /// message through NATS queue groups.
    Plain,
    /// One member of this shared group only (internal group name).
    Group(&'a str),
    /// The plain subscriptions of this one session (client id): a session resumed from
    /// the cluster reads what it missed.
    Session(&'a str),
}

/// Everything certmq keeps of every org's messages.
pub(crate) struct MessageState {
    /// The cluster this node is part of (`--cluster`): publishes accepted here go to
    /// it, and the filters held are its interest.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    committer: commit::Committer,
    store: Arc<dyn Store>,
    orgs: RwLock<HashMap<OrgId, Arc<OrgMessages>>>,
    /// Session attachments handed out (tells a late detach from a takeover).
    generations: AtomicU64,
}

/// One org's message state.
pub(crate) struct OrgMessages {
    org: OrgId,
    inner: Mutex<OrgInner>,
    /// Subscriptions of persistent sessions: a publish skips the lock when 0.
    subscriptions: AtomicUsize,
    /// Set when the org is deleted: nothing more is stored for it.
    deleted: AtomicBool,
}

#[derive(Default)]
struct OrgInner {
    retained: BTreeMap<String, Arc<Message>>,
    retained_bytes: u64,
    tree: FilterTree,
    sessions: HashMap<String, Session>,
    /// Picks the member of a shared group that gets the next message.
    round_robin: usize,
}

/// A session: persistent ones are stored, ephemeral (clean) ones live only while
/// their connection does.
#[derive(Default)]
struct Session {
    record: SessionRecord,
    /// A clean session: nothing of it is stored, it ends with its connection.
    ephemeral: bool,
    queue: VecDeque<Queued>,
    next_seq: u64,
    /// Packet id → seq of deliveries written to the client and not acknowledged.
    inflight: HashMap<u16, u64>,
    /// Packet ids of QoS 2 deliveries the client has PUBREC'd (PUBREL owed).
    releases: HashSet<u16>,
    /// Packet ids of QoS 2 PUBLISHes from the client awaiting its PUBREL.
    inbound: HashSet<u16>,
    /// The live connection's attachment and wake-up.
    online: Option<(u64, Arc<Notify>)>,
    /// The attachment of the last connection (live or not).
    generation: u64,
    /// In a cluster: the ids of messages acknowledged lately, oldest first.
    acked: VecDeque<(std::time::Instant, Arc<str>)>,
}

impl Session {
    /// The client has message `q` (PUBACK, PUBREC).
    fn note_acked(&mut self, q: Queued) {
        if let (Some(id), false) = (q.id, self.ephemeral) {
            let now = std::time::Instant::now();
            while self.acked.len() >= ACKED_IDS
                || self
                    .acked
                    .front()
                    .is_some_and(|(t, _)| now.duration_since(*t) > ACKED_FOR)
            {
                self.acked.pop_front();
            }
            self.acked.push_back((now, id));
        }
    }
}

impl Session {
    /// Whether the session is offline past its expiry (`now`: Unix seconds). Times are
    /// whole seconds, so a session is kept until the second after the one its expiry
    /// falls in: at least its interval, at most a second more (with `<=` a session
    /// that went offline late in a second was gone up to a second early).
    fn expired(&self, now: u64) -> bool {
        self.online.is_none()
            && matches!((self.record.expiry, self.record.offline_since),
                (Some(e), Some(since)) if since + u64::from(e) < now)
    }
}

struct Queued {
    seq: u64,
    /// Delivery QoS (the lower of the message's and the subscription's).
    qos: u8,
    msg: Arc<Message>,
    /// Written to the client (waiting for its acknowledgement).
    sent: bool,
    /// Written to an earlier connection and not acknowledged: resent with DUP.
    resend: bool,
    /// In the store (QoS 1/2 messages; not QoS 0 ones and not retained copies).
    durable: bool,
    /// In a cluster: a position in the cluster's message stream before this message
    /// (0: not known), what the session's cursor may advance to while it is queued
    /// (`cluster::sessions`).
    hint: u64,
    /// In a cluster: the message's id (what a session that moves to another node
    /// tells it it has acknowledged already).
    id: Option<Arc<str>>,
}

/// Where a message routed here comes from, in a cluster (see [`Queued`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Origin {
    pub hint: u64,
    pub id: Option<Arc<str>>,
}

/// Ids of messages a session's client acknowledged lately, kept for a move to another
/// node (`cluster::sessions`): at most this many ...
const ACKED_IDS: usize = 1024;
/// ... and for this long: the cursor's margin, and the second it moves in, and one more.
const ACKED_FOR: Duration = Duration::from_secs(crate::cluster::sessions::LAG.as_secs() + 2);

/// The least a connected session's queue holds before its oldest messages are dropped:
/// flow control keeps a connected subscriber within its window (1,000 outstanding),
/// so this is never reached by clients that acknowledge.
const ONLINE_QUEUE_FLOOR: usize = 4 * 1024;

/// The packet id of the delivery with `seq`: fixed by the seq, so a delivery resent
/// after a restart keeps its packet id (MQTT requires it).
fn pkid_of(seq: u64) -> u16 {
    u16::try_from(seq % 65_535).unwrap_or(0) + 1
}

/// One delivery for a persistent session's client.
pub(crate) struct Delivery {
    pub publish: Publish,
    pub props: Option<PublishProperties>,
    /// When the broker received the message (Unix seconds), and from whom (client id;
    /// `""` for the broker's own): what a webhook reports.
    pub at: u64,
    pub from: String,
    /// The packet id (0 for QoS 0) and DUP flag it is sent with.
    pub pkid: u16,
    pub dup: bool,
}

/// A persistent session as the cluster keeps it (`MessageState::persistent_sessions`).
#[derive(Debug, Clone)]
pub(crate) struct HeldSession {
    pub org: OrgId,
    pub client: String,
    pub record: SessionRecord,
    pub online: bool,
    /// Every message of the cluster's stream up to here that this session matched
    /// has been acknowledged by its client; `None`: not known.
    pub cursor: Option<u64>,
    /// Ids of messages after the cursor its client acknowledged lately.
    pub acked: Vec<String>,
}

/// The outcome of attaching a connection to its session.
pub(crate) struct Attached {
    pub session_present: bool,
    pub session: SessionHandle,
}

impl MessageState {
    /// Loads every org's message state from `store` and starts the writer. Returns the
    /// state and the retained messages to replay into the engine. Records that cannot
    /// be read are reported by key and skipped; the rest loads.
    pub(crate) fn open(store: Arc<dyn Store>) -> Result<Arc<MessageState>, String> {
        let committer = commit::Committer::start(store.clone());
        let state = MessageState {
            cluster: std::sync::OnceLock::new(),
            committer,
            store: store.clone(),
            orgs: RwLock::default(),
            generations: AtomicU64::new(0),
        };
        let entries = store
            .scan(registry::message_keys::ALL)
            .map_err(|e| format!("reading message state: {e}"))?;
        let (mut bad, mut orphans) = (0usize, Vec::new());
        let mut counts = (0usize, 0usize, 0usize);
        // Sessions first (queues name them), then the rest.
        let mut rest = Vec::new();
        for (key, value) in &entries {
            match record::parse(key) {
                Some((org, Key::Session(client))) => {
                    match serde_json::from_slice::<SessionRecord>(value) {
                        Ok(mut rec) => {
                            // Connected when the broker stopped: offline from now.
                            rec.offline_since.get_or_insert_with(record::now);
                            let org = state.org(&org);
                            let mut g = lock(&org.inner);
                            for (filter, qos) in &rec.subs {
                                let id = rec.ids.iter().find(|(f, _)| f == filter);
                                let id = id.map_or(0, |(_, id)| *id);
                                g.tree.insert_with_id(filter, client, *qos, id);
                            }
                            g.sessions.insert(
                                client.to_owned(),
                                Session {
                                    record: rec,
                                    ..Default::default()
                                },
                            );
                            org.subscriptions.store(g.tree.len(), Ordering::Relaxed);
                            counts.0 += 1;
                        }
                        Err(e) => {
                            error!(key, cause = %e, "unreadable session record skipped");
                            bad += 1;
                        }
                    }
                }
                Some(_) => rest.push((key, value)),
                None => {
                    error!(key, "unknown message-state key skipped");
                    bad += 1;
                }
            }
        }
        for (key, value) in rest {
            let Some((org_id, k)) = record::parse(key) else {
                continue;
            };
            let org = state.org(&org_id);
            let mut g = lock(&org.inner);
            match k {
                Key::Retained(topic) => match Message::decode(value) {
                    Ok(m) => {
                        g.retained_bytes += m.size() as u64;
                        g.retained.insert(topic.to_owned(), Arc::new(m));
                        counts.1 += 1;
                    }
                    Err(e) => {
                        error!(key, cause = %e, "unreadable retained message skipped");
                        bad += 1;
                    }
                },
                Key::Queued(client, seq) => {
                    let Some(s) = g.sessions.get_mut(client) else {
                        orphans.push(Op::Delete(key.clone()));
                        continue;
                    };
                    match Message::decode(value) {
                        Ok(m) => {
                            s.queue.push_back(Queued {
                                seq,
                                qos: m.qos,
                                msg: Arc::new(m),
                                sent: false,
                                resend: false,
                                durable: true,
                                hint: 0,
                                id: None,
                            });
                            s.next_seq = s.next_seq.max(seq + 1);
                            counts.2 += 1;
                        }
                        Err(e) => {
                            error!(key, cause = %e, "unreadable queued message skipped");
                            bad += 1;
                        }
                    }
                }
                Key::Inbound(client, pkid) => match g.sessions.get_mut(client) {
                    Some(s) => {
                        s.inbound.insert(pkid);
                    }
                    None => orphans.push(Op::Delete(key.clone())),
                },
                Key::Release(client, pkid) => match g.sessions.get_mut(client) {
                    Some(s) => {
                        s.releases.insert(pkid);
                    }
                    None => orphans.push(Op::Delete(key.clone())),
                },
                Key::Session(_) => {}
            }
        }
        if !orphans.is_empty() {
            warn!(
                records = orphans.len(),
                "deleting queued state of sessions that no longer exist"
            );
            state.committer.submit(orphans);
        }
        if counts != (0, 0, 0) || bad > 0 {
            info!(
                sessions = counts.0,
                retained = counts.1,
                queued = counts.2,
                unreadable = bad,
                "message state loaded"
            );
        }
        Ok(Arc::new(state))
    }

    /// The state of `org` (created empty on first use).
    pub(crate) fn org(&self, org: &OrgId) -> Arc<OrgMessages> {
        if let Some(o) = self.orgs.read().unwrap_or_else(|e| e.into_inner()).get(org) {
            return o.clone();
        }
        self.orgs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(org.clone())
            .or_insert_with(|| {
                let mut inner = OrgInner::default();
                if let Some(c) = self.cluster.get() {
                    inner.tree.set_watch(tree::Watch {
                        org: org.clone(),
                        tx: c.interest(),
                    });
                }
                Arc::new(OrgMessages {
                    org: org.clone(),
                    inner: Mutex::new(inner),
                    subscriptions: AtomicUsize::new(0),
                    deleted: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Joins `cluster`: publishes accepted from now on go to it, and the filters held
    /// (those loaded already, and every change) are its interest.
    pub(crate) fn join(&self, cluster: Arc<crate::cluster::Cluster>) {
        let tx = cluster.interest();
        // First: an org made from now on watches its filters by itself (one made in
        // between is watched twice, which the cluster takes as one).
        let _ = self.cluster.set(cluster);
        let orgs = self.orgs.read().unwrap_or_else(|e| e.into_inner());
        for (id, o) in orgs.iter() {
            lock(&o.inner).tree.set_watch(tree::Watch {
                org: id.clone(),
                tx: tx.clone(),
            });
        }
    }

    /// The cluster this node is part of, if any.
    pub(crate) fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// The last durable ticket, and changes to it.
    pub(crate) fn committed(&self) -> tokio::sync::watch::Receiver<Ticket> {
        self.committer.committed()
    }

    /// Waits until `ticket` is durable.
    pub(crate) async fn durable(&self, ticket: Ticket) {
        self.committer.wait(ticket).await
    }

    /// Waits (at most `limit`) until everything written so far is on disk.
    pub(crate) fn sync(&self, limit: Duration) {
        self.committer.sync(limit)
    }

    /// Whether writes to the store are failing right now.
    pub(crate) fn failing(&self) -> bool {
        self.committer.failing()
    }

    /// Routes one publish of `org` (internal topic) into the message state: the
    /// retained store when it is retained, the queues of matching persistent sessions.
    /// `extra` are writes to commit with it (a QoS 2 exchange's record). The ticket is
    /// durable once everything this publish must keep is on disk.
    /// `from` is the publishing session's client id (`""` for the broker's own).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn publish(
        &self,
        org: &OrgMessages,
        from: &str,
        publish: &Publish,
        qos: u8,
        props: Option<&PublishProperties>,
        limits: &StateLimits,
        extra: Vec<Op>,
    ) -> Result<Ticket, Refused> {
        self.publish_tracked(org, from, publish, qos, props, limits, extra)
            .map(|(t, _)| t)
    }

    /// [`MessageState::publish`], and in a cluster the forward to the other nodes:
    /// for QoS ≥ 1 also what the publisher's acknowledgement waits for (the message in
    /// the cluster's stream).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn publish_tracked(
        &self,
        org: &OrgMessages,
        from: &str,
        publish: &Publish,
        qos: u8,
        props: Option<&PublishProperties>,
        limits: &StateLimits,
        extra: Vec<Op>,
    ) -> Result<(Ticket, Option<Arc<crate::cluster::Done>>), Refused> {
        let cluster = self.cluster.get();
        let scope = match cluster {
            Some(c) if c.decides_groups() => Scope::Plain,
            _ => Scope::All,
        };
        let origin = match cluster {
            Some(c) => Origin {
                hint: c.live_hint(),
                id: Some(c.new_id()),
            },
            None => Origin::default(),
        };
        let ticket = self.route(
            org, from, publish, qos, props, limits, extra, scope, true, &origin,
        )?;
        let done = match cluster {
            Some(c) if !org.deleted.load(Ordering::Relaxed) => {
                if publish.retain {
                    c.forward_retained(from, publish, qos, props);
                }
                c.forward(&org.org, from, publish, qos, props, origin.id.as_deref())
            }
            _ => None,
        };
        Ok((ticket, done))
    }

    /// Routes a message another node accepted (from the cluster) to this node's
    /// subscribers in `scope`: like a local publish, except that it is not stored as
    /// retained here and not forwarded again. Nothing for an org this node does not
    /// have. `seq`: its position in the cluster's stream, when it was read from there;
    /// `id`: its message id.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn route_remote(
        &self,
        org: &OrgId,
        from: &str,
        publish: &Publish,
        qos: u8,
        props: Option<&PublishProperties>,
        limits: &StateLimits,
        scope: Scope<'_>,
        seq: Option<u64>,
        id: Option<&str>,
    ) {
        let hint = match seq {
            Some(seq) => seq.saturating_sub(1),
            None => self.cluster.get().map_or(0, |c| c.live_hint()),
        };
        let origin = Origin {
            hint,
            id: id.map(Arc::from),
        };
        if let Some(o) = self.existing(org) {
            let _ = self.route(
                &o,
                from,
                publish,
                qos,
                props,
                limits,
                Vec::new(),
                scope,
                false,
                &origin,
            );
        }
    }

    /// Applies a retained message from the cluster (any node's, this one's included,
    /// in the order the cluster's stream has them): stored or, for an empty payload,
    /// cleared, as a local retained publish would — not delivered to anyone.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply_retained(
        &self,
        org: &OrgId,
        from: &str,
        publish: &Publish,
        qos: u8,
        props: Option<&PublishProperties>,
        limits: &StateLimits,
    ) -> Result<(), Refused> {
        let o = self.org(org);
        let mut g = lock(&o.inner);
        if o.deleted.load(Ordering::Relaxed) {
            return Ok(());
        }
        let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
        let msg = Arc::new(Message::new(publish, props.cloned(), qos, from));
        let mut ops = Vec::new();
        self::retain(&mut g, org, topic, &msg, limits, &mut ops)?;
        drop(g);
        if !ops.is_empty() {
            self.committer.submit(ops);
        }
        Ok(())
    }

    /// Routes one publish: retained store (when `keep_retained`), then the queues of
    /// the matching sessions in `scope`.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        org: &OrgMessages,
        from: &str,
        publish: &Publish,
        qos: u8,
        props: Option<&PublishProperties>,
        limits: &StateLimits,
        extra: Vec<Op>,
        scope: Scope<'_>,
        keep_retained: bool,
        origin: &Origin,
    ) -> Result<Ticket, Refused> {
        let subscribed = org.subscriptions.load(Ordering::Relaxed) > 0;
        let retain = publish.retain && keep_retained;
        if !retain && !subscribed {
            return Ok(if extra.is_empty() {
                0
            } else {
                self.committer.submit(extra)
            });
        }
        let mut ops = extra;
        let mut g = lock(&org.inner);
        if org.deleted.load(Ordering::Relaxed) {
            return Ok(0);
        }
        let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
        let msg = Arc::new(Message::new(publish, props.cloned(), qos, from));
        if retain {
            self::retain(&mut g, &org.org, topic, &msg, limits, &mut ops)?;
        }
        if subscribed {
            let targets = match_sessions(&mut g, topic, from, scope);
            let mut dropped = 0;
            for (client, sub, ids) in targets {
                let Some(s) = g.sessions.get_mut(&client) else {
                    continue;
                };
                let qos = qos.min(sub & opts::QOS);
                if qos == 0 && s.online.is_none() {
                    continue; // QoS 0 is not kept for an offline session.
                }
                let durable = qos > 0 && !s.ephemeral;
                let seq = s.next_seq;
                s.next_seq += 1;
                // Delivered copies keep retain = 0 (MQTT 3.3.1.3): only a retained
                // message sent because of a new subscription carries the flag — unless
                // the subscription asked for it as published (MQTT 5).
                let msg = if publish.retain && sub & opts::RETAIN_AS_PUBLISHED == 0 {
                    let mut m = (*msg).clone();
                    m.publish.retain = false;
                    Arc::new(m)
                } else {
                    msg.clone()
                };
                let msg = with_subscription_ids(msg, ids);
                if durable {
                    let mut m = (*msg).clone();
                    m.qos = qos;
                    ops.push(Op::Put(record::queued(&org.org, &client, seq), m.encode()));
                }
                s.queue.push_back(Queued {
                    seq,
                    qos,
                    msg,
                    sent: false,
                    resend: false,
                    durable,
                    hint: origin.hint,
                    id: origin.id.clone(),
                });
                // Online, flow control bounds the queue (a publisher waits while a
                // subscriber has a window's worth outstanding); the limit is for the
                // queue of an offline session, and a floor for an online one.
                let max = if s.online.is_some() {
                    limits.max_queued_messages.max(ONLINE_QUEUE_FLOOR)
                } else {
                    limits.max_queued_messages
                };
                dropped += trim(s, &org.org, &client, max, &mut ops);
                if let Some((_, n)) = &s.online {
                    n.notify_one();
                }
            }
            if dropped > 0 {
                crate::metrics::dropped(org.org.as_str(), "queue_full", dropped);
            }
        }
        Ok(self.committer.submit(ops))
    }

    /// Attaches a connection of `client` to its session (`expiry`: seconds it outlives
    /// the connection, `Some(0)` for none, `None` for never). `clean_start` discards an
    /// existing session first. A clean session that resumes nothing is ephemeral:
    /// nothing of it is ever written to the store.
    pub(crate) fn attach(
        self: &Arc<Self>,
        org: &Arc<OrgMessages>,
        client: &str,
        clean_start: bool,
        expiry: Option<u32>,
    ) -> Attached {
        let mut g = lock(&org.inner);
        let mut ops = Vec::new();
        let now = record::now();
        // A session past its expiry is gone, even before the sweep ends it.
        let expired = g.sessions.get(client).is_some_and(|s| s.expired(now));
        if expired {
            discard(&mut g, &org.org, client, &mut ops);
        }
        let existed = g.sessions.contains_key(client);
        if existed && clean_start {
            discard(&mut g, &org.org, client, &mut ops);
        }
        let present = existed && !clean_start;
        org.subscriptions.store(g.tree.len(), Ordering::Relaxed);
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let notify = Arc::new(Notify::new());
        let deleted = org.deleted.load(Ordering::Relaxed);
        let s = g.sessions.entry(client.to_owned()).or_default();
        // A clean session that does not resume a stored one is never stored.
        s.ephemeral = !present && expiry == Some(0) || deleted;
        s.record.expiry = expiry;
        s.record.offline_since = None;
        s.online = Some((generation, notify.clone()));
        s.generation = generation;
        s.inflight.clear();
        for q in &mut s.queue {
            q.resend |= q.sent;
            q.sent = false;
        }
        if !s.ephemeral {
            ops.push(Op::Put(
                record::session(&org.org, client),
                serde_json::to_vec(&s.record).unwrap_or_default(),
            ));
        }
        if !s.queue.is_empty() {
            notify.notify_one();
        }
        drop(g);
        if !ops.is_empty() {
            self.committer.submit(ops);
        }
        if let Some(c) = self.cluster.get() {
            c.session_changed();
        }
        Attached {
            session_present: present,
            session: SessionHandle {
                state: self.clone(),
                org: org.clone(),
                client: client.to_owned(),
                generation,
                notify,
            },
        }
    }

    /// The state of `org` if it has any (unlike [`MessageState::org`], which makes it).
    fn existing(&self, org: &OrgId) -> Option<Arc<OrgMessages>> {
        self.orgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(org)
            .cloned()
    }

    /// Messages queued for `client` of `org` (0 when it has no session).
    pub(crate) fn queued(&self, org: &OrgId, client: &str) -> usize {
        let Some(o) = self.existing(org) else {
            return 0;
        };
        let g = lock(&o.inner);
        g.sessions.get(client).map_or(0, |s| s.queue.len())
    }

    /// Ends the session of `client` in `org` with everything queued for it (its
    /// owner is gone: a deleted destination).
    pub(crate) fn discard_session(&self, org: &OrgId, client: &str) {
        let Some(o) = self.existing(org) else {
            return;
        };
        let mut ops = Vec::new();
        {
            let mut g = lock(&o.inner);
            discard(&mut g, org, client, &mut ops);
            o.subscriptions.store(g.tree.len(), Ordering::Relaxed);
        }
        if !ops.is_empty() {
            self.committer.submit(ops);
        }
    }

    /// Whether `client` of `org` has a session here (and whether it is connected).
    pub(crate) fn session_here(&self, org: &OrgId, client: &str) -> Option<bool> {
        let o = self.existing(org)?;
        let g = lock(&o.inner);
        g.sessions.get(client).map(|s| s.online.is_some())
    }

    /// Takes over a persistent session from elsewhere (the cluster, `record` as its
    /// last owner left it): whatever this node held of it goes, its subscriptions
    /// are in force from now on, offline until its client attaches. Nothing happens
    /// while a connection of it is live here.
    pub(crate) fn adopt(&self, org: &OrgId, client: &str, record: SessionRecord) {
        let o = self.org(org);
        let mut ops = Vec::new();
        {
            let mut g = lock(&o.inner);
            if o.deleted.load(Ordering::Relaxed)
                || g.sessions.get(client).is_some_and(|s| s.online.is_some())
            {
                return;
            }
            discard(&mut g, org, client, &mut ops);
            for (filter, qos) in &record.subs {
                let id = record.ids.iter().find(|(f, _)| f == filter);
                g.tree
                    .insert_with_id(filter, client, *qos, id.map_or(0, |(_, id)| *id));
            }
            ops.push(Op::Put(
                record::session(org, client),
                serde_json::to_vec(&record).unwrap_or_default(),
            ));
            g.sessions.insert(
                client.to_owned(),
                Session {
                    record,
                    ..Default::default()
                },
            );
            o.subscriptions.store(g.tree.len(), Ordering::Relaxed);
        }
        self.committer.submit(ops);
    }

    /// The persistent sessions of clients held here, each with the cluster-stream
    /// position its queue needs kept (`None`: not known yet); see `cluster::sessions`.
    pub(crate) fn persistent_sessions(&self) -> Vec<HeldSession> {
        let live = self.cluster.get().map_or(0, |c| c.live_hint());
        let mut out = Vec::new();
        for org in self.all_orgs() {
            let g = lock(&org.inner);
            for (client, s) in &g.sessions {
                // Destinations (`$dest:<id>`) have a session on every node, each its own.
                if s.ephemeral || client.starts_with('$') {
                    continue;
                }
                let mut cursor = (live != 0).then_some(live);
                for q in s.queue.iter().filter(|q| q.durable) {
                    cursor = match (cursor, q.hint) {
                        (_, 0) | (None, _) => None,
                        (Some(c), h) => Some(c.min(h)),
                    };
                    if cursor.is_none() {
                        break;
                    }
                }
                let now = std::time::Instant::now();
                let acked = s
                    .acked
                    .iter()
                    .filter(|(t, _)| now.duration_since(*t) <= ACKED_FOR)
                    .map(|(_, id)| id.to_string())
                    .collect();
                out.push(HeldSession {
                    org: org.org.clone(),
                    client: client.clone(),
                    record: s.record.clone(),
                    online: s.online.is_some(),
                    cursor,
                    acked,
                });
            }
        }
        out
    }

    /// Retained messages of `org`.
    pub(crate) fn retained(&self, org: &OrgId) -> Vec<RetainedInfo> {
        let org = self.org(org);
        let now = record::now();
        let g = lock(&org.inner);
        g.retained
            .iter()
            .filter(|(_, m)| !m.expired(now))
            .map(|(topic, m)| RetainedInfo {
                topic: topic.clone(),
                bytes: m.size(),
                qos: m.qos,
                at: m.at,
            })
            .collect()
    }

    /// Removes the retained message at `topic` (internal) from `org`; whether there
    /// was one. The caller clears the engine's copy.
    pub(crate) fn remove_retained(&self, org: &OrgId, topic: &str) -> bool {
        let org = self.org(org);
        let mut g = lock(&org.inner);
        let Some(m) = g.retained.remove(topic) else {
            return false;
        };
        g.retained_bytes = g.retained_bytes.saturating_sub(m.size() as u64);
        self.committer
            .submit(vec![Op::Delete(record::retained(&org.org, topic))]);
        true
    }

    /// Forgets everything of `org` (deleted): in memory at once, in the store after
    /// the writes already queued for it. An org created later with the same id
    /// starts empty.
    pub(crate) async fn purge(&self, org: &OrgId) {
        let removed = self
            .orgs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(org);
        if let Some(o) = &removed {
            let mut g = lock(&o.inner);
            o.deleted.store(true, Ordering::Relaxed);
            o.subscriptions.store(0, Ordering::Relaxed);
            g.tree.clear();
            *g = OrgInner::default();
        }
        // Writes queued before the purge land first; then everything under the org
        // goes, in the same order.
        self.committer.wait(self.committer.submit(Vec::new())).await;
        let prefix = record::org_prefix(org);
        match self.store.scan(&prefix) {
            Ok(entries) if !entries.is_empty() => {
                let ops = entries.into_iter().map(|(k, _)| Op::Delete(k)).collect();
                self.committer.wait(self.committer.submit(ops)).await;
            }
            Ok(_) => {}
            Err(e) => error!(%org, cause = %e, "cannot purge the message state of a deleted org"),
        }
    }

    /// Every org's state (a snapshot of the list).
    fn all_orgs(&self) -> Vec<Arc<OrgMessages>> {
        self.orgs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Ends persistent sessions whose expiry has passed while offline.
    pub(crate) fn expire_sessions(&self) -> usize {
        let orgs = self.all_orgs();
        let now = record::now();
        let mut ended = 0;
        for org in orgs {
            let mut g = lock(&org.inner);
            let expired: Vec<String> = g
                .sessions
                .iter()
                .filter(|(_, s)| s.expired(now))
                .map(|(c, _)| c.clone())
                .collect();
            let mut ops = Vec::new();
            for client in &expired {
                discard(&mut g, &org.org, client, &mut ops);
            }
            org.subscriptions.store(g.tree.len(), Ordering::Relaxed);
            drop(g);
            ended += expired.len();
            self.committer.submit(ops);
        }
        ended
    }

    /// Persistent sessions and queued messages held, over all orgs (metrics).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let orgs = self.all_orgs();
        orgs.iter().fold((0, 0), |(s, q), o| {
            let g = lock(&o.inner);
            (
                s + g.sessions.values().filter(|s| !s.ephemeral).count(),
                q + g.sessions.values().map(|s| s.queue.len()).sum::<usize>(),
            )
        })
    }
}

/// Stores (or clears, for an empty payload) the retained message at `topic`.
fn retain(
    g: &mut OrgInner,
    org: &OrgId,
    topic: &str,
    msg: &Arc<Message>,
    limits: &StateLimits,
    ops: &mut Vec<Op>,
) -> Result<(), Refused> {
    let old = g.retained.get(topic).map_or(0, |m| m.size() as u64);
    if msg.publish.payload.is_empty() {
        if g.retained.remove(topic).is_some() {
            g.retained_bytes -= old;
            ops.push(Op::Delete(record::retained(org, topic)));
        }
        return Ok(());
    }
    let replacing = g.retained.contains_key(topic);
    if !replacing && g.retained.len() >= limits.max_retained_messages {
        return Err(Refused::RetainedMessages);
    }
    let bytes = g.retained_bytes - old + msg.size() as u64;
    if bytes > limits.max_retained_bytes {
        return Err(Refused::RetainedBytes);
    }
    g.retained_bytes = bytes;
    g.retained.insert(topic.to_owned(), msg.clone());
    ops.push(Op::Put(record::retained(org, topic), msg.encode()));
    Ok(())
}

/// `msg` as delivered through subscriptions with MQTT 5 identifiers `ids` (a copy
/// carrying them; `msg` itself when there are none).
fn with_subscription_ids(msg: Arc<Message>, ids: Vec<usize>) -> Arc<Message> {
    if ids.is_empty() {
        return msg;
    }
    let mut m = (*msg).clone();
    m.props
        .get_or_insert_with(Default::default)
        .subscription_identifiers = ids;
    Arc::new(m)
}

/// The persistent sessions a publish on `topic` goes to, with their subscription QoS
/// (the highest when several of a session's filters match; one member per shared
/// group, an online one first).
fn match_sessions(
    g: &mut OrgInner,
    topic: &str,
    from: &str,
    scope: Scope<'_>,
) -> Vec<(String, u8, Vec<usize>)> {
    let mut plain: HashMap<&str, (u8, Vec<usize>)> = HashMap::new();
    let mut groups: BTreeMap<&str, Vec<(&str, u8, u32)>> = BTreeMap::new();
    let with_plain = matches!(scope, Scope::All | Scope::Plain | Scope::Session(_));
    let with_group = |group: &str| match scope {
        Scope::All => true,
        Scope::Plain | Scope::Session(_) => false,
        Scope::Group(g) => g == group,
    };
    let only = match scope {
        Scope::Session(c) => Some(c),
        _ => None,
    };
    g.tree.matches(topic, |e| match &e.group {
        None if !with_plain => {}
        None if only.is_some_and(|c| c != e.client) => {}
        // No-local: not back to the session that published it.
        None if e.opts & opts::NO_LOCAL != 0 && e.client == from => {}
        Some(group) if !with_group(group) => {}
        None => {
            let (o, ids) = plain.entry(&e.client).or_default();
            let qos = (*o & opts::QOS).max(e.opts & opts::QOS);
            *o = qos | ((*o | e.opts) & opts::RETAIN_AS_PUBLISHED);
            // One delivery for overlapping subscriptions, with all their ids.
            if e.id != 0 {
                ids.push(e.id as usize);
            }
        }
        Some(group) => groups
            .entry(group)
            .or_default()
            .push((&e.client, e.opts, e.id)),
    });
    let mut out: Vec<(String, u8, Vec<usize>)> = plain
        .into_iter()
        .map(|(c, (o, ids))| (c.to_owned(), o, ids))
        .collect();
    if !groups.is_empty() {
        g.round_robin = g.round_robin.wrapping_add(1);
        for members in groups.values() {
            let online: Vec<&(&str, u8, u32)> = members
                .iter()
                .filter(|(c, _, _)| g.sessions.get(*c).is_some_and(|s| s.online.is_some()))
                .collect();
            let pick = if online.is_empty() {
                members.get(g.round_robin % members.len())
            } else {
                online.get(g.round_robin % online.len()).copied()
            };
            if let Some((c, o, id)) = pick {
                let ids = if *id == 0 {
                    Vec::new()
                } else {
                    vec![*id as usize]
                };
                out.push(((*c).to_owned(), *o, ids));
            }
        }
    }
    out
}

/// Drops the oldest messages of a queue over `max` (not those in flight); how many.
fn trim(s: &mut Session, org: &OrgId, client: &str, max: usize, ops: &mut Vec<Op>) -> u64 {
    let mut dropped = 0;
    while s.queue.len() > max {
        let Some(i) = s.queue.iter().position(|q| !q.sent) else {
            break;
        };
        if let Some(q) = s.queue.remove(i) {
            if q.durable {
                ops.push(Op::Delete(record::queued(org, client, q.seq)));
            }
            dropped += 1;
        }
    }
    dropped
}

/// Removes a session and all it stored.
fn discard(g: &mut OrgInner, org: &OrgId, client: &str, ops: &mut Vec<Op>) {
    let Some(s) = g.sessions.remove(client) else {
        return;
    };
    for (filter, _) in &s.record.subs {
        g.tree.remove(filter, client);
    }
    if s.ephemeral {
        return; // nothing of it was stored
    }
    ops.push(Op::Delete(record::session(org, client)));
    ops.extend(
        s.queue
            .iter()
            .filter(|q| q.durable)
            .map(|q| Op::Delete(record::queued(org, client, q.seq))),
    );
    ops.extend(
        s.inbound
            .iter()
            .map(|p| Op::Delete(record::inbound(org, client, *p))),
    );
    ops.extend(
        s.releases
            .iter()
            .map(|p| Op::Delete(record::release(org, client, *p))),
    );
}

/// A connection's handle on its persistent session.
pub(crate) struct SessionHandle {
    state: Arc<MessageState>,
    org: Arc<OrgMessages>,
    client: String,
    generation: u64,
    notify: Arc<Notify>,
}

/// One connection's attachment to its session, kept past the connection's end.
pub(crate) struct Attachment {
    org: Arc<OrgMessages>,
    client: String,
    generation: u64,
}

impl Attachment {
    /// Whether a newer connection has attached to the session (a session that ended
    /// without one, by expiry, has not been resumed).
    pub(crate) fn resumed(&self) -> bool {
        let g = lock(&self.org.inner);
        g.sessions
            .get(&self.client)
            .is_some_and(|s| s.generation != self.generation)
    }
}

/// What a client's acknowledgement of a delivery did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acked {
    /// The delivery is done (PUBACK of QoS 1, PUBCOMP of QoS 2).
    Done,
    /// PUBREC of a QoS 2 delivery: answer with PUBREL.
    Release,
    /// No delivery had this packet id.
    Unknown,
}

impl SessionHandle {
    /// The session's client id.
    pub(crate) fn client(&self) -> &str {
        &self.client
    }

    /// Woken when the session has something to deliver.
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }

    fn with<T>(&self, f: impl FnOnce(&mut Session, &mut Vec<Op>) -> T) -> Option<T> {
        let mut g = lock(&self.org.inner);
        if self.org.deleted.load(Ordering::Relaxed) {
            return None;
        }
        let s = g.sessions.get_mut(&self.client)?;
        if s.online.as_ref().map(|o| o.0) != Some(self.generation) {
            return None; // taken over
        }
        let mut ops = Vec::new();
        let out = f(s, &mut ops);
        drop(g);
        if !ops.is_empty() {
            self.state.committer.submit(ops);
        }
        Some(out)
    }

    /// PUBRELs owed from before this connection (resent after a reconnect).
    pub(crate) fn pending_releases(&self) -> Vec<u16> {
        self.with(|s, _| {
            let mut v: Vec<u16> = s.releases.iter().copied().collect();
            v.sort_unstable();
            v
        })
        .unwrap_or_default()
    }

    /// QoS 2 packet ids the client sent and has not released (a resend of one is a
    /// duplicate).
    pub(crate) fn inbound_qos2(&self) -> HashSet<u16> {
        self.with(|s, _| s.inbound.clone()).unwrap_or_default()
    }

    /// The store write that records an inbound QoS 2 packet id (committed with its
    /// message, see [`MessageState::publish`]).
    pub(crate) fn record_inbound(&self, pkid: u16) -> Vec<Op> {
        self.with(|s, _| s.inbound.insert(pkid));
        vec![Op::Put(
            record::inbound(&self.org.org, &self.client, pkid),
            Vec::new(),
        )]
    }

    /// The client released an inbound QoS 2 packet id (PUBREL).
    pub(crate) fn released_inbound(&self, pkid: u16) {
        let key = record::inbound(&self.org.org, &self.client, pkid);
        self.with(|s, ops| {
            if s.inbound.remove(&pkid) && !s.ephemeral {
                ops.push(Op::Delete(key));
            }
        });
    }

    /// Up to `room` deliveries not yet written to the client, marked as written.
    /// Expired messages are dropped on the way.
    pub(crate) fn take(&self, room: usize) -> Vec<Delivery> {
        let (org, client) = (&self.org.org, &self.client);
        self.with(|s, ops| {
            let now = record::now();
            let mut out = Vec::new();
            let mut i = 0;
            while i < s.queue.len() && out.len() < room {
                let q = &s.queue[i];
                if q.sent {
                    i += 1;
                    continue;
                }
                if q.msg.expired(now) {
                    if q.durable {
                        ops.push(Op::Delete(record::queued(org, client, q.seq)));
                    }
                    s.queue.remove(i);
                    continue;
                }
                let pkid = if q.qos == 0 { 0 } else { pkid_of(q.seq) };
                if pkid != 0 && (s.inflight.contains_key(&pkid) || s.releases.contains(&pkid)) {
                    break; // its packet id is still in use: wait for that ack
                }
                let dup = q.resend;
                let mut props = q.msg.props.clone();
                if let (Some(p), Some(expires)) = (props.as_mut(), q.msg.expires_at) {
                    p.message_expiry_interval =
                        Some(u32::try_from(expires.saturating_sub(now)).unwrap_or(u32::MAX));
                }
                out.push(Delivery {
                    publish: packet::with_qos(&q.msg.publish, q.qos, pkid, dup),
                    props,
                    at: q.msg.at,
                    from: q.msg.from.clone(),
                    pkid,
                    dup,
                });
                if q.qos == 0 {
                    s.queue.remove(i);
                } else {
                    s.inflight.insert(pkid, q.seq);
                    s.queue[i].sent = true;
                    i += 1;
                }
            }
            out
        })
        .unwrap_or_default()
    }

    /// The client acknowledged delivery `pkid` with PUBACK (`rec` false) or PUBREC.
    pub(crate) fn acked(&self, pkid: u16, rec: bool) -> Acked {
        let (org, client) = (&self.org.org, &self.client);
        self.with(|s, ops| {
            let Some(seq) = s.inflight.remove(&pkid) else {
                return Acked::Unknown;
            };
            if let Some(i) = s.queue.iter().position(|q| q.seq == seq) {
                if let Some(q) = s.queue.remove(i) {
                    if q.durable {
                        ops.push(Op::Delete(record::queued(org, client, q.seq)));
                    }
                    s.note_acked(q);
                }
            }
            if rec {
                s.releases.insert(pkid);
                if !s.ephemeral {
                    ops.push(Op::Put(record::release(org, client, pkid), Vec::new()));
                }
                Acked::Release
            } else {
                Acked::Done
            }
        })
        .unwrap_or(Acked::Unknown)
    }

    /// The client completed QoS 2 delivery `pkid` (PUBCOMP).
    pub(crate) fn completed(&self, pkid: u16) -> Acked {
        let key = record::release(&self.org.org, &self.client, pkid);
        self.with(|s, ops| {
            if s.releases.remove(&pkid) {
                if !s.ephemeral {
                    ops.push(Op::Delete(key));
                }
                Acked::Done
            } else {
                Acked::Unknown
            }
        })
        .unwrap_or(Acked::Unknown)
    }

    /// Adds (or updates) subscriptions (internal filters) and queues the retained
    /// messages they match (not for shared ones). The ticket is durable once the
    /// subscriptions are.
    /// Each filter comes with its options, whether to send retained messages, and its
    /// MQTT 5 subscription identifier (0: none).
    pub(crate) fn subscribe(&self, filters: &[(String, u8, SendRetained, u32)]) -> Ticket {
        let mut g = lock(&self.org.inner);
        if self.org.deleted.load(Ordering::Relaxed) {
            return 0;
        }
        let now = record::now();
        let mut retained = Vec::new();
        for (filter, sub, send, id) in filters {
            let held = g
                .sessions
                .get(&self.client)
                .is_some_and(|s| s.record.subs.iter().any(|(f, _)| f == filter));
            g.tree.insert_with_id(filter, &self.client, *sub, *id);
            let send = match send {
                SendRetained::Always => true,
                SendRetained::IfNew => !held,
                SendRetained::Never => false,
            };
            if send && tree::split_shared(filter).0.is_none() {
                retained.extend(
                    g.retained
                        .iter()
                        .filter(|(t, m)| !m.expired(now) && tree::filter_matches(filter, t))
                        .map(|(_, m)| (m.clone(), *sub & opts::QOS, *id)),
                );
            }
        }
        self.org
            .subscriptions
            .store(g.tree.len(), Ordering::Relaxed);
        let OrgInner { sessions, .. } = &mut *g;
        let Some(s) = sessions.get_mut(&self.client) else {
            return 0;
        };
        for (filter, sub, _, id) in filters {
            match s.record.subs.iter_mut().find(|(f, _)| f == filter) {
                Some(held) => held.1 = *sub,
                None => s.record.subs.push((filter.clone(), *sub)),
            }
            s.record.ids.retain(|(f, _)| f != filter);
            if *id != 0 {
                s.record.ids.push((filter.clone(), *id));
            }
        }
        for (m, sub_qos, id) in retained {
            let seq = s.next_seq;
            s.next_seq += 1;
            let ids = if id == 0 {
                Vec::new()
            } else {
                vec![id as usize]
            };
            s.queue.push_back(Queued {
                seq,
                qos: m.qos.min(sub_qos),
                msg: with_subscription_ids(m, ids),
                sent: false,
                resend: false,
                durable: false,
                hint: 0,
                id: None,
            });
        }
        if !s.queue.is_empty() {
            self.notify.notify_one();
        }
        let op = self.save(s);
        drop(g);
        op.map_or(0, |op| self.state.committer.submit(vec![op]))
    }

    /// The write that stores the session's record (none for an ephemeral session).
    fn save(&self, s: &Session) -> Option<Op> {
        if let (false, Some(c)) = (s.ephemeral, self.state.cluster.get()) {
            c.session_changed();
        }
        (!s.ephemeral).then(|| {
            Op::Put(
                record::session(&self.org.org, &self.client),
                serde_json::to_vec(&s.record).unwrap_or_default(),
            )
        })
    }

    /// The session's subscription filters (internal form).
    pub(crate) fn filters(&self) -> Vec<String> {
        self.with(|s, _| s.record.subs.iter().map(|(f, _)| f.clone()).collect())
            .unwrap_or_default()
    }

    /// Removes subscriptions (internal filters).
    pub(crate) fn unsubscribe(&self, filters: &[String]) -> Ticket {
        let mut g = lock(&self.org.inner);
        if self.org.deleted.load(Ordering::Relaxed) {
            return 0;
        }
        for f in filters {
            g.tree.remove(f, &self.client);
        }
        self.org
            .subscriptions
            .store(g.tree.len(), Ordering::Relaxed);
        let Some(s) = g.sessions.get_mut(&self.client) else {
            return 0;
        };
        s.record.subs.retain(|(f, _)| !filters.contains(f));
        s.record.ids.retain(|(f, _)| !filters.contains(f));
        let op = self.save(s);
        drop(g);
        op.map_or(0, |op| self.state.committer.submit(vec![op]))
    }

    /// What tells, once this connection has ended, whether another connected to the
    /// session since ([`Attachment::resumed`]).
    pub(crate) fn attachment(&self) -> Attachment {
        Attachment {
            org: self.org.clone(),
            client: self.client.clone(),
            generation: self.generation,
        }
    }

    /// Sets the session's expiry interval (seconds, `None` never) as an MQTT 5
    /// DISCONNECT may. A session that started with expiry 0 is not stored and stays so
    /// (MQTT 5 3.14.2.2.2 forbids that change; it is ignored).
    pub(crate) fn set_expiry(&self, expiry: Option<u32>) {
        self.with(|s, _| {
            if !s.ephemeral {
                s.record.expiry = expiry;
            }
        });
    }

    /// The connection ended. A session that outlives it keeps its queue (deliveries
    /// not acknowledged are sent again, with DUP, on the next connection); one that
    /// does not (MQTT 5 expiry 0) is discarded.
    pub(crate) fn detach(self) {
        let mut g = lock(&self.org.inner);
        if self.org.deleted.load(Ordering::Relaxed) {
            return;
        }
        let mut ops = Vec::new();
        let Some(s) = g.sessions.get_mut(&self.client) else {
            return;
        };
        if s.online.as_ref().map(|o| o.0) != Some(self.generation) {
            return; // a newer connection has it
        }
        s.online = None;
        if s.record.expiry == Some(0) || s.ephemeral {
            discard(&mut g, &self.org.org, &self.client, &mut ops);
            self.org
                .subscriptions
                .store(g.tree.len(), Ordering::Relaxed);
        } else {
            // QoS 0 messages are not kept offline; unacknowledged ones are resent.
            s.queue.retain(|q| q.qos > 0);
            s.inflight.clear();
            for q in &mut s.queue {
                q.resend |= q.sent;
                q.sent = false;
            }
            s.record.offline_since = Some(record::now());
            ops.push(Op::Put(
                record::session(&self.org.org, &self.client),
                serde_json::to_vec(&s.record).unwrap_or_default(),
            ));
        }
        drop(g);
        if !ops.is_empty() {
            self.state.committer.submit(ops);
        }
        if let Some(c) = self.state.cluster.get() {
            c.session_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_outlives_its_expiry_interval_in_whole_seconds() {
        let mut s = Session::default();
        s.record.expiry = Some(5);
        s.record.offline_since = Some(100);
        // Offline since some time in second 100: 5 s have surely passed only in 106.
        assert!(!s.expired(104));
        assert!(!s.expired(105));
        assert!(s.expired(106));
        s.record.expiry = Some(0);
        assert!(s.expired(101));
        s.record.expiry = None;
        assert!(!s.expired(u64::MAX / 2), "never");
    }

    #[test]
    fn matching_honours_no_local_and_takes_the_highest_qos() {
        let mut g = OrgInner::default();
        g.tree.insert("a/+", "echo", 1 | opts::NO_LOCAL);
        g.tree.insert("a/b", "other", 0);
        g.tree.insert("a/#", "other", 2 | opts::RETAIN_AS_PUBLISHED);
        let mut got = match_sessions(&mut g, "a/b", "echo", Scope::All);
        got.sort();
        assert_eq!(
            got,
            [("other".to_string(), 2 | opts::RETAIN_AS_PUBLISHED, vec![])]
        );
        let mut got = match_sessions(&mut g, "a/b", "someone", Scope::All);
        got.sort();
        assert_eq!(
            got,
            [
                ("echo".to_string(), 1, vec![]),
                ("other".to_string(), 2 | opts::RETAIN_AS_PUBLISHED, vec![])
            ]
        );
    }

    #[test]
    fn one_delivery_carries_the_ids_of_every_matching_subscription() {
        let mut g = OrgInner::default();
        g.tree.insert_with_id("a/b", "c", 1, 2);
        g.tree.insert_with_id("a/#", "c", 1, 3);
        g.tree.insert("a/+", "c", 0);
        g.tree.insert_with_id("$share/g/a/b", "d", 1, 7);
        let mut got = match_sessions(&mut g, "a/b", "", Scope::All);
        got.sort();
        for (_, _, ids) in &mut got {
            ids.sort_unstable();
        }
        assert_eq!(
            got,
            [
                ("c".to_string(), 1, vec![2, 3]),
                ("d".to_string(), 1, vec![7])
            ]
        );
    }

    #[test]
    fn a_shared_group_gets_each_message_once() {
        let mut g = OrgInner::default();
        for member in ["w1", "w2", "w3"] {
            g.tree.insert("$share/workers/jobs/+", member, 1);
        }
        let picks: Vec<String> = (0..6)
            .map(|_| {
                let got = match_sessions(&mut g, "jobs/1", "", Scope::All);
                assert_eq!(got.len(), 1, "one member per message");
                got[0].0.clone()
            })
            .collect();
        let distinct: std::collections::HashSet<&String> = picks.iter().collect();
        assert_eq!(distinct.len(), 3, "in turn: {picks:?}");
    }
}
