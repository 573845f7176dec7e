//! The running half of a session: packets from the client's socket are authorized,
//! rewritten to internal topics and routed through the org's message state
//! (`state`), which matches them against every session's subscriptions and queues
//! them; the session's own queue is delivered to its socket, rewritten back to the
//! client's view. Flow control (`flow.rs`) paces the reads; the kill switch closes the
//! session from outside.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{SessionCtx, SessionError, SessionLimits};
use crate::acl::Principal;
use crate::cluster::Done;
use crate::engine::codec::{publish_meta, CodecError, Version};
use crate::engine::packet::{
    ConnectProperties, DisconnectReasonCode, Packet, PingResp, PubAck, PubAckReason, PubComp,
    PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, RetainForwardRule, SubAck,
    SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use crate::flow::Flow;
use crate::sessions::{CloseReason, KillSwitch};
use crate::state::{opts, Acked, OrgMessages, SendRetained, SessionHandle, StateLimits, Ticket};

/// Most bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// Free space below which the read buffer gets a new chunk.
const MIN_READ: usize = 4 * 1024;
/// What an idle session reads into while it waits (it holds no read buffer).
const IDLE_READ: usize = 256;
/// Deliveries written to a client and not yet acknowledged by it, at most.
const MAX_INFLIGHT: usize = 1000;

/// How many QoS 1/2 deliveries may be written to a client and not yet acknowledged:
/// [`MAX_INFLIGHT`], or fewer when an MQTT 5 client's CONNECT asks for fewer (Receive
/// Maximum, MQTT 5 3.1.2.11.3).
pub(super) fn out_window(props: Option<&ConnectProperties>) -> usize {
    props
        .and_then(|p| p.receive_maximum)
        .map_or(MAX_INFLIGHT, |r| usize::from(r).clamp(1, MAX_INFLIGHT))
}

/// How a session ended without an I/O or protocol error.
pub(super) enum Ending {
    /// The client sent DISCONNECT; `with_will` for v5 reason 0x04.
    Client { with_will: bool },
    /// The broker closed it.
    Closed(CloseReason),
}

/// The running half of a session: socket on one side, message state on the other.
pub(super) struct Bridge {
    pub(super) version: Version,
    pub(super) principal: Principal,
    pub(super) ctx: Arc<SessionCtx>,
    /// The session in the message state: its subscriptions and its queue.
    pub(super) session: SessionHandle,
    /// The org's message state.
    pub(super) org_state: Arc<OrgMessages>,
    /// The last durable ticket of the message state.
    pub(super) committed: tokio::sync::watch::Receiver<Ticket>,
    /// Acknowledgements waiting for their ticket (and, in a cluster, for the message
    /// to be in the cluster's stream), in the order they are due.
    pub(super) held: Vec<(Ticket, Option<Arc<Done>>, Packet)>,
    /// QoS 2 packet ids from the client not yet released (a resend is a duplicate).
    pub(super) inbound_qos2: HashSet<u16>,
    pub(super) wbuf: BytesMut,
    pub(super) limits: SessionLimits,
    pub(super) flow: Flow,
    /// QoS 1/2 deliveries written to the client and not yet acknowledged by it.
    pub(super) out_inflight: usize,
    /// How many of those there may be ([`out_window`]).
    pub(super) out_window: usize,
    /// The largest packet the client accepts (MQTT 5 Maximum Packet Size); a delivery
    /// that would be larger is dropped, as MQTT 5 3.1.2.11.4 says.
    pub(super) out_max_packet: Option<usize>,
    /// The org's per-session limits and what this session holds against them
    /// (`session/limits.rs`).
    pub(super) quota: super::limits::Quota,
    /// A PUBLISH at the head of the read buffer waits for the org's window.
    pub(super) held_read: bool,
    /// When the client last acknowledged a delivery.
    pub(super) last_ack: Instant,
    pub(super) counters: crate::metrics::SessionCounters,
}

impl Bridge {
    pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        rbuf: &mut BytesMut,
        keep_alive: Duration,
        switch: &KillSwitch,
    ) -> Result<Ending, SessionError> {
        // The CONNACK is already in the write buffer.
        self.inbound_qos2 = self.session.inbound_qos2();
        // PUBRELs owed from before the reconnect, then the queue.
        for pkid in self.session.pending_releases() {
            let rel = PubRel {
                pkid,
                reason: PubRelReason::Success,
            };
            self.version
                .write(Packet::PubRel(rel, None), &mut self.wbuf)?;
        }
        self.flush(stream).await?;
        // MQTT: the server closes after 1.5 × keep-alive without a packet; 0 disables.
        let ka_limit = (!keep_alive.is_zero()).then(|| keep_alive + keep_alive / 2);
        let mut last_rx = Instant::now();
        // A persistent session resumed in custom topic mode keeps only what the
        // policy allows now.
        Box::pin(self.prune_subscriptions()).await;
        // Packets may already be buffered behind the CONNECT.
        if let Some(end) = Box::pin(self.inbound(rbuf, stream)).await? {
            return Ok(end);
        }
        Box::pin(self.flush_timed(stream)).await?;
        loop {
            // Read straight into the packet buffer (no per-session scratch), into the
            // space left in its current allocation. Decoded payloads are slices of
            // that allocation and queues keep them, so asking for a full chunk of free
            // space on every read would start a new allocation per read: a client
            // sending one small message per read then pinned a whole chunk per message
            // (RSS grew to ~1 GB at 20k msgs/s). With nothing left to decode the
            // buffer is let go, and the next one is taken only when bytes arrive: an
            // idle session holds no read buffer.
            let slice = READ_CHUNK;
            if rbuf.is_empty() && rbuf.capacity() > 0 {
                *rbuf = BytesMut::new();
            }
            // A subscriber over its window that acknowledges nothing holds its org's
            // publishers: after the write timeout it is closed as a slow consumer.
            let stuck_deadline = self
                .flow
                .over()
                .then(|| self.last_ack + self.limits.write_timeout);
            let ka_deadline = ka_limit.map(|l| last_rx + l);
            // The arms' work is boxed: its futures are large and live only while it
            // runs, and everything inline here is carried by every idle session.
            tokio::select! {
                reason = switch.closed() => {
                    let budget = if reason == CloseReason::Shutdown {
                        // A graceful drain: acknowledgements owed for messages on their
                        // way to the disk are written once they are there.
                        let drain = self.limits.drain_timeout;
                        let _ = tokio::time::timeout(drain, self.release_all_held()).await;
                        drain
                    } else {
                        Duration::from_secs(1)
                    };
                    if let Some(p) = self.version.disconnect(reason.code(), reason.text()) {
                        self.version.write(p, &mut self.wbuf)?;
                    }
                    // What is buffered reaches the client before the socket closes
                    // (3.1.1 has no DISCONNECT from the server: this is all it gets).
                    let _ = tokio::time::timeout(budget, self.flush(stream)).await;
                    return Ok(Ending::Closed(reason));
                }
                // A PUBLISH waiting for credit (a subscriber of the org is behind, see
                // flow.rs) leaves the socket unread behind it.
                n = async {
                    if rbuf.capacity() == 0 {
                        // Idle: wait in a small scratch, and take a buffer for what
                        // follows only once bytes arrive. (Waiting for the socket to
                        // become readable instead would miss records TLS has already
                        // read from it and not yet decrypted.)
                        let mut first = [0u8; IDLE_READ];
                        let n = stream.read(&mut first).await?;
                        rbuf.reserve(slice);
                        rbuf.extend_from_slice(&first[..n]);
                        return std::io::Result::Ok(n);
                    }
                    if rbuf.capacity() - rbuf.len() < MIN_READ {
                        rbuf.reserve(slice);
                    }
                    let mut limited = bytes::BufMut::limit(&mut *rbuf, slice);
                    stream.read_buf(&mut limited).await
                }, if !self.held_read => {
                    let n = n?;
                    if n == 0 {
                        return Err(SessionError::Eof);
                    }
                    last_rx = Instant::now();
                    if let Some(end) = Box::pin(self.inbound(rbuf, stream)).await? {
                        return Ok(end);
                    }
                    Box::pin(self.flush_timed(stream)).await?;
                }
                // The org's window is spent: woken by the delivery that frees it.
                _ = self.flow.wait(), if self.held_read => {
                    self.held_read = false;
                    if let Some(end) = Box::pin(self.inbound(rbuf, stream)).await? {
                        return Ok(end);
                    }
                    Box::pin(self.flush_timed(stream)).await?;
                }
                _ = sleep_until_opt(stuck_deadline) => return Err(SessionError::SlowConsumer),
                // The first held acknowledgement waits for the cluster's stream (or,
                // forwarded already, is due now).
                _ = head_forwarded(&self.held), if self.forward_due() => {
                    self.release_held()?;
                    Box::pin(self.flush_timed(stream)).await?;
                }
                // Acknowledgements waiting for their messages to reach the disk.
                r = self.committed.changed(), if !self.held.is_empty() => {
                    if r.is_err() {
                        return Err(SessionError::Link("the message-state writer stopped".into()));
                    }
                    self.release_held()?;
                    Box::pin(self.flush_timed(stream)).await?;
                }
                // The session's queue has deliveries.
                _ = self.session.notify().notified() => {
                    self.pull()?;
                    Box::pin(self.flush_timed(stream)).await?;
                }
                _ = sleep_until_opt(ka_deadline) => return Err(SessionError::KeepAlive),
                // The org changed and the session is still admitted: its topic rules
                // may have changed.
                p = switch.updated() => {
                    if self.principal.is_custom() != p.is_custom() {
                        crate::metrics::kick(p.org.as_str(), CloseReason::PolicyChanged.label());
                        switch.close(CloseReason::PolicyChanged);
                        continue;
                    }
                    if p != self.principal {
                        self.principal = p;
                        Box::pin(self.prune_subscriptions()).await;
                    }
                }
            }
        }
    }

    /// Custom topic mode: removes the subscriptions the org's topic policy no longer
    /// allows this client (each filter is checked again as the client sent it), as
    /// an UNSUBSCRIBE would. Watson mode's rules do not change, so nothing to do there.
    async fn prune_subscriptions(&mut self) {
        if !self.principal.is_custom() {
            return;
        }
        let gone: Vec<String> = self
            .session
            .filters()
            .into_iter()
            .filter(|internal| {
                let allowed = self
                    .principal
                    .client_filter(internal)
                    .and_then(|f| self.principal.subscribe_filter(&f).ok());
                allowed.as_deref() != Some(internal.as_str())
            })
            .collect();
        if gone.is_empty() {
            return;
        }
        for f in &gone {
            self.flow.unsubscribed(f);
            self.quota.unsubscribed(f);
        }
        info!(filters = ?gone, "subscriptions removed: the org's topic policy no longer allows them");
        let ticket = self.session.unsubscribe(&gone);
        self.ctx.state.durable(ticket).await;
    }

    /// Flushes within the write timeout; a client that takes longer is a slow consumer.
    async fn flush_timed<S: AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<(), SessionError> {
        match tokio::time::timeout(self.limits.write_timeout, self.flush(stream)).await {
            Ok(r) => r,
            Err(_) => Err(SessionError::SlowConsumer),
        }
    }

    /// Writes an acknowledgement to the client once `ticket` is durable, keeping the
    /// order of acknowledgements.
    /// (A PUBLISH counts against the in-flight limit until its acknowledgement is
    /// written.)
    fn ack_when(
        &mut self,
        ticket: Ticket,
        forwarded: Option<Arc<Done>>,
        packet: Packet,
    ) -> Result<(), SessionError> {
        let due = self.held.last().map_or(ticket, |(t, _, _)| ticket.max(*t));
        let ready = forwarded.as_ref().is_none_or(|d| d.ready());
        if self.held.is_empty() && ready && due <= *self.committed.borrow() {
            self.quota.acknowledged(&packet);
            self.version.write(packet, &mut self.wbuf)?;
        } else {
            self.held.push((due, forwarded, packet));
        }
        Ok(())
    }

    /// Whether the first held acknowledgement waits for its forward to the cluster,
    /// or has it and is durable (to be written now).
    fn forward_due(&self) -> bool {
        self.held.first().is_some_and(|(t, d, _)| {
            d.as_ref()
                .is_some_and(|d| !d.ready() || *t <= *self.committed.borrow())
        })
    }

    /// Writes the held acknowledgements whose tickets are durable now.
    fn release_held(&mut self) -> Result<(), SessionError> {
        let committed = *self.committed.borrow_and_update();
        let ready = self
            .held
            .iter()
            .take_while(|(t, d, _)| *t <= committed && d.as_ref().is_none_or(|d| d.ready()))
            .count();
        for (_, _, p) in self.held.drain(..ready) {
            self.quota.acknowledged(&p);
            self.version.write(p, &mut self.wbuf)?;
        }
        Ok(())
    }

    /// Waits until every held acknowledgement is durable and written to the buffer
    /// (or the message-state writer stops).
    async fn release_all_held(&mut self) {
        while !self.held.is_empty() {
            let forwarding = self
                .held
                .first()
                .and_then(|(_, d, _)| d.clone())
                .filter(|d| !d.ready());
            match forwarding {
                Some(d) => d.wait().await,
                None => {
                    if self.committed.changed().await.is_err() {
                        return;
                    }
                }
            }
            if self.release_held().is_err() {
                return;
            }
        }
    }

    /// Writes the session's next deliveries, as many as its window allows.
    fn pull(&mut self) -> Result<(), SessionError> {
        let room = self.out_window.saturating_sub(self.out_inflight);
        if room == 0 {
            return Ok(());
        }
        let taken = self.session.take(room);
        if taken.len() == room {
            // The window may not be the limit (QoS 0 takes none of it): come back for
            // the rest once this batch is written.
            self.session.notify().notify_one();
        }
        for d in taken {
            let mut publish = d.publish;
            let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
            let Some(t) = self.principal.outbound_topic(topic) else {
                // Cannot happen: subscriptions only reach the client's own org.
                warn!(topic, "dropping a message outside the client's topic space");
                continue;
            };
            publish.topic = Bytes::from(t);
            let start = self.wbuf.len();
            self.version
                .write(Packet::Publish(publish, d.props), &mut self.wbuf)?;
            if let Some(max) = self.out_max_packet.filter(|m| self.wbuf.len() - start > *m) {
                // Over the client's Maximum Packet Size: not sent, and done with as if
                // it had been delivered.
                debug!(
                    size = self.wbuf.len() - start,
                    max, "delivery dropped: larger than the client's maximum packet size"
                );
                self.wbuf.truncate(start);
                if d.pkid != 0 {
                    self.session.acked(d.pkid, false);
                }
                self.flow.delivered();
                continue;
            }
            self.counters.deliveries.increment(1);
            if self.wbuf.get(start).is_some_and(|b| b & 0b0110 != 0) {
                self.out_inflight += 1;
            } else {
                // QoS 0 has no acknowledgement: delivered once written.
                self.flow.delivered();
            }
        }
        Ok(())
    }

    async fn flush<S: AsyncWrite + Unpin>(&mut self, stream: &mut S) -> Result<(), SessionError> {
        if !self.wbuf.is_empty() {
            stream.write_all(&self.wbuf).await?;
            stream.flush().await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Closes the session over an org limit the message state enforces (retained
    /// messages): MQTT 5 DISCONNECT 0x97 first.
    async fn over_limit<S: AsyncWrite + Unpin>(
        &mut self,
        limit: &'static str,
        stream: &mut S,
    ) -> Result<Option<Ending>, SessionError> {
        crate::metrics::limit_refused(self.principal.org.as_str(), limit);
        let text = format!("over the org's {limit} limit");
        // The connection span carries the org and client id.
        info!(limit, "closing: over a limit");
        if let Some(p) = self
            .version
            .disconnect(DisconnectReasonCode::QuotaExceeded, &text)
        {
            self.version.write(p, &mut self.wbuf)?;
            self.flush(stream).await?;
        }
        Err(SessionError::OverLimit { limit, text })
    }

    /// Decodes and handles every complete packet in `rbuf`; the answers are left in
    /// the write buffer for the caller to flush.
    async fn inbound<S: AsyncWrite + Unpin>(
        &mut self,
        rbuf: &mut BytesMut,
        stream: &mut S,
    ) -> Result<Option<Ending>, SessionError> {
        loop {
            // A PUBLISH (type 3) needs the org's credit (flow.rs); without it, it stays
            // unread — and unacknowledged — until a delivery brings some.
            if rbuf.first().is_some_and(|b| b >> 4 == 3) && !self.flow.may_publish() {
                self.held_read = true;
                return Ok(None);
            }
            let meta = publish_meta(rbuf);
            let packet = match self.version.read(rbuf, self.limits.max_packet_size) {
                Ok(p) => p,
                Err(CodecError::Incomplete) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            match packet {
                Packet::Publish(mut publish, mut props) => {
                    // Subscription identifiers are the broker's to set (a client may
                    // not send them, MQTT 5 3.3.4): never passed on as sent.
                    if let Some(p) = props.as_mut() {
                        p.subscription_identifiers.clear();
                    }
                    if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                        // certmq announces no Topic Alias Maximum, so any alias is
                        // invalid (MQTT 5 3.3.2.3.4): DISCONNECT 0x94, then close.
                        let text = "topic aliases are not supported";
                        if let Some(p) = self
                            .version
                            .disconnect(DisconnectReasonCode::TopicAliasInvalid, text)
                        {
                            self.version.write(p, &mut self.wbuf)?;
                            self.flush(stream).await?;
                        }
                        return Err(SessionError::Protocol(text));
                    }
                    self.publish_within_limits(&publish, stream).await?;
                    let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
                    match self.principal.publish_topic(topic) {
                        Ok(internal) => {
                            publish.topic = Bytes::from(internal);
                        }
                        Err(denied) => {
                            // An unauthorized PUBLISH closes the connection.
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
                    let (qos, pkid) = meta.unwrap_or((0, 0));
                    if qos == 2 && self.inbound_qos2.contains(&pkid) {
                        // A resend of a QoS 2 message already taken: acknowledge it
                        // again, route it once.
                        self.quota.released_one();
                        let rec = PubRec {
                            pkid,
                            reason: PubRecReason::Success,
                        };
                        self.held_ack(Packet::PubRec(rec, None))?;
                        continue;
                    }
                    let extra = if qos == 2 {
                        self.inbound_qos2.insert(pkid);
                        self.session.record_inbound(pkid)
                    } else {
                        Vec::new()
                    };
                    self.flow
                        .published(std::str::from_utf8(&publish.topic).unwrap_or_default());
                    let limits = StateLimits::from(self.quota.limits.get());
                    let routed = self.ctx.state.publish_tracked(
                        &self.org_state,
                        self.session.client(),
                        &publish,
                        qos,
                        props.as_ref(),
                        &limits,
                        extra,
                    );
                    let (ticket, forwarded) = match routed {
                        Ok(t) => t,
                        Err(refused) => return self.over_limit(refused.limit(), stream).await,
                    };
                    // The acknowledgement waits until the message is on disk where it
                    // must be (a persistent subscriber, a retained message).
                    match qos {
                        1 => {
                            let ack = PubAck {
                                pkid,
                                reason: PubAckReason::Success,
                            };
                            self.ack_when(ticket, forwarded, Packet::PubAck(ack, None))?;
                        }
                        2 => {
                            let rec = PubRec {
                                pkid,
                                reason: PubRecReason::Success,
                            };
                            self.ack_when(ticket, forwarded, Packet::PubRec(rec, None))?;
                        }
                        _ => {}
                    }
                }
                Packet::Subscribe(sub, props) => {
                    // MQTT 5 subscription identifier (1 to 268,435,455), returned with
                    // every delivery through these subscriptions.
                    let id = props
                        .and_then(|p| p.id)
                        .and_then(|id| u32::try_from(id).ok())
                        .unwrap_or(0);
                    let mut codes = Vec::with_capacity(sub.filters.len());
                    let mut granted = Vec::new();
                    for f in sub.filters {
                        match self.principal.subscribe_filter(&f.path) {
                            Ok(internal) => {
                                if let Some(refused) = self.quota.subscribe(&internal) {
                                    codes.push(refused);
                                    continue;
                                }
                                self.flow.subscribed(&internal);
                                let qos = f.qos as u8;
                                codes.push(granted_code(qos));
                                let mut sub = qos;
                                if f.nolocal {
                                    sub |= opts::NO_LOCAL;
                                }
                                if f.preserve_retain {
                                    sub |= opts::RETAIN_AS_PUBLISHED;
                                }
                                let send = match f.retain_forward_rule {
                                    RetainForwardRule::OnEverySubscribe => SendRetained::Always,
                                    RetainForwardRule::OnNewSubscribe => SendRetained::IfNew,
                                    RetainForwardRule::Never => SendRetained::Never,
                                };
                                granted.push((internal, sub, send, id));
                            }
                            Err(denied) => {
                                debug!(cause = %denied, "subscription refused");
                                codes.push(self.version.sub_refused());
                            }
                        }
                    }
                    // Durable (for a persistent session) before the SUBACK; retained
                    // messages are queued after it.
                    let ticket = self.session.subscribe(&granted);
                    self.ctx.state.durable(ticket).await;
                    // In a cluster: once other nodes' publishes reach this node.
                    if let Some(c) = self.ctx.state.cluster() {
                        c.interest_ready().await;
                    }
                    let ack = SubAck {
                        pkid: sub.pkid,
                        return_codes: codes,
                    };
                    self.held_ack(Packet::SubAck(ack, None))?;
                    self.flush(stream).await?;
                    self.pull()?;
                }
                Packet::Unsubscribe(mut unsub, _props) => {
                    // A filter this client could never have subscribed maps to one that
                    // matches nothing.
                    for f in &mut unsub.filters {
                        *f = self.principal.subscribe_filter(f).unwrap_or_else(|_| {
                            format!("{}$none", crate::acl::tenant_prefix(&self.principal.org))
                        });
                        self.flow.unsubscribed(f);
                        self.quota.unsubscribed(f);
                    }
                    let ticket = self.session.unsubscribe(&unsub.filters);
                    self.ctx.state.durable(ticket).await;
                    let ack = UnsubAck {
                        pkid: unsub.pkid,
                        reasons: vec![UnsubAckReason::Success; unsub.filters.len()],
                    };
                    self.held_ack(Packet::UnsubAck(ack, None))?;
                }
                Packet::Disconnect(d, props) => {
                    // MQTT 5: the DISCONNECT may change the session's expiry interval.
                    if let Some(e) = props.and_then(|p| p.session_expiry_interval) {
                        self.session.set_expiry((e != u32::MAX).then_some(e));
                    }
                    let with_will =
                        d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                    return Ok(Some(Ending::Client { with_will }));
                }
                Packet::Connect(..) => return Err(SessionError::Protocol("second CONNECT")),
                p @ (Packet::PubAck(..) | Packet::PubRec(..)) => {
                    // The client acknowledged one of our QoS 1/2 deliveries: it has it
                    // (flow.rs counts it off this subscriber's window).
                    self.flow.delivered();
                    self.last_ack = Instant::now();
                    self.out_inflight = self.out_inflight.saturating_sub(1);
                    let (pkid, rec) = match p {
                        Packet::PubRec(a, _) => (a.pkid, true),
                        Packet::PubAck(a, _) => (a.pkid, false),
                        _ => (0, false),
                    };
                    if self.session.acked(pkid, rec) == Acked::Release {
                        let rel = PubRel {
                            pkid,
                            reason: PubRelReason::Success,
                        };
                        self.version
                            .write(Packet::PubRel(rel, None), &mut self.wbuf)?;
                    }
                    self.pull()?;
                }
                Packet::PubComp(c, _) => {
                    self.session.completed(c.pkid);
                }
                Packet::PubRel(r, _) => {
                    // The client releases a QoS 2 message it sent (routed when it
                    // arrived, so delivered once however often it was resent).
                    self.inbound_qos2.remove(&r.pkid);
                    self.session.released_inbound(r.pkid);
                    let comp = PubComp {
                        pkid: r.pkid,
                        reason: PubCompReason::Success,
                    };
                    self.held_ack(Packet::PubComp(comp, None))?;
                }
                Packet::PingReq(_) => {
                    self.version
                        .write(Packet::PingResp(PingResp), &mut self.wbuf)?;
                }
                _ => {
                    return Err(SessionError::Protocol(
                        "unexpected packet type from a client",
                    ))
                }
            }
        }
    }

    /// An answer that needs nothing on disk itself, but keeps its place behind the
    /// acknowledgements still waiting for theirs.
    fn held_ack(&mut self, packet: Packet) -> Result<(), SessionError> {
        self.ack_when(0, None, packet)
    }
}

/// The SUBACK code granting `qos`.
fn granted_code(qos: u8) -> SubscribeReasonCode {
    match qos {
        0 => SubscribeReasonCode::QoS0,
        1 => SubscribeReasonCode::QoS1,
        _ => SubscribeReasonCode::QoS2,
    }
}

/// Waits until the first held acknowledgement's message is in the cluster's stream
/// (or its deadline passes).
async fn head_forwarded(held: &[(Ticket, Option<Arc<Done>>, Packet)]) {
    match held.first().and_then(|(_, d, _)| d.clone()) {
        Some(d) => d.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
