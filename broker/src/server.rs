//! The MQTT/TLS listener: accept (capped), pick the org's config by SNI, finish the
//! handshake (timed), read the identity off the client certificate, run the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use registry::{OrgId, Registry};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::admission::{self, Facts};
use crate::guard::{Guard, GuardConfig, Pending};
use crate::session::{self, Peer, SessionCtx, SessionLimits};
use crate::sessions::{CloseReason, Sessions};
use crate::state::MessageState;
use crate::tls::OrgTlsCache;

/// How often persistent sessions past their expiry are ended.
const SESSION_SWEEP_EVERY: Duration = Duration::from_secs(10);
use registry::Transport;

/// Broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Time allowed from TCP accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// Open connections (handshaking or in session); more are closed at once.
    pub max_connections: usize,
    pub limits: SessionLimits,
    /// Per-source limits on unauthenticated connections and token guesses.
    pub guard: GuardConfig,
    /// At shutdown, how long sessions get to drain (owed acknowledgements written, MQTT
    /// 5 DISCONNECT 0x8B, write buffers flushed) and message state to reach the disk.
    pub drain_timeout: Duration,
    /// Every connection on the MQTT listeners starts with a PROXY v2 header naming the
    /// client's address (behind HAProxy's `send-proxy-v2`); see [`crate::proxy`].
    pub proxy_protocol: bool,
    /// This node's name (`--node-id`): connection listings and the cluster use it.
    pub node_id: String,
    /// The cluster this node joins (`--cluster`), if any; see [`crate::cluster`].
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            limits: SessionLimits::default(),
            guard: GuardConfig::default(),
            drain_timeout: Duration::from_secs(10),
            proxy_protocol: false,
            node_id: "certmq".into(),
            cluster: None,
        }
    }
}

/// A TLS alert record, sent in the clear before any handshake message: fatal,
/// `unrecognized_name` (112).
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];
/// Fatal `internal_error` (80).
const ALERT_INTERNAL_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];
/// Fatal `access_denied` (49): the org's network policy refuses the client's address.
const ALERT_ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49];

/// The broker: TLS front end, live sessions and the engine.
pub struct Broker {
    tls: Arc<OrgTlsCache>,
    sessions: Arc<Sessions>,
    pub(crate) ctx: Arc<SessionCtx>,
    config: BrokerConfig,
    /// The org's bridges and webhooks (`None` without a runtime, e.g. in unit tests).
    outbound: Option<Arc<crate::outbound::Outbound>>,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// MQTT over TLS.
    Tls,
    /// Plain MQTT (token authentication only).
    Plain,
    /// MQTT over WebSockets over TLS.
    WebSocket,
}

impl Broker {
    /// Starts the engine and subscribes to registry changes with one listener that, for
    /// the changed org, first drops its cached TLS config (the next handshake rebuilds
    /// it) and then re-judges its live sessions (see [`Broker::reconcile`]). Both run
    /// before the registry call that made the change returns.
    ///
    /// The message state (retained messages, persistent sessions) is loaded from the
    /// registry's store first; an error reading it stops the start.
    pub fn new(registry: Arc<Registry>, config: BrokerConfig) -> Result<Arc<Broker>, String> {
        let store = registry.store();
        Broker::with_message_store(registry, config, store)
    }

