//! Messages, takeovers, kicks and connection listings between the nodes of a cluster,
//! through NATS with JetStream (`--cluster nats://HOST:PORT`; docs/cluster-messages.md).
//!
//! - **Forwarding**: every publish accepted on this node (`state::MessageState::publish`:
//!   sessions, status events, wills, bridges) is published on NATS on the subject of
//!   its topic ([`subject`]) with headers (origin node, message id, QoS, retain,
//!   publisher, MQTT 5 properties). QoS ≥ 1 goes through JetStream (stream
//!   `CERTMQ_MSGS` on `certmq.m.>`): the publisher's PUBACK waits for the stream's
//!   acknowledgement (at most the ack timeout, then the message counts as a forward
//!   failure and the PUBACK goes out).
//! - **Interest**: the filters this node's sessions hold (reported by the subscription
//!   trees, `state::tree::Watch`) are NATS subscriptions, one per distinct (org,
//!   filter); shared groups and `A:` instances are NATS queue groups, so one node of
//!   the group gets each message and its local round-robin picks the member.
//! - **Receiving**: a message from NATS is routed through the same message state as a
//!   local publish, never forwarded again; a plain subscription delivers only to
//!   plain subscribers, a queue subscription only to its group. A bounded set of
//!   message ids drops the copies overlapping subscriptions (and JetStream retries) bring.
//! - **Catch-up**: after a lost connection the node reads the stream from shortly
//!   before it was lost, so what it missed reaches its plain subscribers.
//! - **Retained messages**: a retained publish (or clearing) accepted here also goes to
//!   the stream `CERTMQ_RETAINED` (last message per subject); every node applies that
//!   stream to its retained store in the stream's order, so all hold the same set.
//! - **Flow control** ([`pressure`]): what arrives from other nodes counts for this
//!   node's subscribers like a local publish; a node that falls behind says so on
//!   `certmq.c.load`, and the others hold that org's publishers until it caught up.

pub(crate) mod pressure;
pub(crate) mod sessions;
pub(crate) mod subject;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures_util::StreamExt;
use registry::live::SessionInfo;
use registry::OrgId;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::engine::packet::{self, Publish, PublishProperties};
use crate::lock;
use crate::session::SessionCtx;
use crate::sessions::CloseReason;
use crate::state::tree::{split_shared, Interest};
use crate::state::Scope;

/// The JetStream stream that keeps messages between nodes (QoS ≥ 1 at least once, and
/// the catch-up of a node that lost its connection).
pub const STREAM: &str = "CERTMQ_MSGS";
/// The JetStream stream of retained messages: the last one per topic, the same set on
/// every node.
pub const RETAINED_STREAM: &str = "CERTMQ_RETAINED";
/// Takeovers and kicks.
const KICK: &str = "certmq.c.kick";
/// `certmq.c.conns.<org>`: a request for a node's live sessions of an org.
const CONNS: &str = "certmq.c.conns";
/// How long a listing waits for the other nodes' answers.
const GATHER: Duration = Duration::from_millis(300);
/// Message ids remembered to drop copies.
const SEEN: usize = 100_000;
/// A catch-up starts this long before the connection was lost (clock skew between
/// this node and the NATS server, messages in flight).
const CATCH_UP_MARGIN: Duration = Duration::from_secs(5);
/// Forwards waiting for NATS; more are dropped (and counted as failures).
const FORWARD_QUEUE: usize = 100_000;
/// Messages a receive loop routes before it lets other tasks run.
const RECEIVE_BATCH: usize = 128;

const H_NODE: &str = "Certmq-Node";
const H_QOS: &str = "Certmq-Qos";
const H_RETAIN: &str = "Certmq-Retain";
const H_FROM: &str = "Certmq-From";
const H_PROPS: &str = "Certmq-Props";
/// When the origin node accepted the message, Unix ms (the lag metric; nothing
/// decides on it, so clock skew only skews the metric).
const H_AT: &str = "Certmq-At";
const H_ID: &str = "Nats-Msg-Id";

/// How this node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `nats://HOST:PORT`.
    pub url: String,
    /// This node's name (`--node-id`).
    pub node_id: String,
    /// How long the stream keeps messages.
    pub max_age: Duration,
    /// The most bytes the stream keeps (oldest go first).
    pub max_bytes: i64,
    /// How long a QoS ≥ 1 publisher's PUBACK waits for the stream's acknowledgement.
    pub ack_timeout: Duration,
}

impl ClusterConfig {
    pub fn new(url: String, node_id: String) -> ClusterConfig {
        ClusterConfig {
            url,
            node_id,
            max_age: Duration::from_secs(3600),
            max_bytes: 1 << 30,
            ack_timeout: Duration::from_secs(10),
        }
    }
}

/// Set once a forwarded QoS ≥ 1 message is in the stream (or its forward failed); a
/// publisher's PUBACK waits for it, at most until its deadline.
#[derive(Debug)]
pub(crate) struct Done {
    set: AtomicBool,
    notify: Notify,
    pub deadline: Instant,
}

