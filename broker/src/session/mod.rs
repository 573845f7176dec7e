//! One MQTT session over an authenticated stream, from CONNECT to teardown: read the
//! CONNECT, admit it (`admission::decide`), register the session (taking over an older
//! one with the same client id), answer CONNACK, announce it, run the [`bridge`], and on
//! every exit publish the will and the status event and detach from the session's
//! message state.
//!
//! - `bridge.rs`: the packet bridge between the socket and the message state;
//! - `status.rs`: Watson status events on the `mon` topic;
//! - `limits.rs`: the org's limits (`crate::limits`) at CONNECT and per packet.

mod bridge;
mod limits;
mod status;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use registry::live::{Auth, SessionInfo};
use registry::{names, Transport};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use crate::acl::Principal;
use crate::admission::{self, Admitted, Facts, PeerCert, Refusal, TokenCheck};
use crate::engine::codec::{connect_version, CodecError, Version};
use crate::engine::packet::{
    self, ConnAck, ConnectProperties, ConnectReturnCode, LastWill, LastWillProperties, Login,
    Packet, PublishProperties,
};
use crate::flow::Pressure;
use crate::guard::{Guard, Pending};
use crate::sessions::{CloseReason, KillSwitch, Sessions};
use crate::state::{MessageState, OrgMessages, Refused, StateLimits, Ticket};
use crate::tls::{OrgTls, OrgTlsCache};
use bridge::{Bridge, Ending};
use status::StatusEvents;

/// The largest CONNECT read before a client is admitted: an unauthenticated socket
/// may make the broker buffer no more than this (a real CONNECT is a few hundred bytes;
/// a will message is the only large part).
pub(crate) const MAX_CONNECT_BYTES: usize = 64 * 1024;

/// Limits applied to every session.
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// Time allowed between the end of the TLS handshake and a complete CONNECT.
    pub connect_timeout: Duration,
    /// Largest MQTT packet accepted, bytes.
    pub max_packet_size: usize,
    /// A client that accepts no bytes for this long is closed as a slow consumer.
    pub write_timeout: Duration,
    /// At shutdown, how long a session waits for its owed acknowledgements to become
    /// durable and for its last bytes to be written.
    pub drain_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 1024 * 1024,
            write_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(8),
        }
    }
}

/// What the transport established about the peer before CONNECT.
pub(crate) struct Peer {
    pub transport: Transport,
    /// The org's TLS state when SNI chose it; `None` on plain MQTT (the org then comes
    /// from the client id).
    pub org_tls: Option<Arc<OrgTls>>,
    /// The client certificate TLS verified, if one was presented.
    pub cert: Option<PeerCert>,
    pub remote_addr: std::net::SocketAddr,
    /// The broker port the client connected to (status events report it).
    pub local_port: u16,
    /// This connection's place among its address's connections waiting for admission
    /// (see `guard.rs`); given up once the CONNECT is decided.
    pub pending: Option<Pending>,
}

/// Shared by all sessions.
pub(crate) struct SessionCtx {
    pub registry: Arc<registry::Registry>,
    pub tls: Arc<OrgTlsCache>,
    pub pressure: Pressure,
    pub sessions: Arc<Sessions>,
    pub limits: SessionLimits,
    pub guard: Arc<Guard>,
    /// Retained messages and persistent sessions (durable).
    pub state: Arc<MessageState>,
    /// This node's name (`--node-id`): connection listings show it.
    pub node: String,
}

impl SessionCtx {
    /// The bounds on `org`'s message state (its limits as last built, else defaults).
    pub(crate) fn state_limits(&self, org: &registry::OrgId) -> StateLimits {
        self.tls
            .cached_limits(org)
            .map(|(l, _)| StateLimits::from(&l))
            .unwrap_or_default()
    }

