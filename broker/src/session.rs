//! One MQTT session over an authenticated TLS stream: read CONNECT, check the client id
//! against the certificate identity, then bridge packets between the socket and the
//! engine, authorizing and rewriting every topic on the way in and out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use registry::Identity;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{
    ConnAck, ConnectReturnCode, DisconnectReasonCode, Filter, LastWill, Packet, PingResp, SubAck,
    Subscribe, SubscribeReasonCode,
};
use rumqttd::Notification;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::acl::Principal;
use crate::admission::{self, Arrival, Refusal};
use crate::codec::{connect_version, CodecError, Version};
use crate::engine::Engine;
use crate::flow::{self, Flow, Pressure};
use crate::sessions::{CloseReason, KillSwitch, SessionInfo, Sessions};
use registry::Transport;

/// Most bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Limits applied to every session.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Time allowed between the end of the TLS handshake and a complete CONNECT.
    pub connect_timeout: Duration,
    /// Largest MQTT packet accepted, bytes.
    pub max_packet_size: usize,
    /// Packets a session may have queued at the engine before the broker stops reading
    /// its socket (TCP backpressure slows a publisher that outruns the engine).
    pub max_queued_packets: usize,
    /// A client that accepts no bytes for this long is closed as a slow consumer.
    pub write_timeout: Duration,
    /// Unacknowledged QoS 1/2 deliveries at which a subscriber counts as congested
    /// (rumqttd stops sending to a client at 100 in flight, a constant of its own).
    pub inflight_high: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 1024 * 1024,
            max_queued_packets: 512,
            write_timeout: Duration::from_secs(30),
            inflight_high: 75,
        }
    }
}

/// What the transport established about the peer.
pub(crate) struct Peer {
    pub arrival: Arrival,
    pub ca_id: String,
    pub ca_fingerprint: String,
    pub cert_serial: String,
    pub cert_not_after: time::OffsetDateTime,
    pub remote_addr: std::net::SocketAddr,
    /// The broker port the client connected to (status events report it).
    pub local_port: u16,
}

/// Shared by all sessions.
pub(crate) struct SessionCtx {
    pub registry: Arc<registry::Registry>,
    pub tls: Arc<crate::tls::OrgTlsCache>,
    pub engine: Engine,
    pub pressure: Pressure,
    pub sessions: Arc<Sessions>,
    pub limits: SessionLimits,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("no CONNECT within the connect timeout")]
    ConnectTimeout,
    #[error("keep-alive expired")]
    KeepAlive,
    #[error("client did not read its messages within the write timeout")]
    SlowConsumer,
    #[error("client closed the connection")]
    Eof,
    #[error("engine link: {0}")]
    Link(String),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("not authorized: {0}")]
    Denied(String),
}