impl Done {
    fn new(deadline: Instant) -> Arc<Done> {
        Arc::new(Done {
            set: AtomicBool::new(false),
            notify: Notify::new(),
            deadline,
        })
    }

    fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Done, or past its deadline.
    pub(crate) fn ready(&self) -> bool {
        self.set.load(Ordering::Acquire) || Instant::now() >= self.deadline
    }

    /// Waits until [`Done::ready`].
    pub(crate) async fn wait(&self) {
        let wait = async {
            loop {
                let n = self.notify.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if self.set.load(Ordering::Acquire) {
                    return;
                }
                n.await;
            }
        };
        let _ = tokio::time::timeout_at(self.deadline, wait).await;
    }
}

/// One message on its way to NATS.
struct Forward {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    /// For QoS ≥ 1 (through JetStream).
    done: Option<Arc<Done>>,
    /// A JetStream publish is retried until then.
    retry_until: Instant,
}

/// MQTT 5 properties kept across nodes.
#[derive(Serialize, Deserialize, Default)]
struct Props {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pfi: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expiry: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ct: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rt: Option<String>,
    /// Correlation data, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cd: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    up: Vec<(String, String)>,
}

impl Props {
    fn of(p: &PublishProperties) -> Props {
        use base64::Engine;
        Props {
            pfi: p.payload_format_indicator,
            expiry: p.message_expiry_interval,
            ct: p.content_type.clone(),
            rt: p.response_topic.clone(),
            cd: p
                .correlation_data
                .as_ref()
                .map(|c| base64::engine::general_purpose::STANDARD.encode(c)),
            up: p.user_properties.clone(),
        }
    }

    fn into_properties(self) -> PublishProperties {
        use base64::Engine;
        PublishProperties {
            payload_format_indicator: self.pfi,
            message_expiry_interval: self.expiry,
            topic_alias: None,
            response_topic: self.rt,
            correlation_data: self
                .cd
                .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                .map(Bytes::from),
            user_properties: self.up,
            subscription_identifiers: Vec::new(),
            content_type: self.ct,
        }
    }
}

/// A takeover or a kick, to every node.
#[derive(Serialize, Deserialize)]
struct Kick {
    org: String,
    client_id: String,
    node: String,
    /// `taken_over`: a session with this client id started on `node` at `since_ms`
    /// (Unix milliseconds): older ones close. `kicked`: an administrator's kick.
    reason: String,
    #[serde(default)]
    since_ms: i64,
}