    /// Publishes on the broker's own behalf (status events, wills): into the message
    /// state, which delivers them like any other publish.
    pub(crate) fn publish_own(
        &self,
        org: &OrgMessages,
        org_id: &registry::OrgId,
        message: OwnMessage,
    ) -> Result<Ticket, Refused> {
        let publish = packet::publish(
            &message.topic,
            &message.payload,
            0,
            message.retain,
            0,
            false,
        );
        let ticket = self.state.publish(
            org,
            "",
            &publish,
            message.qos,
            message.props.as_ref(),
            &self.state_limits(org_id),
            Vec::new(),
        )?;
        Ok(ticket)
    }
}

/// A message the broker publishes itself.
pub(crate) struct OwnMessage {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Option<PublishProperties>,
}

impl OwnMessage {
    /// A status event (QoS 0, not retained).
    fn event((topic, payload): (Bytes, Bytes)) -> OwnMessage {
        OwnMessage {
            topic,
            payload,
            qos: 0,
            retain: false,
            props: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
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
    #[error("message state: {0}")]
    Link(String),
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("not authorized: {0}")]
    Denied(String),
    /// A packet over one of the org's limits (`limit`: the `OrgLimits` field).
    #[error("over {limit}: {text}")]
    OverLimit { limit: &'static str, text: String },
}

/// Admits (or refuses) a CONNECT with the one admission decision. On plain MQTT the
/// org comes from the client id; a token is checked when the username announces one.
fn admit(
    ctx: &SessionCtx,
    peer: &Peer,
    client_id: &str,
    login: Option<&Login>,
) -> Result<Admitted, Refusal> {
    let org_tls = match &peer.org_tls {
        Some(t) => t.clone(),
        None => {
            let org = names::parse_client_id(client_id).map(|(org, _)| org);
            match org.map(|o| ctx.tls.get(&o)) {
                Some(Ok(Some(t))) => t,
                _ => {
                    // Answered as a wrong token would be, so the plain port does not
                    // tell which orgs exist.
                    return Err(Refusal {
                        stage: registry::live::Stage::Identity,
                        reason: format!("client id {client_id:?} names no org here"),
                        bad_credentials: login
                            .is_some_and(|l| l.username == admission::TOKEN_USERNAME),
                    });
                }
            }
        }
    };
    // On the plain listener the org is known only now: its network policy applies here.
    if peer.org_tls.is_none() {
        if let Err(refusal) = org_tls.network.check(peer.remote_addr.ip()) {
            crate::metrics::network_refused(org_tls.org.as_str(), refusal.label());
            return Err(Refusal {
                stage: registry::live::Stage::Identity,
                reason: format!(
                    "the org's network policy refuses {} ({})",
                    peer.remote_addr.ip(),
                    refusal.label()
                ),
                bad_credentials: false,
            });
        }
    }
    let facts = Facts {
        transport: peer.transport,
        cert: peer.cert.as_ref(),
        client_id: Some(client_id),
    };
    let token = login
        .filter(|l| l.username == admission::TOKEN_USERNAME)
        .map(|l| l.password.as_str());
    let verify = admission::presented_token(&ctx.registry, &org_tls.org, token);
    let (guard, org, ip) = (&ctx.guard, &org_tls.org, peer.remote_addr.ip());
    admission::decide(&org_tls.rules, &facts, move |identity| {
        // Too many wrong tokens for this identity or from this address: refused
        // without being checked until the window ends.
        if token.is_some() && guard.token_locked(org, identity, ip) {
            info!(%org, %identity, "token login refused: too many wrong tokens");
            return TokenCheck::Invalid;
        }
        let check = verify(identity);
        if check == TokenCheck::Invalid {
            guard.token_failed(org, identity, ip);
        }
        check
    })
}

/// Runs a session to its end. Never panics on client input; every exit path releases
/// the session's message state and its registry entry.
///
/// Not an `async fn`: an `async fn` keeps its arguments twice in its future (as given,
/// and as the body's locals), and this future is what every idle session carries; the
/// `async move` block below uses what it captured in place.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<S>(
    mut stream: S,
    peer: Peer,
    ctx: Arc<SessionCtx>,
) -> impl std::future::Future<Output = ()> + Send
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        let mut rbuf = BytesMut::with_capacity(1024);
        // The CONNECT and all that is decided from it, boxed: its locals (the decoded
        // CONNECT, the session record) are gone once it returns instead of riding along
        // in the task of every idle session. Destructured at once: a whole `Opened` kept
        // beside its parts would be carried twice.
        let Some(Opened {
            mut bridge,
            keep_alive,
            switch,
            will,
            will_delay,
            status,
            client_id,
            seq,
        }) = Box::pin(open(&mut stream, &mut rbuf, peer, &ctx)).await
        else {
            return;
        };
        let result = bridge
            .run(&mut stream, &mut rbuf, keep_alive, &switch)
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
        let org = bridge.principal.org.clone();
        let will = will.filter(|_| send_will);
        let mut delayed_will = None;
        if let Some(w) = will {
            if will_delay == 0 {
                publish_will(&ctx, &bridge.org_state, &org, *w);
            } else {
                delayed_will = Some(w);
            }
        }
        // Status events go where the session's rules say now (a custom policy may have
        // named another status topic while it was connected).
        let mut status = status;
        status.principal = bridge.principal.clone();
        let (code, reason) = close_code(&result);
        if let Some(event) = status.disconnect(code, &reason) {
            let _ = ctx.publish_own(&bridge.org_state, &org, OwnMessage::event(event));
        }
        let attachment = bridge.session.attachment();
        bridge.session.detach();
        let _ = stream.shutdown().await;
        ctx.sessions.remove(&org, &client_id, seq);
        switch.finish();
        if let Some(w) = delayed_will {
            // MQTT 5 3.1.3.2.2: published once the delay has passed (or the session
            // ended), unless a new connection to the session came first.
            let (ctx, org_state) = (ctx.clone(), bridge.org_state.clone());
            let span = tracing::Span::current();
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    tokio::time::sleep(Duration::from_secs(u64::from(will_delay))).await;
                    if attachment.resumed() {
                        info!("will not published: the session was resumed within the will delay");
                    } else {
                        publish_will(&ctx, &org_state, &org, *w);
                    }
                },
                span,
            ));
        }
        if matches!(
            result,
            Err(SessionError::OverLimit { .. }
                | SessionError::Denied(_)
                | SessionError::Protocol(_))
        ) {
            // Boxed: its 1 KiB scratch would otherwise be part of every session's future.
            Box::pin(linger(&mut stream)).await;
        }
    }
}