/// Runs a session to its end. Never panics on client input; every exit path releases
/// the engine link and the session registry entry.
pub(crate) async fn run<S>(mut stream: S, peer: Peer, ctx: Arc<SessionCtx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = BytesMut::with_capacity(1024);
    let (version, packet) = match tokio::time::timeout(
        ctx.limits.connect_timeout,
        read_connect(&mut stream, &mut rbuf, ctx.limits.max_packet_size),
    )
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            debug!(remote = %peer.remote_addr, cause = %e, "no valid CONNECT");
            return;
        }
        Err(_) => {
            debug!(remote = %peer.remote_addr, cause = %SessionError::ConnectTimeout, "closing");
            return;
        }
    };
    let Packet::Connect(connect, _props, will, _will_props, login) = packet else {
        return;
    };
    let client_id = connect.client_id.clone();
    let admitted = match admission::admit(
        &ctx.registry,
        &ctx.tls,
        &peer.arrival,
        &client_id,
        login.as_ref().map(|l| l.username.as_str()),
        login.as_ref().map(|l| l.password.as_str()),
    ) {
        Ok(a) => a,
        Err(refusal) => {
            let (packet, why) = match refusal {
                Refusal::NotAuthorized(m) => (version.not_authorized(), m),
                Refusal::BadCredentials(m) => (version.bad_credentials(), m),
            };
            info!(client_id, cause = %why, "CONNECT refused");
            let _ = write_packets(&mut stream, version, [packet]).await;
            return;
        }
    };
    let principal = admitted.principal;
    let org = principal.org.clone();
    tracing::Span::current().record("org", org.as_str());
    let will = match will.map(|w| map_will(&principal, w)).transpose() {
        Ok(w) => w,
        Err(e) => {
            info!(%org, client_id, cause = %e, "refused: will topic not allowed");
            let _ = write_packets(&mut stream, version, [version.not_authorized()]).await;
            return;
        }
    };

    let switch = Arc::new(KillSwitch::default());
    let has_cert = peer.arrival.has_cert;
    let transport = peer.arrival.transport;
    let info = SessionInfo {
        client_id: client_id.clone(),
        org: org.clone(),
        kind: principal.identity.kind(),
        identity: principal.identity.clone(),
        auth: match (has_cert, admitted.token_version.is_some()) {
            (true, true) => "certificate+token",
            (true, false) => "certificate",
            _ => "token",
        },
        transport,
        has_cert,
        token_version: admitted.token_version,
        ca_id: peer.ca_id,
        ca_fingerprint: peer.ca_fingerprint,
        cert_serial: peer.cert_serial,
        cert_not_after: peer.cert_not_after,
        remote_addr: peer.remote_addr,
        protocol: version.label(transport),
        since: time::OffsetDateTime::now_utc(),
    };
    let (seq, previous) = ctx.sessions.register(info, switch.clone());
    if let Some(prev) = previous {
        // Takeover (SPEC 3.5): the old session closes and releases its link first.
        crate::metrics::kick(org.as_str(), CloseReason::TakenOver.label());
        prev.close(CloseReason::TakenOver);
        let _ = tokio::time::timeout(Duration::from_secs(5), prev.finished()).await;
    }

    tracing::Span::current().record("client_id", client_id.as_str());
    // A persistent session needs the engine now (session-present, queued messages); a
    // clean one opens its link when it first publishes or subscribes, so an idle device
    // holds no engine state at all.
    // (A clean session that follows a persistent one opens its link at once, so the
    // engine discards the old state as MQTT requires.)
    let had_persistent = ctx
        .sessions
        .note_session_kind(&client_id, !connect.clean_session);
    let (link, connack) = if connect.clean_session && !had_persistent {
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::Success,
        };
        (None, Packet::ConnAck(ack, None))
    } else {
        match ctx.engine.link(&client_id, connect.clean_session).await {
            Ok((tx, rx, ack)) => {
                let ack = Option::<Packet>::from(ack).unwrap_or_else(|| version.not_authorized());
                (Some(Link { tx, rx }), ack)
            }
            Err(e) => {
                warn!(cause = %e, "engine refused the session");
                let _ = write_packets(&mut stream, version, [version.not_authorized()]).await;
                ctx.sessions.remove(&client_id, seq);
                switch.finish();
                return;
            }
        }
    };
    info!(protocol = version.label(transport), "connected");
    let connected_at = time::OffsetDateTime::now_utc();
    let status = StatusEvents {
        principal: principal.clone(),
        client_id: client_id.clone(),
        addr: peer.remote_addr,
        port: peer.local_port,
        protocol: version.label(transport),
        secure: transport == Transport::Tls,
        connected_at,
    };

    let counters =
        crate::metrics::SessionCounters::new(org.as_str(), principal.identity.kind().as_str());
    let mut bridge = Bridge {
        version,
        principal,
        engine: ctx.engine.clone(),
        client_id: client_id.clone(),
        link,
        pending_subs: HashMap::new(),
        wbuf: BytesMut::new(),
        limits: ctx.limits.clone(),
        flow: ctx.pressure.flow(&org),
        counters,
        out_inflight: 0,
    };
    if let Some((topic, payload)) = status.connect() {
        ctx.engine.publish(topic, payload, false).await;
    }
    let keep_alive = Duration::from_secs(u64::from(connect.keep_alive));
    let result = bridge
        .run(&mut stream, &mut rbuf, connack, keep_alive, &switch)
        .await;

    let send_will = match &result {
        Ok(Ending::Client { with_will }) => *with_will,
        _ => true,
    };
    match &result {
        Ok(Ending::Client { .. }) => info!("disconnected by client"),
        Ok(Ending::Closed(reason)) => info!(reason = reason.text(), "closed by broker"),
        Err(e) => info!(cause = %e, "connection ended"),
    }
    if send_will {
        if let Some(w) = will {
            ctx.engine.publish(w.topic, w.message, w.retain).await;
        }
    }
    let (code, reason) = close_code(&result);
    if let Some((topic, payload)) = status.disconnect(code, &reason) {
        ctx.engine.publish(topic, payload, false).await;
    }
    // Without an explicit DISCONNECT the engine never frees a link.
    if let Some(link) = &mut bridge.link {
        let _ = link
            .tx
            .send(Packet::Disconnect(
                rumqttd::protocol::Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ))
            .await;
    }
    let _ = stream.shutdown().await;
    ctx.sessions.remove(&client_id, seq);
    switch.finish();
}