/// Message ids seen lately (bounded, oldest forgotten first), each kept as a 64-bit
/// keyed hash: no copy of the id per message, 16 bytes each instead of two strings.
/// (Two different ids among the last [`SEEN`] taken for one: about one chance in
/// 10^14 per message.)
#[derive(Default)]
struct Seen {
    hasher: std::hash::RandomState,
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Seen {
    /// Whether `key` is new (and remembers it).
    fn first(&mut self, key: String) -> bool {
        use std::hash::BuildHasher;
        let key = self.hasher.hash_one(key);
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > SEEN {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// This node's side of the cluster.
pub(crate) struct Cluster {
    config: ClusterConfig,
    /// Message ids are `<node>:<boot>:<seq>`: unique across restarts of a node.
    boot: u64,
    seq: AtomicU64,
    forward_tx: mpsc::Sender<Forward>,
    interest_tx: mpsc::UnboundedSender<Interest>,
    connected: AtomicBool,
    client: OnceLock<async_nats::Client>,
    seen: Mutex<Seen>,
    ctx: Weak<SessionCtx>,
    /// Nodes that answered a listing lately (a listing stops waiting once all have).
    peers: Mutex<HashSet<String>>,
    /// Since when NATS is unreachable (`None` while connected).
    lost_since: Mutex<Option<Instant>>,
    /// The earliest time a subscription of this node overflowed (a slow consumer: the
    /// NATS client dropped messages for it) and no catch-up has covered yet.
    overflowed_at: Mutex<Option<time::OffsetDateTime>>,
    overflowed: tokio::sync::Notify,
    /// Persistent sessions in the cluster's bucket ([`sessions`]).
    sessions: sessions::Sessions,
    /// Times messages may have gone missing here (connection lost, a subscription
    /// overflowed); a catch-up that began after the last of them thaws the sessions'
    /// cursors.
    gaps: AtomicU64,
    /// Which orgs this node's receiving is behind for (flow control across nodes).
    load: Arc<pressure::Load>,
}

impl Cluster {
    /// Starts the cluster connection in the background (it reconnects by itself); what
    /// is forwarded meanwhile waits in a bounded queue.
    pub(crate) fn start(config: ClusterConfig, ctx: &Arc<SessionCtx>) -> Arc<Cluster> {
        let (forward_tx, forward_rx) = mpsc::channel(FORWARD_QUEUE);
        let (interest_tx, interest_rx) = mpsc::unbounded_channel();
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let cluster = Arc::new(Cluster {
            config,
            boot,
            seq: AtomicU64::new(0),
            forward_tx,
            interest_tx,
            connected: AtomicBool::new(false),
            client: OnceLock::new(),
            seen: Mutex::default(),
            ctx: Arc::downgrade(ctx),
            peers: Mutex::default(),
            lost_since: Mutex::new(Some(Instant::now())),
            overflowed_at: Mutex::new(None),
            overflowed: tokio::sync::Notify::new(),
            sessions: sessions::Sessions::default(),
            gaps: AtomicU64::new(0),
            load: Arc::default(),
        });
        crate::metrics::cluster_connected(&cluster.config.node_id, false);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(cluster.clone().run(forward_rx, interest_rx));
            }
            Err(_) => warn!("no runtime: the cluster connection is not started"),
        }
        cluster
    }

    pub(crate) fn node(&self) -> &str {
        &self.config.node_id
    }

    /// Where subscription trees report the filters they hold.
    pub(crate) fn interest(&self) -> mpsc::UnboundedSender<Interest> {
        self.interest_tx.clone()
    }

    /// Whether NATS decides which node's shared-group member gets a message: while
    /// connected. (Disconnected, local publishes go to local group members.)
    pub(crate) fn decides_groups(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Waits (at most 2 s) until the interest changes made so far are in effect on the
    /// NATS server: a SUBACK goes out once other nodes' publishes reach this node.
    pub(crate) async fn interest_ready(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.interest_tx.send(Interest::Barrier(tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
    }

    /// Sends a publish accepted on this node to the others. For QoS ≥ 1, what the
    /// publisher's acknowledgement waits for.
    pub(crate) fn forward(
        &self,
        org: &OrgId,
        from: &str,
        publish: &Publish,
        qos: u8,
        props: Option<&PublishProperties>,
        id: Option<&str>,
    ) -> Option<Arc<Done>> {
        let topic = std::str::from_utf8(&publish.topic).ok()?;
        let subject = subject::subject(topic)?;
        debug_assert!(subject.starts_with(&format!(
            "{}.{}",
            subject::MESSAGES,
            subject::token(org.as_str())
        )));
        let headers = self.headers(from, publish, qos, props, id);
        let now = Instant::now();
        // NATS gone for longer than the ack timeout: the node works alone, PUBACKs do
        // not wait (the message is still handed to NATS).
        let alone = lock(&self.lost_since).is_some_and(|t| now - t > self.config.ack_timeout);
        let wait = if alone {
            Duration::ZERO
        } else {
            self.config.ack_timeout
        };
        let done = (qos > 0).then(|| Done::new(now + wait));
        let f = Forward {
            subject,
            headers,
            payload: publish.payload.clone(),
            done: done.clone(),
            retry_until: now + self.config.ack_timeout,
        };
        if self.forward_tx.try_send(f).is_err() {
            crate::metrics::cluster_forward_failed(self.node());
            return None;
        }
        done
    }

    /// Sends a retained message (or, with an empty payload, its clearing) accepted on
    /// this node to the cluster's retained stream, which every node applies.
    pub(crate) fn forward_retained(
        &self,
        from: &str,
        publish: &Publish,
        qos: u8,
        props: Option<&PublishProperties>,
    ) {
        let Some(subject) = std::str::from_utf8(&publish.topic)
            .ok()
            .and_then(subject::retained_subject)
        else {
            return;
        };
        let f = Forward {
            subject,
            headers: self.headers(from, publish, qos, props, None),
            payload: publish.payload.clone(),
            // Through JetStream (retried until the deadline); nobody waits for it.
            done: Some(Done::new(Instant::now() + self.config.ack_timeout)),
            retry_until: Instant::now() + self.config.ack_timeout,
        };
        if self.forward_tx.try_send(f).is_err() {
            crate::metrics::cluster_forward_failed(self.node());
        }
    }

    /// A new message id, unique in the cluster: `<node>:<boot>:<seq>`.
    pub(crate) fn new_id(&self) -> Arc<str> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Arc::from(format!("{}:{}:{seq}", self.node(), self.boot))
    }

    /// The headers a forwarded message carries (`id`: its message id, if it has one).
    fn headers(
        &self,
        from: &str,
        publish: &Publish,
        qos: u8,
        props: Option<&PublishProperties>,
        id: Option<&str>,
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match id {
            Some(id) => headers.insert(H_ID, id),
            None => headers.insert(H_ID, &*self.new_id()),
        }
        headers.insert(H_NODE, self.node());
        headers.insert(H_QOS, qos.to_string().as_str());
        headers.insert(H_AT, pressure::unix_ms().to_string().as_str());
        if publish.retain {
            headers.insert(H_RETAIN, "1");
        }
        if !from.is_empty() && !from.chars().any(char::is_control) {
            headers.insert(H_FROM, from);
        }
        if let Some(p) = props {
            if let Ok(json) = serde_json::to_string(&Props::of(p)) {
                headers.insert(H_PROPS, json.as_str());
            }
        }
        headers
    }

    async fn run(
        self: Arc<Self>,
        forward_rx: mpsc::Receiver<Forward>,
        interest_rx: mpsc::UnboundedReceiver<Interest>,
    ) {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let options = async_nats::ConnectOptions::new()
            .name(format!("certmq {}", self.node()))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1000))
            })
            .event_callback(move |event| {
                let tx = events_tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            });
        let client = match options.connect(self.config.url.as_str()).await {
            Ok(c) => c,
            Err(e) => {
                warn!(url = self.config.url, cause = %e, "cannot connect to the cluster");
                return;
            }
        };
        let _ = self.client.set(client.clone());
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(self.config.ack_timeout);
        tokio::spawn(self.clone().events(events_rx, js.clone()));
        tokio::spawn(self.clone().recover_overflows(js.clone()));
        {
            let (me, js) = (self.clone(), js.clone());
            tokio::spawn(async move { me.start_sessions(js).await });
        }
        tokio::spawn(self.clone().forward_loop(forward_rx, client.clone(), js));
        tokio::spawn(self.clone().control(client.clone()));
        tokio::spawn(self.clone().pressure_loop(client.clone()));
        self.interest_loop(interest_rx, client).await;
    }