/// Publishes a session's will.
fn publish_will(
    ctx: &SessionCtx,
    org_state: &OrgMessages,
    org: &registry::OrgId,
    will: OwnMessage,
) {
    if let Err(refused) = ctx.publish_own(org_state, org, will) {
        crate::metrics::limit_refused(org.as_str(), refused.limit());
        info!(
            limit = refused.limit(),
            "will not published: over the org's limit"
        );
    }
}

/// How long a connection the broker refused mid-session is read (and its input
/// dropped) after its close was sent.
const LINGER: Duration = Duration::from_secs(2);

/// After a refusal with a reason (MQTT 5 DISCONNECT 0x93, 0x95, 0x87 …), the client
/// may still be writing what it sent before it read the reason. A socket closed with
/// bytes unread answers them with a TCP reset, which can destroy the DISCONNECT in
/// the client's receive buffer before it reads it: the close (TLS close_notify, TCP
/// FIN) is already sent, and the client's late bytes are read and dropped until it
/// closes too, for at most [`LINGER`].
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut scratch = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut scratch).await {
            if n == 0 {
                return;
            }
        }
    })
    .await;
}

/// A session past its CONNECT: what its bridge and its teardown need.
struct Opened {
    /// With the CONNACK (and any PUBRELs owed) waiting in its write buffer.
    bridge: Bridge,
    keep_alive: Duration,
    switch: Arc<KillSwitch>,
    will: Option<Box<OwnMessage>>,
    /// How long the will waits after the connection ends: the MQTT 5 Will Delay
    /// Interval, at most the session's expiry (`None`: never expires), in seconds.
    will_delay: u32,
    status: Box<StatusEvents>,
    client_id: String,
    /// The session's place in the session registry.
    seq: u64,
}