/// Watson-style status events on `iot-2/type/<t>/id/<d>/mon` for devices and gateways.
struct StatusEvents {
    principal: Principal,
    client_id: String,
    addr: std::net::SocketAddr,
    port: u16,
    protocol: &'static str,
    secure: bool,
    connected_at: time::OffsetDateTime,
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl StatusEvents {
    fn topic(&self) -> Option<Bytes> {
        let (t, d) = match &self.principal.identity {
            Identity::Device {
                device_type,
                device_id,
            } => (device_type, device_id),
            Identity::Gateway {
                gateway_type,
                gateway_id,
            } => (gateway_type, gateway_id),
            Identity::App { .. } => return None,
        };
        Some(Bytes::from(crate::acl::status_topic(
            &self.principal.org,
            t,
            d,
        )))
    }

    fn base(&self, action: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("Action".into(), action.into());
        m.insert(
            "Time".into(),
            rfc3339(time::OffsetDateTime::now_utc()).into(),
        );
        m.insert("ClientAddr".into(), self.addr.ip().to_string().into());
        m.insert("ClientID".into(), self.client_id.clone().into());
        m.insert("Port".into(), self.port.into());
        m.insert("Protocol".into(), self.protocol.into());
        m.insert("Secure".into(), self.secure.into());
        m
    }

    fn connect(&self) -> Option<(Bytes, Bytes)> {
        let body = serde_json::Value::Object(self.base("Connect"));
        Some((self.topic()?, Bytes::from(body.to_string())))
    }

    fn disconnect(&self, code: u8, reason: &str) -> Option<(Bytes, Bytes)> {
        let mut m = self.base("Disconnect");
        m.insert("ConnectTime".into(), rfc3339(self.connected_at).into());
        m.insert("CloseCode".into(), code.into());
        m.insert("Reason".into(), reason.into());
        Some((
            self.topic()?,
            Bytes::from(serde_json::Value::Object(m).to_string()),
        ))
    }
}

/// The status event's CloseCode (an MQTT v5 reason code) and reason text.
fn close_code(result: &Result<Ending, SessionError>) -> (u8, String) {
    match result {
        Ok(Ending::Client { .. }) => (0x00, "The client disconnected".into()),
        Ok(Ending::Closed(r)) => (r.number(), r.text().into()),
        Err(SessionError::KeepAlive) => (0x8D, "Keep alive timeout".into()),
        Err(SessionError::Denied(d)) => (0x87, format!("Not authorized: {d}")),
        Err(SessionError::Protocol(p)) => (0x82, format!("Protocol error: {p}")),
        Err(SessionError::Codec(c)) => (0x81, format!("Malformed packet: {c}")),
        Err(e @ (SessionError::Eof | SessionError::Io(_))) => {
            (0x80, format!("Connection lost: {e}"))
        }
        Err(e) => (0x80, e.to_string()),
    }
}

fn map_will(principal: &Principal, w: LastWill) -> Result<LastWill, String> {
    let topic = std::str::from_utf8(&w.topic).map_err(|_| "will topic is not UTF-8".to_string())?;
    let internal = principal.publish_topic(topic).map_err(|e| e.0)?;
    Ok(LastWill {
        topic: Bytes::from(internal),
        ..w
    })
}

async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    max: usize,
) -> Result<(Version, Packet), SessionError> {
    loop {
        match connect_version(rbuf) {
            Ok(v) => match v.read(rbuf, max) {
                Ok(p @ Packet::Connect(..)) => return Ok((v, p)),
                Ok(_) => return Err(SessionError::Protocol("first packet is not CONNECT")),
                Err(CodecError::Incomplete) => {}
                Err(e) => return Err(e.into()),
            },
            Err(CodecError::Incomplete) => {}
            Err(e) => return Err(e.into()),
        }
        if rbuf.len() > max {
            return Err(SessionError::Protocol(
                "CONNECT larger than the packet size limit",
            ));
        }
        if stream.read_buf(rbuf).await? == 0 {
            return Err(SessionError::Eof);
        }
    }
}