    /// [`Broker::new`] with the message state in `messages` rather than the registry's
    /// store: with the registry in PostgreSQL, each node keeps its messages in its own
    /// embedded store.
    pub fn with_message_store(
        registry: Arc<Registry>,
        config: BrokerConfig,
        messages: Arc<dyn registry::store::Store>,
    ) -> Result<Arc<Broker>, String> {
        crate::metrics::install();
        let tls = OrgTlsCache::new(registry.clone());
        let sessions = Arc::new(Sessions::default());
        let state = MessageState::open(messages)?;
        // Sessions drain within most of the budget; the final sync gets the rest.
        let limits = SessionLimits {
            drain_timeout: config.drain_timeout.mul_f64(0.8),
            ..config.limits.clone()
        };
        let ctx = Arc::new(SessionCtx {
            registry: registry.clone(),
            tls: tls.clone(),
            pressure: crate::flow::Pressure::new(),
            sessions: sessions.clone(),
            limits,
            guard: Guard::new(config.guard.clone()),
            state,
            node: config.node_id.clone(),
        });
        if let Some(c) = &config.cluster {
            let cluster = crate::cluster::Cluster::start(c.clone(), &ctx);
            ctx.state.join(cluster);
        }
        let outbound = crate::outbound::Outbound::start(registry.clone(), ctx.state.clone());
        let broker = Arc::new(Broker {
            tls,
            sessions,
            ctx,
            config,
            outbound,
        });
        let weak = Arc::downgrade(&broker);
        registry.on_change(move |registry::Change::Org(org)| {
            if let Some(b) = weak.upgrade() {
                b.tls.invalidate(org);
                b.reconcile(org);
                if let Some(o) = &b.outbound {
                    o.reconcile(org);
                }
            }
        });
        broker.start_session_sweep();
        broker.start_inventory_flush();
        Ok(broker)
    }