/// Reads the CONNECT, admits it, registers the session (taking over an older one),
/// attaches it to its message state and announces it. `None` when the connection
/// ends here (refused, or no valid CONNECT in time); the refusal has been written.
async fn open<S>(
    stream: &mut S,
    rbuf: &mut BytesMut,
    mut peer: Peer,
    ctx: &Arc<SessionCtx>,
) -> Option<Opened>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (version, packet) = match tokio::time::timeout(
        ctx.limits.connect_timeout,
        read_connect(
            &mut *stream,
            &mut *rbuf,
            ctx.limits.max_packet_size.min(MAX_CONNECT_BYTES),
        ),
    )
    .await
    {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            debug!(remote = %peer.remote_addr, cause = %e, "no valid CONNECT");
            return None;
        }
        Err(_) => {
            debug!(remote = %peer.remote_addr, cause = %SessionError::ConnectTimeout, "closing");
            return None;
        }
    };
    let Packet::Connect(connect, props, will, will_props, login) = packet else {
        return None;
    };
    let client_id = connect.client_id.clone();
    let decision = admit(ctx, &peer, &client_id, login.as_ref());
    peer.pending = None;
    let admitted = match decision {
        Ok(a) => a,
        Err(refusal) => {
            let packet = if refusal.bad_credentials {
                version.bad_credentials()
            } else {
                version.not_authorized()
            };
            crate::metrics::refused(refusal.stage);
            info!(
                client_id,
                stage = refusal.stage.as_str(),
                cause = %refusal.reason,
                next = crate::hints::connect_refusal_next_step(refusal.stage, refusal.bad_credentials),
                "CONNECT refused"
            );
            let _ = write_packets(&mut *stream, version, [packet]).await;
            return None;
        }
    };
    let principal = admitted.principal;
    let org = principal.org.clone();
    // An empty client id (admitted only where the org's custom topic policy takes any
    // client id): MQTT 3.1.1 (3.1.3-8) refuses it without clean session; otherwise the
    // broker assigns one (MQTT 5 tells the client in the CONNACK).
    let mut assigned = None;
    let client_id = if client_id.is_empty() {
        if version == Version::V4 && !connect.clean_session {
            info!("CONNECT refused: empty client id without clean session");
            let refused = Packet::ConnAck(
                ConnAck {
                    session_present: false,
                    code: ConnectReturnCode::ClientIdentifierNotValid,
                },
                None,
            );
            let _ = write_packets(&mut *stream, version, [refused]).await;
            return None;
        }
        let id = format!("certmq-{}", hex_id(&registry::seal::random_bytes::<12>()));
        assigned = Some(id.clone());
        id
    } else {
        client_id
    };
    // The TLS listener recorded the org at SNI; the plain one learns it only here (a
    // second record would repeat the field in every line of the span).
    if peer.org_tls.is_none() {
        tracing::Span::current().record("org", org.as_str());
    }
    // MQTT 5 Will Delay Interval (seconds).
    let will_delay = will_props
        .as_ref()
        .and_then(|p| p.delay_interval)
        .unwrap_or(0);
    let will = match will
        .map(|w| map_will(&principal, w, will_props))
        .transpose()
    {
        Ok(w) => w,
        Err(e) => {
            info!(client_id, cause = %e, "refused: will topic not allowed");
            let _ = write_packets(&mut *stream, version, [version.not_authorized()]).await;
            return None;
        }
    };

    let switch = Arc::new(KillSwitch::default());
    let transport = peer.transport;
    let cert = peer.cert.as_ref();
    let info = SessionInfo {
        client_id: client_id.clone(),
        org: org.clone(),
        kind: principal.identity.kind(),
        identity: principal.identity.clone(),
        auth: Auth::of(cert.is_some(), admitted.token_version.is_some()),
        transport,
        token_version: admitted.token_version,
        ca_id: cert.map(|c| c.ca_id.clone()).unwrap_or_default(),
        ca_fingerprint: cert.map(|c| c.ca_fingerprint.clone()).unwrap_or_default(),
        cert_serial: cert.map(|c| c.serial().to_owned()).unwrap_or_default(),
        cert_not_after: cert.map_or(time::OffsetDateTime::UNIX_EPOCH, |c| c.not_after),
        remote_addr: peer.remote_addr,
        protocol: version.label(transport).to_owned(),
        since: time::OffsetDateTime::now_utc(),
        node: ctx.node.clone(),
    };
    let since = info.since;
    // The same certificate from another address while its session is live: two
    // devices may hold one key pair (the inventory flags it).
    let took_over_from = cert.and_then(|c| {
        ctx.sessions
            .cert_and_addr(&org, &client_id)
            .filter(|(fp, addr)| {
                fp.as_deref() == Some(c.fingerprint.as_str()) && addr.ip() != peer.remote_addr.ip()
            })
            .map(|(_, addr)| addr.ip())
    });
    let seen = registry::devices::Admission {
        org: org.clone(),
        identity: principal.identity.clone(),
        client_id: client_id.clone(),
        addr: peer.remote_addr.ip(),
        cert: cert.map(|c| registry::devices::SeenCert {
            fingerprint_sha256: c.fingerprint.clone(),
            serial: c.serial().to_owned(),
            not_after: c.not_after,
            ca_id: c.ca_id.clone(),
        }),
        took_over_from,
    };
    let mut org_limits = crate::limits::LiveLimits::new(ctx.tls.clone(), org.clone());
    let max_connections = org_limits.get().max_connections as usize;
    let (seq, previous) =
        match ctx
            .sessions
            .register(info, peer.cert.clone(), switch.clone(), max_connections)
        {
            Ok(r) => r,
            Err(over) => {
                crate::metrics::limit_refused(org.as_str(), crate::limits::MAX_CONNECTIONS);
                info!(
                    client_id,
                    max = over.max,
                    "CONNECT refused: max_connections"
                );
                let _ =
                    write_packets(&mut *stream, version, [limits::over_connections(version)]).await;
                return None;
            }
        };
    ctx.registry.record_admission(seen);
    // In a cluster, a session with this client id on another node closes too.
    if let Some(c) = ctx.state.cluster() {
        c.taken_over(&org, &client_id, since);
    }
    if let Some(prev) = previous {
        // Takeover (docs/contract.md, 2.4): the old session closes and releases its link first.
        crate::metrics::kick(org.as_str(), CloseReason::TakenOver.label());
        prev.close(CloseReason::TakenOver);
        let _ = tokio::time::timeout(Duration::from_secs(5), prev.finished()).await;
    }

    tracing::Span::current().record("client_id", client_id.as_str());
    // Every session lives in the org's message state (see `state`): its subscriptions,
    // its queue and, for a persistent one, session-present come from there.
    let org_state = ctx.state.org(&org);
    let expiry = session_expiry(version, connect.clean_session, props.as_ref());
    // In a cluster, the session may be another node's (or have been, before it died).
    if let Some(c) = ctx.state.cluster() {
        c.before_attach(&org, &client_id, connect.clean_session)
            .await;
    }
    let attached = ctx
        .state
        .attach(&org_state, &client_id, connect.clean_session, expiry);
    let mut connack = Packet::ConnAck(
        ConnAck {
            session_present: attached.session_present,
            code: ConnectReturnCode::Success,
        },
        None,
    );
    limits::advertise(&mut connack, version, &mut org_limits);
    if let (Some(id), Version::V5, Packet::ConnAck(_, props)) = (assigned, version, &mut connack) {
        props
            .get_or_insert_with(Default::default)
            .assigned_client_identifier = Some(id);
    }
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
        ctx: ctx.clone(),
        session: attached.session,
        org_state: org_state.clone(),
        committed: ctx.state.committed(),
        held: Vec::new(),
        inbound_qos2: Default::default(),
        wbuf: BytesMut::new(),
        limits: ctx.limits.clone(),
        flow: ctx.pressure.flow(&org, &client_id, !connect.clean_session),
        counters,
        out_inflight: 0,
        out_window: bridge::out_window(props.as_ref()),
        out_max_packet: props
            .as_ref()
            .and_then(|p| p.max_packet_size)
            .and_then(|m| usize::try_from(m).ok()),
        held_read: false,
        quota: limits::Quota::new(org_limits),
        last_ack: tokio::time::Instant::now(),
    };
    if let Some(event) = status.connect() {
        let _ = ctx.publish_own(&org_state, &org, OwnMessage::event(event));
    }
    bridge.version.write(connack, &mut bridge.wbuf).ok()?;
    Some(Opened {
        bridge,
        keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
        switch,
        will: will.map(Box::new),
        will_delay: will_delay.min(expiry.unwrap_or(u32::MAX)),
        status: Box::new(status),
        client_id,
        seq,
    })
}