async fn write_packets<S: AsyncWrite + Unpin>(
    stream: &mut S,
    version: Version,
    packets: impl IntoIterator<Item = Packet>,
) -> Result<(), SessionError> {
    let mut buf = BytesMut::new();
    for p in packets {
        version.write(p, &mut buf)?;
    }
    stream.write_all(&buf).await?;
    stream.flush().await?;
    Ok(())
}

/// How a session ended without an I/O or protocol error.
enum Ending {
    /// The client sent DISCONNECT; `with_will` for v5 reason 0x04.
    Client { with_will: bool },
    /// The broker closed it.
    Closed(CloseReason),
}

/// A session's two ends of its engine link.
struct Link {
    tx: LinkTx,
    rx: LinkRx,
}

/// The next engine notification, or never when there is no link yet.
async fn next_notification(link: &mut Option<Link>) -> Result<Option<Notification>, SessionError> {
    match link {
        Some(l) => {
            l.rx.next()
                .await
                .map_err(|e| SessionError::Link(e.to_string()))
        }
        None => std::future::pending().await,
    }
}

/// The running half of a session: socket on one side, engine link on the other.
struct Bridge {
    version: Version,
    principal: Principal,
    engine: Engine,
    client_id: String,
    /// The engine link, opened on first need (always at once for persistent sessions).
    link: Option<Link>,
    /// SUBSCRIBE packet id → per-filter refusal code (None = forwarded to the engine).
    pending_subs: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    wbuf: BytesMut,
    limits: SessionLimits,
    flow: Flow,
    /// QoS 1/2 deliveries written to the client and not yet acknowledged by it.
    out_inflight: usize,
    counters: crate::metrics::SessionCounters,
}