    /// Follows the connection: the gauge, the stream (created whenever connected), and
    /// a catch-up after each reconnect.
    async fn events(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<async_nats::Event>,
        js: async_nats::jetstream::Context,
    ) {
        let mut lost_at: Option<time::OffsetDateTime> = None;
        let mut retained_started = false;
        while let Some(event) = rx.recv().await {
            match event {
                async_nats::Event::Connected => {
                    info!(url = self.config.url, "connected to the cluster");
                    self.connected.store(true, Ordering::Release);
                    if let Some(ctx) = self.ctx.upgrade() {
                        ctx.pressure.set_remote_groups(true);
                    }
                    *lock(&self.lost_since) = None;
                    crate::metrics::cluster_connected(self.node(), true);
                    let from = lost_at.take();
                    let (me, js) = (self.clone(), js.clone());
                    let first = !retained_started;
                    retained_started = true;
                    tokio::spawn(async move {
                        let stream = me.ensure_stream(&js).await;
                        if first {
                            tokio::spawn(me.clone().retained_loop(js.clone()));
                        }
                        if let (Some(from), Some(stream)) = (from, stream) {
                            me.catch_up(stream, from).await;
                        }
                    });
                }
                async_nats::Event::Disconnected => {
                    warn!(url = self.config.url, "lost the cluster connection");
                    self.connected.store(false, Ordering::Release);
                    if let Some(ctx) = self.ctx.upgrade() {
                        ctx.pressure.set_remote_groups(false);
                    }
                    lock(&self.lost_since).get_or_insert_with(Instant::now);
                    crate::metrics::cluster_connected(self.node(), false);
                    self.gap();
                    lost_at.get_or_insert_with(time::OffsetDateTime::now_utc);
                }
                async_nats::Event::SlowConsumer(sid) => {
                    // Messages for this subscription were dropped by the client: they
                    // are in the stream (QoS >= 1), so read them back from there.
                    let first = {
                        let mut at = lock(&self.overflowed_at);
                        let first = at.is_none();
                        at.get_or_insert_with(time::OffsetDateTime::now_utc);
                        first
                    };
                    if first {
                        warn!(subscription = sid, "cluster messages arrive faster than this node routes them: catching up from the stream");
                    }
                    crate::metrics::cluster_overflow(self.node());
                    self.gap();
                    self.overflowed.notify_one();
                }
                other => debug!(event = %other, "cluster connection"),
            }
        }
    }

    /// Catches up after subscriptions overflowed, one catch-up at a time: what the NATS
    /// client dropped is routed from the stream (copies already routed are dropped by
    /// their ids), so QoS >= 1 stays at least once when a node falls behind.
    async fn recover_overflows(self: Arc<Self>, js: async_nats::jetstream::Context) {
        loop {
            self.overflowed.notified().await;
            let Some(from) = lock(&self.overflowed_at).take() else {
                continue;
            };
            match js.get_stream(STREAM).await {
                Ok(stream) => self.catch_up(stream, from).await,
                Err(e) => warn!(cause = %e, "cluster catch-up after an overflow failed"),
            }
        }
    }