/// Lowercase hex of `bytes`.
fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The status event's CloseCode (an MQTT v5 reason code) and reason text.
fn close_code(result: &Result<Ending, SessionError>) -> (u8, String) {
    match result {
        Ok(Ending::Client { .. }) => (0x00, "The client disconnected".into()),
        Ok(Ending::Closed(r)) => (r.number(), r.text().into()),
        Err(SessionError::KeepAlive) => (0x8D, "Keep alive timeout".into()),
        Err(SessionError::Denied(d)) => (0x87, format!("Not authorized: {d}")),
        Err(SessionError::OverLimit { limit, text }) => {
            let code = match *limit {
                crate::limits::MAX_MESSAGE_BYTES => 0x95,
                crate::limits::MAX_INFLIGHT => 0x93,
                _ => 0x97,
            };
            (code, format!("Over a limit: {text}"))
        }
        Err(SessionError::Protocol(p)) => (0x82, format!("Protocol error: {p}")),
        Err(SessionError::Codec(c)) => (0x81, format!("Malformed packet: {c}")),
        Err(e @ (SessionError::Eof | SessionError::Io(_))) => {
            (0x80, format!("Connection lost: {e}"))
        }
        Err(e) => (0x80, e.to_string()),
    }
}

/// The will as the broker publishes it: internal topic, the client's QoS, retain flag
/// and (MQTT 5) message properties.
fn map_will(
    principal: &Principal,
    w: LastWill,
    props: Option<LastWillProperties>,
) -> Result<OwnMessage, String> {
    let topic = std::str::from_utf8(&w.topic).map_err(|_| "will topic is not UTF-8".to_string())?;
    let internal = principal.publish_topic(topic).map_err(|e| e.0)?;
    let props = props.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    Ok(OwnMessage {
        topic: Bytes::from(internal),
        payload: w.message,
        qos: w.qos as u8,
        retain: w.retain,
        props,
    })
}

/// How long a session outlives its connection: MQTT 3.1.1 clean-session 0 forever
/// (`None`), clean-session 1 not at all (`Some(0)`); MQTT 5 by its session expiry
/// interval (absent: 0; `0xFFFFFFFF`: forever).
fn session_expiry(version: Version, clean: bool, props: Option<&ConnectProperties>) -> Option<u32> {
    match version {
        Version::V4 if clean => Some(0),
        Version::V4 => None,
        Version::V5 => match props.and_then(|p| p.session_expiry_interval).unwrap_or(0) {
            u32::MAX => None,
            s => Some(s),
        },
    }
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