impl Bridge {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        rbuf: &mut BytesMut,
        connack: Packet,
        keep_alive: Duration,
        switch: &KillSwitch,
    ) -> Result<Ending, SessionError> {
        self.version.write(connack, &mut self.wbuf)?;
        self.flush(stream).await?;
        // MQTT: the server closes after 1.5 × keep-alive without a packet; 0 disables.
        let ka_limit = (!keep_alive.is_zero()).then(|| keep_alive + keep_alive / 2);
        let mut last_rx = Instant::now();
        // Packets may already be buffered behind the CONNECT.
        if let Some(end) = self.inbound(rbuf, stream).await? {
            return Ok(end);
        }
        // Under org pressure (see flow.rs) reading resumes only after this instant.
        let mut throttled_until: Option<Instant> = None;
        loop {
            let engine_behind = self
                .link
                .as_ref()
                .is_some_and(|l| l.tx.buffer().len() >= self.limits.max_queued_packets);
            let throttled = throttled_until.is_some_and(|t| t > Instant::now());
            let paused = engine_behind || throttled;
            // Read straight into the packet buffer (no per-session scratch: idle sessions
            // stay small), at most a slice when this publisher is being slowed.
            let slice = self.flow.read_limit(READ_CHUNK);
            if rbuf.capacity() - rbuf.len() < slice.min(READ_CHUNK) {
                rbuf.reserve(slice.min(READ_CHUNK));
            }
            let ka_deadline = ka_limit.map(|l| last_rx + l);
            tokio::select! {
                reason = switch.closed() => {
                    if let Some(p) = self.version.disconnect(reason.code(), reason.text()) {
                        self.version.write(p, &mut self.wbuf)?;
                        let _ = tokio::time::timeout(Duration::from_secs(1), self.flush(stream)).await;
                    }
                    return Ok(Ending::Closed(reason));
                }
                n = async {
                    let mut limited = bytes::BufMut::limit(&mut *rbuf, slice);
                    stream.read_buf(&mut limited).await
                }, if !paused => {
                    let n = n?;
                    if n == 0 {
                        return Err(SessionError::Eof);
                    }
                    last_rx = Instant::now();
                    if let Some(end) = self.inbound(rbuf, stream).await? {
                        return Ok(end);
                    }
                    throttled_until = self.flow.pause_after_read().map(|p| Instant::now() + p);
                }
                // The engine is behind on this session's packets, or its org's
                // subscribers are: wait before reading the socket again.
                _ = tokio::time::sleep_until(match throttled_until {
                    Some(t) if throttled => t,
                    _ => Instant::now() + Duration::from_millis(1),
                }), if paused => {}
                _ = sleep_until_opt(self.flow.congestion_deadline()) => self.flow.relieved(),
                n = next_notification(&mut self.link) => {
                    let n = n?;
                    let mut wake = false;
                    if let Some(n) = n {
                        wake |= self.outbound(n)?;
                    }
                    // Drain whatever else is already queued, then write once.
                    loop {
                        tokio::select! {
                            biased;
                            n = next_notification(&mut self.link) => match n? {
                                Some(n) => wake |= self.outbound(n)?,
                                None => break,
                            },
                            _ = std::future::ready(()) => break,
                        }
                        if self.wbuf.len() > 64 * 1024 {
                            break;
                        }
                    }
                    let started = Instant::now();
                    match tokio::time::timeout(self.limits.write_timeout, self.flush(stream)).await {
                        Ok(r) => r?,
                        Err(_) => return Err(SessionError::SlowConsumer),
                    }
                    // The engine paused us (outgoing buffer full) or the socket is slow:
                    // this subscriber cannot keep up, so its org's publishers slow down.
                    if wake
                        || started.elapsed() > flow::SLOW_WRITE
                        || self.out_inflight >= self.limits.inflight_high
                    {
                        self.flow.congested();
                    } else {
                        self.flow.relieved();
                    }
                    if wake {
                        if let Some(l) = &self.link {
                            l.rx.wake().await.map_err(|e| SessionError::Link(e.to_string()))?;
                        }
                    }
                }
                _ = sleep_until_opt(ka_deadline) => return Err(SessionError::KeepAlive),
            }
        }
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), SessionError> {
        if !self.wbuf.is_empty() {
            stream.write_all(&self.wbuf).await?;
            stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Encodes one engine notification for the client. Returns true when the engine
    /// paused this session and must be woken after the write.
    fn outbound(&mut self, n: Notification) -> Result<bool, SessionError> {
        let packet = match n {
            Notification::Unschedule => return Ok(true),
            Notification::Forward(mut f) => {
                let topic = std::str::from_utf8(&f.publish.topic).unwrap_or_default();
                match self.principal.outbound_topic(topic) {
                    Some(t) => f.publish.topic = Bytes::from(t),
                    None => {
                        // Cannot happen: subscriptions only reach the client's own org.
                        warn!(topic, "dropping a message outside the client's topic space");
                        return Ok(false);
                    }
                }
                self.counters.deliveries.increment(1);
                let start = self.wbuf.len();
                self.version
                    .write(Packet::Publish(f.publish, f.properties), &mut self.wbuf)?;
                // rumqttd keeps a publish's QoS private; the fixed header has it.
                if self.wbuf.get(start).is_some_and(|b| b & 0b0110 != 0) {
                    self.out_inflight += 1;
                }
                return Ok(false);
            }
            Notification::DeviceAck(ack) => match Packet::from(ack) {
                Packet::SubAck(ack, props) => Packet::SubAck(self.merge_suback(ack), props),
                p => p,
            },
            Notification::Disconnect(d, _) => {
                match self
                    .version
                    .disconnect(d.reason_code, "disconnected by the broker")
                {
                    Some(p) => p,
                    None => return Ok(false),
                }
            }
            other => {
                debug!(?other, "ignoring engine notification");
                return Ok(false);
            }
        };
        self.version.write(packet, &mut self.wbuf)?;
        Ok(false)
    }

    /// Puts the refusal codes of filters the broker did not forward back in place.
    fn merge_suback(&mut self, mut ack: SubAck) -> SubAck {
        if let Some(slots) = self.pending_subs.remove(&ack.pkid) {
            let mut granted = ack.return_codes.into_iter();
            ack.return_codes = slots
                .into_iter()
                .map(|slot| match slot {
                    Some(refused) => refused,
                    None => granted.next().unwrap_or(SubscribeReasonCode::Failure),
                })
                .collect();
        }
        ack
    }

    /// Decodes and handles every complete packet in `rbuf`.
    async fn inbound<S: AsyncWrite + Unpin>(
        &mut self,
        rbuf: &mut BytesMut,
        stream: &mut S,
    ) -> Result<Option<Ending>, SessionError> {
        loop {
            let packet = match self.version.read(rbuf, self.limits.max_packet_size) {
                Ok(p) => p,
                Err(CodecError::Incomplete) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            match packet {
                Packet::Publish(mut publish, props) => {
                    if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                        return Err(SessionError::Protocol("topic aliases are not supported"));
                    }
                    let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
                    match self.principal.publish_topic(topic) {
                        Ok(internal) => publish.topic = Bytes::from(internal),
                        Err(denied) => {
                            // SPEC 4: unauthorized PUBLISH closes the connection.
                            if let Some(p) = self
                                .version
                                .disconnect(DisconnectReasonCode::NotAuthorized, &denied.0)
                            {
                                self.version.write(p, &mut self.wbuf)?;
                                self.flush(stream).await?;
                            }
                            return Err(SessionError::Denied(denied.0));
                        }
                    }
                    self.counters.publishes.increment(1);
                    self.send_to_engine(Packet::Publish(publish, props)).await?;
                }
                Packet::Subscribe(sub, props) => {
                    let mut slots = Vec::with_capacity(sub.filters.len());
                    let mut allowed = Vec::new();
                    for f in sub.filters {
                        match self.principal.subscribe_filter(&f.path) {
                            Ok(internal) => {
                                slots.push(None);
                                allowed.push(Filter {
                                    path: internal,
                                    ..f
                                });
                            }
                            Err(denied) => {
                                debug!(cause = %denied, "subscription refused");
                                slots.push(Some(self.version.sub_refused()));
                            }
                        }
                    }
                    if allowed.is_empty() {
                        let ack = SubAck {
                            pkid: sub.pkid,
                            return_codes: slots.into_iter().flatten().collect(),
                        };
                        self.version
                            .write(Packet::SubAck(ack, None), &mut self.wbuf)?;
                        self.flush(stream).await?;
                    } else {
                        self.pending_subs.insert(sub.pkid, slots);
                        let sub = Subscribe {
                            pkid: sub.pkid,
                            filters: allowed,
                        };
                        self.send_to_engine(Packet::Subscribe(sub, props)).await?;
                    }
                }
                Packet::Unsubscribe(mut unsub, props) => {
                    // A filter this client could never have subscribed maps to one that
                    // matches nothing, so the engine still answers with an UNSUBACK.
                    for f in &mut unsub.filters {
                        *f = self.principal.subscribe_filter(f).unwrap_or_else(|_| {
                            format!("{}$none", crate::acl::tenant_prefix(&self.principal.org))
                        });
                    }
                    self.send_to_engine(Packet::Unsubscribe(unsub, props))
                        .await?;
                }
                Packet::Disconnect(d, _) => {
                    let with_will =
                        d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                    return Ok(Some(Ending::Client { with_will }));
                }
                Packet::Connect(..) => return Err(SessionError::Protocol("second CONNECT")),
                p @ (Packet::PubAck(..) | Packet::PubRec(..)) => {
                    // The client acknowledged one of our QoS 1/2 deliveries.
                    self.out_inflight = self.out_inflight.saturating_sub(1);
                    if self.out_inflight <= self.limits.inflight_high / 2 {
                        self.flow.relieved();
                    }
                    self.send_to_engine(p).await?
                }
                p @ (Packet::PubRel(..) | Packet::PubComp(..)) => self.send_to_engine(p).await?,
                // Answered here: keep-alive needs no engine (nor an engine link).
                Packet::PingReq(_) => {
                    self.version
                        .write(Packet::PingResp(PingResp), &mut self.wbuf)?;
                    self.flush(stream).await?;
                }
                _ => {
                    return Err(SessionError::Protocol(
                        "unexpected packet type from a client",
                    ))
                }
            }
        }
    }

    /// Forwards a packet to the engine, opening the session's link on first use.
    async fn send_to_engine(&mut self, p: Packet) -> Result<(), SessionError> {
        if self.link.is_none() {
            let (tx, rx, _connack) = self
                .engine
                .link(&self.client_id, true)
                .await
                .map_err(|e| SessionError::Link(e.to_string()))?;
            self.link = Some(Link { tx, rx });
        }
        let Some(link) = &mut self.link else {
            return Err(SessionError::Link("no engine link".into()));
        };
        link.tx
            .send(p)
            .await
            .map(|_| ())
            .map_err(|e| SessionError::Link(e.to_string()))
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