    /// Creates the stream if it is not there (every node does, idempotently); retries
    /// while the connection holds.
    async fn ensure_stream(
        &self,
        js: &async_nats::jetstream::Context,
    ) -> Option<async_nats::jetstream::stream::Stream> {
        use async_nats::jetstream::stream;
        let config = stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![format!("{}.>", subject::MESSAGES)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: self.config.max_age,
            max_bytes: self.config.max_bytes,
            duplicate_window: Duration::from_secs(120).min(self.config.max_age),
            ..Default::default()
        };
        let retained = stream::Config {
            name: RETAINED_STREAM.to_owned(),
            subjects: vec![format!("{}.>", subject::RETAINED)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_messages_per_subject: 1,
            max_bytes: self.config.max_bytes,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        for attempt in 0.. {
            let made = match js.get_or_create_stream(retained.clone()).await {
                Ok(_) => js.get_or_create_stream(config.clone()).await,
                Err(e) => Err(e),
            };
            match made {
                Ok(s) => return Some(s),
                Err(e) => {
                    if !self.connected.load(Ordering::Acquire) {
                        return None;
                    }
                    if attempt % 10 == 0 {
                        warn!(stream = STREAM, cause = %e, "cannot create the cluster stream; retrying");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        None
    }

    /// Routes what the stream holds since shortly before `from` to this node's plain
    /// subscribers (what it missed while disconnected); copies it already had are
    /// dropped by their ids.
    async fn catch_up(
        &self,
        stream: async_nats::jetstream::stream::Stream,
        from: time::OffsetDateTime,
    ) {
        use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        let gaps = self.gaps.load(Ordering::Acquire);
        let start = from - CATCH_UP_MARGIN;
        let consumer = stream
            .create_consumer(OrderedConfig {
                // One filter: NATS 2.9 has no more.
                filter_subject: format!("{}.>", subject::MESSAGES),
                deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
                ..Default::default()
            })
            .await;
        let mut messages = match consumer {
            Ok(c) => match c.messages().await {
                Ok(m) => m,
                Err(e) => {
                    warn!(cause = %e, "cluster catch-up failed");
                    return;
                }
            },
            Err(e) => {
                warn!(cause = %e, "cluster catch-up failed");
                return;
            }
        };
        let mut n = 0u64;
        loop {
            // Nothing within a second: caught up.
            let next = tokio::time::timeout(Duration::from_secs(1), messages.next()).await;
            let Ok(Some(Ok(m))) = next else { break };
            let (pending, seq) = m
                .info()
                .map_or((0, None), |i| (i.pending, Some(i.stream_sequence)));
            if header(&m.headers, H_NODE) != Some(self.node()) {
                self.receive(&m.subject, &m.headers, &m.payload, Scope::Plain, seq, None);
                n += 1;
            }
            if pending == 0 {
                break;
            }
        }
        info!(messages = n, "cluster catch-up done");
        // Nothing went missing since this catch-up began: it covered everything.
        if self.gaps.load(Ordering::Acquire) == gaps {
            self.sessions.thaw();
        }
    }

    /// Applies the cluster's retained messages to this node's retained store: the last
    /// one per topic first, then each new one, in the stream's order (the same order on
    /// every node, so every node ends with the same set).
    async fn retained_loop(self: Arc<Self>, js: async_nats::jetstream::Context) {
        use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
        let mut deliver = DeliverPolicy::LastPerSubject;
        let mut last_seq = 0u64;
        loop {
            let messages = async {
                let stream = js.get_stream(RETAINED_STREAM).await.ok()?;
                let consumer = stream
                    .create_consumer(OrderedConfig {
                        filter_subject: format!("{}.>", subject::RETAINED),
                        deliver_policy: deliver,
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                consumer.messages().await.ok()
            }
            .await;
            if let Some(mut messages) = messages {
                while let Some(Ok(m)) = messages.next().await {
                    if let Ok(info) = m.info() {
                        last_seq = info.stream_sequence;
                    }
                    self.apply_retained(&m.subject, &m.headers, &m.payload);
                }
            }
            // The consumer ended (NATS gone, stream recreated): resume after the last
            // one applied.
            deliver = if last_seq > 0 {
                DeliverPolicy::ByStartSequence {
                    start_sequence: last_seq + 1,
                }
            } else {
                DeliverPolicy::LastPerSubject
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn apply_retained(&self, subject: &str, headers: &Option<HeaderMap>, payload: &Bytes) {
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        let Some((org, topic)) = subject::retained_topic(subject) else {
            return;
        };
        let Ok(org) = OrgId::try_from(org) else {
            return;
        };
        // Only for an org this node has.
        if !matches!(ctx.tls.get(&org), Ok(Some(_))) {
            return;
        }
        let qos = header(headers, H_QOS)
            .and_then(|q| q.parse::<u8>().ok())
            .unwrap_or(0)
            .min(2);
        let from = header(headers, H_FROM).unwrap_or("");
        let props = header(headers, H_PROPS)
            .and_then(|p| serde_json::from_str::<Props>(p).ok())
            .map(Props::into_properties);
        let publish = packet::publish(topic.as_bytes(), payload, 0, true, 0, false);
        let limits = ctx.state_limits(&org);
        if let Err(refused) =
            ctx.state
                .apply_retained(&org, from, &publish, qos, props.as_ref(), &limits)
        {
            crate::metrics::limit_refused(org.as_str(), refused.limit());
            warn!(%org, topic, limit = refused.limit(), "a retained message from the cluster is over this node's limit");
        }
    }

    /// Sends forwards in order: QoS 0 as core NATS, QoS ≥ 1 through JetStream (its
    /// acknowledgement awaited in a task of its own, retried until the deadline).
    async fn forward_loop(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Forward>,
        client: async_nats::Client,
        js: async_nats::jetstream::Context,
    ) {
        while let Some(f) = rx.recv().await {
            let node = self.node().to_owned();
            let Some(done) = f.done else {
                match client
                    .publish_with_headers(f.subject, f.headers, f.payload)
                    .await
                {
                    Ok(()) => crate::metrics::cluster_forwarded(&node),
                    Err(e) => {
                        debug!(cause = %e, "forward failed");
                        crate::metrics::cluster_forward_failed(&node);
                    }
                }
                continue;
            };
            let subject = Subject::from(f.subject);
            let retry_until = f.retry_until;
            let first = tokio::time::timeout_at(
                retry_until,
                js.publish_with_headers(subject.clone(), f.headers.clone(), f.payload.clone()),
            )
            .await;
            debug!(subject = %subject, sent = first.as_ref().is_ok_and(Result::is_ok), "forward sent");
            let js = js.clone();
            tokio::spawn(async move {
                let mut sent = first.ok().and_then(Result::ok);
                loop {
                    if let Some(ack) = sent.take() {
                        match tokio::time::timeout_at(retry_until, ack).await {
                            Ok(Ok(_)) => {
                                debug!(subject = %subject, "forward in the stream");
                                crate::metrics::cluster_forwarded(&node);
                                done.set();
                                return;
                            }
                            Ok(Err(e)) => debug!(cause = %e, "stream refused a forward; retrying"),
                            Err(_) => break,
                        }
                    }
                    if Instant::now() >= retry_until {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    // The same message id: the stream keeps one copy.
                    let again = tokio::time::timeout_at(
                        retry_until,
                        js.publish_with_headers(
                            subject.clone(),
                            f.headers.clone(),
                            f.payload.clone(),
                        ),
                    )
                    .await;
                    sent = again.ok().and_then(Result::ok);
                }
                warn!(subject = %subject, "a QoS ≥ 1 message did not reach the cluster stream in time");
                crate::metrics::cluster_forward_failed(&node);
                done.set();
            });
        }
    }

    /// Keeps one NATS subscription per distinct (org, filter) the trees report.
    async fn interest_loop(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Interest>,
        client: async_nats::Client,
    ) {
        let mut subs: HashMap<(OrgId, String), Vec<tokio::task::JoinHandle<()>>> = HashMap::new();
        let mut barriers = Vec::new();
        while let Some(first) = rx.recv().await {
            // Everything waiting is applied, then one flush answers every barrier among
            // it (a burst of SUBSCRIBEs costs one round trip to NATS, not one each).
            let mut next = Some(first);
            while let Some(change) = next.take() {
                match change {
                    Interest::Add(org, filter) => {
                        let tasks = self.subscribe(&client, &filter).await;
                        if let Some(old) = subs.insert((org, filter), tasks) {
                            old.iter().for_each(|t| t.abort());
                        }
                    }
                    Interest::Remove(org, filter) => {
                        // The subscriber is dropped with its task: NATS unsubscribes.
                        if let Some(tasks) = subs.remove(&(org, filter)) {
                            tasks.iter().for_each(|t| t.abort());
                        }
                    }
                    Interest::Barrier(done) => barriers.push(done),
                }
                next = rx.try_recv().ok();
            }
            if !barriers.is_empty() {
                if self.connected.load(Ordering::Acquire) {
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
                }
                for done in barriers.drain(..) {
                    let _ = done.send(());
                }
            }
        }
    }

    /// The NATS subscriptions of one internal filter (a queue group for a shared one),
    /// each read by a task of its own.
    async fn subscribe(
        self: &Arc<Self>,
        client: &async_nats::Client,
        filter: &str,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let (group, path) = split_shared(filter);
        let Some(subjects) = subject::filter_subjects(path) else {
            return Vec::new();
        };
        let mut tasks = Vec::new();
        for s in subjects {
            let sub = match group {
                Some(g) => client.queue_subscribe(s.clone(), subject::token(g)).await,
                None => client.subscribe(s.clone()).await,
            };
            match sub {
                Ok(sub) => {
                    let scope = group.map(str::to_owned);
                    tasks.push(tokio::spawn(self.clone().receive_loop(sub, scope)));
                }
                Err(e) => warn!(subject = s, cause = %e, "cannot subscribe in the cluster"),
            }
        }
        tasks
    }

    /// Routes what one NATS subscription brings, in order, with flow control
    /// ([`pressure`]): what waits in the subscription is counted (everything ready is
    /// taken into a queue of at most [`pressure::BEHIND`]), and routing waits while a
    /// subscriber of the org here is over its window.
    async fn receive_loop(self: Arc<Self>, mut sub: async_nats::Subscriber, group: Option<String>) {
        use futures_util::FutureExt;
        let mut lane = pressure::Lane::new(self.load.clone());
        let mut flow: Option<crate::flow::Flow> = None;
        let mut queue = VecDeque::new();
        let mut open = true;
        loop {
            if queue.is_empty() {
                // Nothing waiting: caught up (if it was behind), and a queue grown by a
                // backlog is let go (one per subscription: thousands of them idle).
                lane.backlog(0);
                if queue.capacity() > RECEIVE_BATCH {
                    queue = VecDeque::new();
                }
                match sub.next().await {
                    Some(m) => queue.push_back(m),
                    None => return,
                }
            }
            // Everything ready, without waiting (and outside the task's budget: the
            // count must not stop at it).
            while open && queue.len() < pressure::BEHIND {
                match tokio::task::unconstrained(sub.next()).now_or_never() {
                    Some(Some(m)) => queue.push_back(m),
                    Some(None) => open = false,
                    None => break,
                }
            }
            if lane.org().is_none() {
                let org = queue
                    .front()
                    .and_then(|m| subject::topic(&m.subject))
                    .and_then(|(org, _)| OrgId::try_from(org).ok());
                if let (Some(org), Some(ctx)) = (org, self.ctx.upgrade()) {
                    flow = Some(ctx.pressure.router(&org));
                    lane.set_org(org);
                }
            }
            lane.backlog(queue.len());
            if let Some(at) = queue
                .front()
                .and_then(|m| header(&m.headers, H_AT))
                .and_then(|a| a.parse().ok())
            {
                self.load.lag(at);
            }
            let batch = queue.len().min(RECEIVE_BATCH);
            for m in queue.drain(..batch) {
                let scope = match &group {
                    Some(g) => Scope::Group(g),
                    None => {
                        // Our own, back through a plain subscription: delivered here already.
                        if header(&m.headers, H_NODE) == Some(self.node()) {
                            continue;
                        }
                        Scope::Plain
                    }
                };
                if let Some(f) = flow.as_ref().filter(|f| !f.may_route()) {
                    // A subscriber here is a window behind: wait as a local publisher
                    // would, and meanwhile have the other nodes hold theirs.
                    lane.waiting(true);
                    while !f.may_route() {
                        f.wait_route().await;
                    }
                    lane.waiting(false);
                }
                self.receive(
                    &m.subject,
                    &m.headers,
                    &m.payload,
                    scope,
                    None,
                    flow.as_ref(),
                );
            }
            if !open && queue.is_empty() {
                return;
            }
            if !queue.is_empty() {
                // Others' turn between batches.
                tokio::task::yield_now().await;
            }
        }
    }

    /// Messages may have gone missing here: sessions' cursors stay where they are
    /// until a catch-up has read them back.
    fn gap(&self) {
        self.gaps.fetch_add(1, Ordering::AcqRel);
        self.sessions.freeze();
    }

    /// Routes one message from NATS into this node's message state (never forwarded
    /// again). Copies already routed (same message id and scope) are dropped, except
    /// for one session reading what it is owed. `seq`: its position in the stream,
    /// when read from there. `flow` counts it for the subscribers it reaches
    /// (flow.rs), as a local publish is.
    fn receive(
        &self,
        subject: &str,
        headers: &Option<HeaderMap>,
        payload: &Bytes,
        scope: Scope<'_>,
        seq: Option<u64>,
        flow: Option<&crate::flow::Flow>,
    ) {
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        let Some((org, topic)) = subject::topic(subject) else {
            return;
        };
        let Ok(org) = OrgId::try_from(org) else {
            return;
        };
        if let Some(id) = header(headers, H_ID) {
            let key = match scope {
                Scope::Group(g) => Some(format!("{id}\n{g}")),
                Scope::Session(_) => None,
                _ => Some(id.to_owned()),
            };
            if key.is_some_and(|k| !lock(&self.seen).first(k)) {
                return;
            }
        }
        let qos = header(headers, H_QOS)
            .and_then(|q| q.parse::<u8>().ok())
            .unwrap_or(0)
            .min(2);
        let retain = header(headers, H_RETAIN) == Some("1");
        let from = header(headers, H_FROM).unwrap_or("");
        let props = header(headers, H_PROPS)
            .and_then(|p| serde_json::from_str::<Props>(p).ok())
            .map(Props::into_properties);
        let publish = packet::publish(topic.as_bytes(), payload, 0, retain, 0, false);
        if let Some(flow) = flow {
            let group = match scope {
                Scope::Group(g) => Some(g),
                _ => None,
            };
            flow.published_remote(&topic, group);
        }
        crate::metrics::cluster_received(self.node());
        let limits = ctx.state_limits(&org);
        ctx.state.route_remote(
            &org,
            from,
            &publish,
            qos,
            props.as_ref(),
            &limits,
            scope,
            seq,
            header(headers, H_ID),
        );
    }

    /// Answers the other nodes: takeovers and kicks, connection listings.
    async fn control(self: Arc<Self>, client: async_nats::Client) {
        let kicks = client.subscribe(KICK).await;
        let conns = client.subscribe(format!("{CONNS}.*")).await;
        let (Ok(mut kicks), Ok(mut conns)) = (kicks, conns) else {
            warn!("cannot subscribe to the cluster's control subjects");
            return;
        };
        loop {
            tokio::select! {
                Some(m) = kicks.next() => {
                    let Ok(k) = serde_json::from_slice::<Kick>(&m.payload) else { continue };
                    if k.node == self.node() {
                        continue;
                    }
                    let Some(ctx) = self.ctx.upgrade() else { return };
                    let Ok(org) = OrgId::try_from(k.org.clone()) else { continue };
                    let closed = if k.reason == "taken_over" {
                        let since = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(k.since_ms) * 1_000_000)
                            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                        let live = ctx.sessions.cert_and_addr(&org, &k.client_id).is_some();
                        let closed = ctx.sessions.kick_older(&org, &k.client_id, since, CloseReason::TakenOver);
                        // The session is the other node's now: what this node kept of it
                        // (a persistent session's subscriptions and queue) goes once its
                        // connection here has ended, unless a newer connection has it.
                        if closed.is_some() || !live {
                            let (ctx, org, client) = (ctx.clone(), org.clone(), k.client_id.clone());
                            let switch = closed.clone();
                            tokio::spawn(async move {
                                if let Some(s) = switch {
                                    let _ = tokio::time::timeout(Duration::from_secs(5), s.finished()).await;
                                }
                                if ctx.sessions.cert_and_addr(&org, &client).is_none() {
                                    ctx.state.discard_session(&org, &client);
                                }
                            });
                        }
                        closed.is_some()
                    } else {
                        ctx.sessions.kick(&org, &k.client_id, CloseReason::Kicked)
                    };
                    if closed {
                        info!(org = k.org, client_id = k.client_id, by = k.node, reason = k.reason, "closed a session for another node");
                    }
                    if let Some(reply) = m.reply {
                        let _ = client.publish(reply, Bytes::from(if closed { "1" } else { "0" })).await;
                    }
                }
                Some(m) = conns.next() => {
                    if header(&m.headers, H_NODE) == Some(self.node()) {
                        continue;
                    }
                    let Some(ctx) = self.ctx.upgrade() else { return };
                    let Some(org) = m.subject.strip_prefix(&format!("{CONNS}."))
                        .and_then(subject::level)
                        .and_then(|o| OrgId::try_from(o).ok()) else { continue };
                    let list = ctx.sessions.list(&org);
                    if let (Some(reply), Ok(body)) = (m.reply, serde_json::to_vec(&list)) {
                        let mut h = HeaderMap::new();
                        h.insert(H_NODE, self.node());
                        let _ = client.publish_with_headers(reply, h, Bytes::from(body)).await;
                    }
                }
                else => return,
            }
        }
    }

    /// Tells the other nodes that `client_id` of `org` connected here (at `since`):
    /// they close their older session with that client id.
    pub(crate) fn taken_over(&self, org: &OrgId, client_id: &str, since: time::OffsetDateTime) {
        let kick = Kick {
            org: org.to_string(),
            client_id: client_id.to_owned(),
            node: self.node().to_owned(),
            reason: "taken_over".into(),
            since_ms: (since.unix_timestamp_nanos() / 1_000_000) as i64,
        };
        let Some(client) = self.client.get().cloned() else {
            return;
        };
        let Ok(body) = serde_json::to_vec(&kick) else {
            return;
        };
        tokio::spawn(async move {
            let _ = client.publish(KICK, Bytes::from(body)).await;
        });
    }

    /// Asks the other nodes to close `client_id` of `org` (an administrator's kick);
    /// whether one did within the listing window.
    pub(crate) async fn kick_remote(&self, org: &OrgId, client_id: &str) -> bool {
        let Some(client) = self.client.get() else {
            return false;
        };
        let kick = Kick {
            org: org.to_string(),
            client_id: client_id.to_owned(),
            node: self.node().to_owned(),
            reason: "kicked".into(),
            since_ms: 0,
        };
        let Ok(body) = serde_json::to_vec(&kick) else {
            return false;
        };
        let inbox = client.new_inbox();
        let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
            return false;
        };
        if client
            .publish_with_reply(KICK, inbox, Bytes::from(body))
            .await
            .is_err()
        {
            return false;
        }
        let deadline = Instant::now() + GATHER;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, replies.next()).await {
            if m.payload.as_ref() == b"1" {
                return true;
            }
        }
        false
    }

    /// The live sessions of `org` on the other nodes (those that answer within the
    /// listing window).
    pub(crate) async fn list_remote(&self, org: &OrgId) -> Vec<SessionInfo> {
        let Some(client) = self.client.get() else {
            return Vec::new();
        };
        if !self.connected.load(Ordering::Acquire) {
            return Vec::new();
        }
        let inbox = client.new_inbox();
        let Ok(mut replies) = client.subscribe(inbox.clone()).await else {
            return Vec::new();
        };
        let mut h = HeaderMap::new();
        h.insert(H_NODE, self.node());
        let subject = format!("{CONNS}.{}", subject::token(org.as_str()));
        if client
            .publish_with_reply_and_headers(subject, inbox, h, Bytes::new())
            .await
            .is_err()
        {
            return Vec::new();
        }
        let known = lock(&self.peers).clone();
        let mut answered = HashSet::new();
        let mut out = Vec::new();
        let deadline = Instant::now() + GATHER;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, replies.next()).await {
            if let Some(node) = header(&m.headers, H_NODE) {
                answered.insert(node.to_owned());
            }
            match serde_json::from_slice::<Vec<SessionInfo>>(&m.payload) {
                Ok(list) => out.extend(list),
                Err(e) => warn!(cause = %e, "unreadable connection listing from another node"),
            }
            if !known.is_empty() && known.is_subset(&answered) {
                break;
            }
        }
        lock(&self.peers).extend(answered);
        out
    }
}

fn header<'a>(headers: &'a Option<HeaderMap>, name: &str) -> Option<&'a str> {
    headers.as_ref()?.get(name).map(|v| v.as_str())
}