    /// Starts the periodic merge of admissions into the device inventory
    /// (`registry::devices`): one store batch every few seconds, whatever the connect rate.
    fn start_inventory_flush(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            warn!("no runtime: the device inventory is written only when read");
            return;
        };
        let registry = Arc::downgrade(&self.ctx.registry);
        rt.spawn(async move {
            let mut every = tokio::time::interval(registry::devices::FLUSH_EVERY);
            loop {
                every.tick().await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                let flushed =
                    tokio::task::spawn_blocking(move || registry.flush_device_activity()).await;
                if let Ok(Err(e)) = flushed {
                    warn!(cause = %e, "device inventory flush failed; retrying");
                }
            }
        });
    }

    /// Starts the sweep of expired persistent sessions.
    fn start_session_sweep(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            warn!("no runtime: expired persistent sessions are ended only at reconnect");
            return;
        };
        let state = Arc::downgrade(&self.ctx.state);
        rt.spawn(async move {
            let mut every = tokio::time::interval(SESSION_SWEEP_EVERY);
            loop {
                every.tick().await;
                let Some(state) = state.upgrade() else { return };
                let ended = state.expire_sessions();
                if ended > 0 {
                    info!(sessions = ended, "expired persistent sessions ended");
                }
            }
        });
    }

    /// Retained messages of `org`, in its own topic names.
    pub fn retained(&self, org: &OrgId) -> Vec<registry::live::RetainedMessage> {
        let prefix = crate::acl::tenant_prefix(org);
        self.ctx
            .state
            .retained(org)
            .into_iter()
            .map(|r| registry::live::RetainedMessage {
                topic: r.topic.strip_prefix(&prefix).unwrap_or(&r.topic).to_owned(),
                bytes: r.bytes,
                qos: r.qos,
                retained_at: time::OffsetDateTime::from_unix_timestamp(
                    i64::try_from(r.at).unwrap_or(0),
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            })
            .collect()
    }

    /// Removes the retained message at `topic` (the org's own topic name) from the
    /// org; whether there was one.
    pub fn delete_retained(&self, org: &OrgId, topic: &str) -> bool {
        let internal = format!("{}{topic}", crate::acl::tenant_prefix(org));
        let removed = self.ctx.state.remove_retained(org, &internal);
        // In a cluster: on every node (an empty retained message clears it).
        if removed {
            if let Some(c) = self.ctx.state.cluster() {
                let clear =
                    crate::engine::packet::publish(internal.as_bytes(), &[], 0, true, 0, false);
                c.forward_retained("", &clear, 0, None);
            }
        }
        removed
    }

    /// Whether the broker can do its work: `Err` while writes of message state fail
    /// (acknowledgements that need them are then held back).
    pub fn ready(&self) -> Result<(), String> {
        if self.ctx.state.failing() {
            Err("writes of message state are failing; acknowledgements are held".into())
        } else {
            Ok(())
        }
    }

    /// Persistent sessions held, and messages queued for sessions, over all orgs.
    pub fn state_counts(&self) -> (usize, usize) {
        self.ctx.state.counts()
    }

    /// Waits (at most `limit`) for message state written so far to reach the disk.
    pub fn sync_state(&self, limit: Duration) {
        self.ctx.state.sync(limit)
    }

    pub(crate) fn tls(&self) -> &OrgTlsCache {
        &self.tls
    }

    /// The Prometheus text exposition of the broker's metrics.
    pub fn metrics_text(&self) -> String {
        let (sessions, queued) = self.ctx.state.counts();
        crate::metrics::state(sessions, queued, self.ctx.state.failing());
        crate::metrics::render(self.sessions.counts(), &self.ctx.registry)
    }

    /// Why the org's TLS config last failed to build, if it did (the org is then served
    /// with its last good config). Building it now if it is not cached.
    pub fn tls_error(&self, org: &OrgId) -> Option<String> {
        if let Err(e) = self.tls.get(org) {
            return Some(e.to_string());
        }
        self.tls.error(org)
    }

    /// What the broker reports about the outgoing destination `id` of `org`.
    pub fn destination_status(
        &self,
        org: &OrgId,
        id: &str,
    ) -> Option<registry::live::DestinationStatus> {
        self.outbound.as_ref()?.status(org, id)
    }

    /// Whether a destination of `org` may take `filter` (what an application of the
    /// org may subscribe to); `Err` says why not.
    pub fn check_destination_filter(&self, org: &OrgId, filter: &str) -> Result<(), String> {
        let custom = self
            .ctx
            .registry
            .topic_policy(org)
            .is_ok_and(|p| p.is_custom());
        crate::outbound::internal_filter(org, custom, filter).map(|_| ())
    }

    /// Stops the bridges and webhooks (their queues stay for the next start).
    pub fn stop_outbound(&self) {
        if let Some(o) = &self.outbound {
            o.stop_all();
        }
    }

    /// Live sessions (list, kick).
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// This node's name (`--node-id`).
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The live sessions of `org` on every node of the cluster (those that answer
    /// within a short window), sorted by client id; alone, this node's.
    pub async fn list_connections(&self, org: &OrgId) -> Vec<registry::live::SessionInfo> {
        let mut all = self.sessions.list(org);
        if let Some(c) = self.ctx.state.cluster() {
            all.extend(c.list_remote(org).await);
            all.sort_by(|a, b| a.client_id.cmp(&b.client_id).then(a.node.cmp(&b.node)));
        }
        all
    }

    /// Closes the session `client_id` of `org`, on whichever node of the cluster has
    /// it (an administrator's kick); false when none does.
    pub async fn kick_connection(&self, org: &OrgId, client_id: &str) -> bool {
        if self.sessions.kick(org, client_id, CloseReason::Kicked) {
            return true;
        }
        match self.ctx.state.cluster() {
            Some(c) => c.kick_remote(org, client_id).await,
            None => false,
        }
    }

    /// Re-applies admission to the org's live sessions after a change, with the same
    /// decision CONNECT made (`admission::decide`) over the org's new state: a session
    /// whose CA is gone or inactive, whose serial is revoked, whose identity is blocked,
    /// whose token was replaced or deleted, or whose credentials the security level no
    /// longer admits is closed. When the org is gone every session is closed and the
    /// org's message state (retained messages, persistent sessions) is purged.
    fn reconcile(&self, org: &OrgId) {
        // Who to judge first, then the store: no store read under the sessions lock.
        let live = self.sessions.of_org(org);
        let tls = match self.tls.get(org) {
            Ok(t) => t,
            Err(e) => {
                // Keep serving with what was admitted; the next handshake will retry.
                error!(%org, cause = %e, "cannot rebuild TLS config");
                return;
            }
        };
        let Some(tls) = tls else {
            for s in &live {
                crate::metrics::kick(org.as_str(), CloseReason::Revoked.label());
                s.switch.close(CloseReason::Revoked);
            }
            info!(%org, sessions = live.len(), "org deleted: closing its sessions and purging its engine state");
            self.purge_when_closed(org.clone(), live.into_iter().map(|s| s.switch).collect());
            return;
        };
        let registry = &self.ctx.registry;
        let mut closed = 0;
        for s in &live {
            if let Err(refusal) = tls.network.check(s.info.remote_addr.ip()) {
                info!(%org, client_id = s.info.client_id, reason = refusal.label(), "closing a session from an address the network policy refuses");
                crate::metrics::kick(org.as_str(), CloseReason::Revoked.label());
                s.switch.close(CloseReason::Revoked);
                closed += 1;
                continue;
            }
            let facts = Facts {
                transport: s.info.transport,
                cert: s.cert.as_ref(),
                client_id: Some(&s.info.client_id),
            };
            let token = admission::current_token(registry, org, s.info.token_version);
            match admission::decide(&tls.rules, &facts, token) {
                Err(refusal) => {
                    info!(%org, client_id = s.info.client_id, stage = refusal.stage.as_str(), cause = %refusal.reason, "closing a session that is no longer admitted");
                    crate::metrics::kick(org.as_str(), CloseReason::Revoked.label());
                    s.switch.close(CloseReason::Revoked);
                    closed += 1;
                }
                // Still admitted: the session re-checks its subscriptions and further
                // packets against what the org's rules now give it (topic policy).
                Ok(admitted) => s.switch.update(admitted.principal),
            }
        }
        if closed > 0 {
            info!(%org, sessions = closed, "closed sessions that are no longer admitted");
        }
    }

    /// Purges `org`'s message state once `sessions` (its last live ones) have ended.
    fn purge_when_closed(&self, org: OrgId, sessions: Vec<Arc<crate::sessions::KillSwitch>>) {
        let state = self.ctx.state.clone();
        let purge = async move {
            for s in sessions {
                let _ = tokio::time::timeout(Duration::from_secs(5), s.finished()).await;
            }
            state.purge(&org).await;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(purge);
            }
            Err(_) => warn!("no runtime to purge a deleted org's message state"),
        }
    }

    /// Serves MQTT over TLS on `listener` until `shutdown` is cancelled, then closes
    /// every session and waits (up to 5 s) for them to end.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.accept_loop(listener, shutdown, Listener::Tls).await
    }

    /// Serves MQTT over WebSockets on `listener`: TLS with the same per-org server
    /// certificate and client-certificate checks as [`Broker::serve`], then the HTTP
    /// upgrade on `/mqtt` with the subprotocol `mqtt`, then the same session.
    pub async fn serve_ws(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.accept_loop(listener, shutdown, Listener::WebSocket)
            .await
    }

    /// Serves plain MQTT (no TLS) on `listener`: only orgs whose policy is
    /// `tls_optional` admit anyone here, and only with a token; the org comes from the
    /// client id.
    pub async fn serve_plain(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.accept_loop(listener, shutdown, Listener::Plain).await
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        kind: Listener,
    ) {
        let plain = kind == Listener::Plain;
        let limit = Arc::new(Semaphore::new(self.config.max_connections));
        let tracker = TaskTracker::new();
        loop {
            let (tcp, addr) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(cause = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                debug!(remote = %addr, "connection limit reached; closing");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let broker = self.clone();
            let span = tracing::info_span!(
                "conn",
                remote = tracing::field::Empty,
                via = tracing::field::Empty,
                org = tracing::field::Empty,
                client_id = tracing::field::Empty
            );
            tracker.spawn(
                async move {
                    let Some((tcp, addr, pending)) = broker.admit(tcp, addr).await else {
                        return;
                    };
                    match kind {
                        Listener::Plain => broker.plain_connection(tcp, addr, pending).await,
                        Listener::Tls => broker.connection(tcp, addr, pending).await,
                        // Boxed: its future is more than twice the others', and this
                        // task is sized by the largest of the three.
                        Listener::WebSocket => {
                            Box::pin(broker.ws_connection(tcp, addr, pending)).await
                        }
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        // The listener is dropped here: new connections are refused from now on.
        drop(listener);
        self.drain(tracker, plain).await;
    }

    /// The client's address (from the PROXY header with `--proxy-protocol`, else the
    /// TCP peer) and its place under the per-address limits; `None` when the
    /// connection ends here.
    async fn admit(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TcpStream, SocketAddr, Pending)> {
        let addr = if self.config.proxy_protocol {
            let header = crate::proxy::read_header(&mut tcp);
            match tokio::time::timeout(self.config.handshake_timeout, header).await {
                Ok(Ok(client)) => {
                    tracing::Span::current().record("via", tracing::field::display(peer));
                    client.unwrap_or(peer)
                }
                Ok(Err(e)) => {
                    debug!(remote = %peer, cause = %e, "refused before TLS");
                    crate::metrics::handshake(None, e.label());
                    return None;
                }
                Err(_) => {
                    debug!(remote = %peer, "no PROXY header before the handshake timeout");
                    crate::metrics::handshake(None, "timeout");
                    return None;
                }
            }
        } else {
            peer
        };
        tracing::Span::current().record("remote", tracing::field::display(addr));
        match self.ctx.guard.accept(addr.ip()) {
            Ok(pending) => Some((tcp, addr, pending)),
            Err(refusal) => {
                debug!(reason = refusal.label(), "refused at accept");
                crate::metrics::handshake(None, refusal.label());
                None
            }
        }
    }

    /// The graceful end of a listener: every session is closed with "server shutting
    /// down" (each writes what it owes, MQTT 5 gets DISCONNECT 0x8B), then, within the
    /// drain timeout, the sessions end and the message state reaches the disk.
    async fn drain(&self, tracker: TaskTracker, plain: bool) {
        let deadline = Instant::now() + self.config.drain_timeout;
        let mine = |s: &registry::live::SessionInfo| (s.transport == Transport::Plain) == plain;
        let mut kicked = self.sessions.kick_where(CloseReason::Shutdown, mine);
        tracker.close();
        let wait = tracker.wait();
        tokio::pin!(wait);
        loop {
            let tick = (Instant::now() + Duration::from_millis(100)).min(deadline);
            tokio::select! {
                _ = &mut wait => {
                    if kicked > 0 {
                        info!(sessions = kicked, plain, "sessions drained");
                    }
                    break;
                }
                _ = tokio::time::sleep_until(tick) => {
                    if Instant::now() >= deadline {
                        warn!(
                            connections = tracker.len(),
                            "drain timeout reached: closing the connections still open"
                        );
                        break;
                    }
                    // Connections that were handshaking at the signal are closed as
                    // soon as their session exists.
                    kicked += self.sessions.kick_where(CloseReason::Shutdown, mine);
                }
            }
        }
        // What the ended sessions left (their queues, offline times) reaches the disk.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(500));
        let state = self.ctx.state.clone();
        let registry = self.ctx.registry.clone();
        let _ = tokio::task::spawn_blocking(move || {
            state.sync(left);
            if let Err(e) = registry.flush_device_activity() {
                warn!(cause = %e, "device inventory not written at shutdown");
            }
        })
        .await;
    }

    async fn plain_connection(&self, tcp: TcpStream, addr: SocketAddr, pending: Pending) {
        let peer = Peer {
            transport: Transport::Plain,
            org_tls: None,
            cert: None,
            remote_addr: addr,
            local_port: tcp.local_addr().map(|a| a.port()).unwrap_or_default(),
            pending: Some(pending),
        };
        // Boxed, as in `connection`.
        Box::pin(session::run(tcp, peer, self.ctx.clone())).await;
    }

    /// Serves one TLS connection: the handshake (boxed: its state is large and is
    /// freed once it is done, so a long-lived session does not carry it), then the
    /// session.
    ///
    /// The session is boxed too, so the connection's task holds a pointer to it: a
    /// future inline in the task would be carried by every connection at the size of the
    /// largest listener's session (a WebSocket session's is half as large again as a TLS
    /// one's), and the stream moved into it would keep a second slot in this future.
    async fn connection(&self, tcp: TcpStream, addr: SocketAddr, pending: Pending) {
        let session = match Box::pin(self.handshake(tcp, addr, pending)).await {
            Some((stream, peer)) => Box::pin(session::run(stream, peer, self.ctx.clone())),
            None => return,
        };
        session.await;
    }

    /// Serves one WebSocket connection: the TLS handshake as on 8883, the upgrade
    /// (bounded by the handshake timeout, like the TLS handshake), then the session.
    async fn ws_connection(&self, tcp: TcpStream, addr: SocketAddr, pending: Pending) {
        let Some((stream, peer)) = Box::pin(self.handshake(tcp, addr, pending)).await else {
            return;
        };
        let config = crate::ws::config(self.ctx.limits.max_packet_size);
        let upgrade = tokio_tungstenite::accept_hdr_async_with_config(
            stream,
            crate::ws::check_upgrade,
            Some(config),
        );
        // The upgrade and the session boxed one after the other, as in `connection`.
        let session =
            match tokio::time::timeout(self.config.handshake_timeout, Box::pin(upgrade)).await {
                Ok(Ok(ws)) => Box::pin(session::run(
                    crate::ws::WsIo::new(ws),
                    peer,
                    self.ctx.clone(),
                )),
                Ok(Err(e)) => {
                    debug!(cause = %e, "WebSocket upgrade refused");
                    return;
                }
                Err(_) => {
                    debug!("no WebSocket upgrade before the handshake timeout");
                    return;
                }
            };
        session.await;
    }

    /// The TLS handshake and the checks after it; the stream and what it established
    /// about the peer, or `None` when the connection ended there.
    async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        pending: Pending,
    ) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Peer)> {
        let deadline = Instant::now() + self.config.handshake_timeout;
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or_default();
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = match tokio::time::timeout_at(deadline, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                debug!(cause = %e, "not a TLS ClientHello");
                crate::metrics::handshake(None, "not_tls");
                return None;
            }
            Err(_) => {
                debug!("no ClientHello before the handshake timeout");
                crate::metrics::handshake(None, "timeout");
                return None;
            }
        };
        let sni = start.client_hello().server_name().map(str::to_owned);
        let org = sni.as_deref().and_then(|s| self.tls.org_for_sni(s));
        let org_tls = match org.as_ref().map(|o| self.tls.get(o)) {
            Some(Ok(Some(t))) => t,
            Some(Err(e)) => {
                error!(cause = %e, "cannot build the org's TLS config");
                crate::metrics::handshake(org.as_ref().map(|o| o.as_str()), "internal_error");
                let mut io = start.io;
                let _ = io.write_all(&ALERT_INTERNAL_ERROR).await;
                return None;
            }
            _ => {
                crate::hints::unknown_server_name(sni.as_deref());
                crate::metrics::handshake(None, "unrecognized_name");
                let mut io = start.io;
                let _ = io.write_all(&ALERT_UNRECOGNIZED_NAME).await;
                let _ = io.shutdown().await;
                return None;
            }
        };
        tracing::Span::current().record("org", org_tls.org.as_str());
        // The org's network policy, before any certificate work.
        if let Err(refusal) = org_tls.network.check(addr.ip()) {
            debug!(
                reason = refusal.label(),
                "address refused by the org's network policy"
            );
            crate::metrics::network_refused(org_tls.org.as_str(), refusal.label());
            crate::metrics::handshake(Some(org_tls.org.as_str()), "access_denied");
            let mut io = start.io;
            let _ = io.write_all(&ALERT_ACCESS_DENIED).await;
            let _ = io.shutdown().await;
            return None;
        }
        let stream = match tokio::time::timeout_at(
            deadline,
            start.into_stream(org_tls.config.clone()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let reason = crate::metrics::handshake_reason(&e);
                info!(reason, "{}", crate::hints::handshake_failure(reason, &e));
                crate::metrics::handshake(Some(org_tls.org.as_str()), reason);
                return None;
            }
            Err(_) => {
                debug!("TLS handshake timed out");
                crate::metrics::handshake(Some(org_tls.org.as_str()), "timeout");
                return None;
            }
        };
        let (_, conn) = stream.get_ref();
        // No chain only when the org's policy admits tokens (the verifier decides).
        let cert = conn
            .peer_certificates()
            .and_then(|chain| org_tls.peer_cert(chain));
        // A resumed TLS session carries the certificate verified when it was issued;
        // one that has expired since does not come back in that way.
        if cert
            .as_ref()
            .is_some_and(|c| c.not_after < time::OffsetDateTime::now_utc())
        {
            crate::metrics::handshake(Some(org_tls.org.as_str()), "certificate_expired");
            return None;
        }
        crate::metrics::handshake(Some(org_tls.org.as_str()), "ok");
        let peer = Peer {
            transport: Transport::Tls,
            org_tls: Some(org_tls),
            cert,
            remote_addr: addr,
            local_port,
            pending: Some(pending),
        };
        Some((stream, peer))
    }
}
