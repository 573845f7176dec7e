//! The running half of a session: packets from the client's socket are authorized,
//! rewritten to internal topics and sent to the engine; the engine's deliveries are
//! rewritten back to the client's view and written to the socket. Flow control
//! (`flow.rs`) paces the reads; the kill switch closes the session from outside.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{SessionCtx, SessionError, SessionLimits};
use crate::acl::Principal;
use crate::engine::codec::{publish_meta, CodecError, Version};
use crate::engine::packet::{
    DisconnectReasonCode, Filter, Packet, PingResp, PubComp, PubCompReason, PubRec, PubRecReason,
    PubRel, PubRelReason, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use crate::engine::{Link, Outbound};
use crate::flow::Flow;
use crate::sessions::{CloseReason, KillSwitch};
use crate::state::{Acked, OrgMessages, PersistentSession, Ticket};

/// Deliveries of a persistent session written to its client and not yet acknowledged
/// (the engine bounds clean sessions' own).
const MAX_INFLIGHT: usize = 1000;

/// Most bytes read from a socket at once.
const READ_CHUNK: usize = 16 * 1024;
/// Free space below which the read buffer gets a new chunk.
const MIN_READ: usize = 4 * 1024;

/// How a session ended without an I/O or protocol error.
pub(super) enum Ending {
    /// The client sent DISCONNECT; `with_will` for v5 reason 0x04.
    Client { with_will: bool },
    /// The broker closed it.
    Closed(CloseReason),
}

/// The next engine delivery, or never when there is no link yet.
async fn next_notification(link: &mut Option<Link>) -> Result<Option<Outbound>, SessionError> {
    match link {
        Some(l) => l
            .next()
            .await
            .map_err(|e| SessionError::Link(e.to_string())),
        None => std::future::pending().await,
    }
}

/// The running half of a session: socket on one side, engine link on the other.
pub(super) struct Bridge {
    pub(super) version: Version,
    pub(super) principal: Principal,
    pub(super) ctx: Arc<SessionCtx>,
    pub(super) client_id: String,
    /// The engine link (always clean), opened on first need.
    pub(super) link: Option<Link>,
    /// The persistent session, when this is one: its deliveries come from the message
    /// state, not the engine.
    pub(super) persistent: Option<PersistentSession>,
    /// The org's message state (retained, persistent sessions).
    pub(super) org_state: Arc<OrgMessages>,
    /// The last durable ticket of the message state.
    pub(super) committed: tokio::sync::watch::Receiver<Ticket>,
    /// Packet id of a PUBLISH from the client → the ticket its PUBACK/PUBREC waits for.
    pub(super) gates: HashMap<u16, Ticket>,
    /// Acknowledgements waiting for their ticket, in the order they are due.
    pub(super) held: Vec<(Ticket, Packet)>,
    /// QoS 2 packet ids from the client not yet released (a resend is a duplicate).
    pub(super) inbound_qos2: HashSet<u16>,
    /// Those of them the engine link has (it answers their PUBREL itself).
    pub(super) engine_qos2: HashSet<u16>,
    /// SUBSCRIBE packet id → per-filter refusal code (None = forwarded to the engine).
    pub(super) pending_subs: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    pub(super) wbuf: BytesMut,
    pub(super) limits: SessionLimits,
    pub(super) flow: Flow,
    /// QoS 1/2 deliveries written to the client and not yet acknowledged by it.
    pub(super) out_inflight: usize,
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
        connack: Packet,
        keep_alive: Duration,
        switch: &KillSwitch,
    ) -> Result<Ending, SessionError> {
        self.version.write(connack, &mut self.wbuf)?;
        if let Some(p) = &self.persistent {
            self.inbound_qos2 = p.inbound_qos2();
            // PUBRELs owed from before the reconnect, then the queue.
            for pkid in p.pending_releases() {
                let rel = PubRel {
                    pkid,
                    reason: PubRelReason::Success,
                };
                self.version
                    .write(Packet::PubRel(rel, None), &mut self.wbuf)?;
            }
        }
        self.flush(stream).await?;
        // MQTT: the server closes after 1.5 × keep-alive without a packet; 0 disables.
        let ka_limit = (!keep_alive.is_zero()).then(|| keep_alive + keep_alive / 2);
        let mut last_rx = Instant::now();
        // Packets may already be buffered behind the CONNECT.
        if let Some(end) = self.inbound(rbuf, stream).await? {
            return Ok(end);
        }
        loop {
            let engine_behind = self
                .link
                .as_ref()
                .is_some_and(|l| l.queued() >= self.limits.max_queued_packets);
            // A PUBLISH waits for credit (a subscriber of the org is behind, see
            // flow.rs, or the router is): the socket waits behind it.
            let paused = engine_behind || self.held_read;
            // Read straight into the packet buffer (no per-session scratch: idle sessions
            // stay small), into the space left in its current allocation. Decoded
            // payloads are slices of that allocation and the engine keeps them in its
            // log, so asking for a full chunk of free space on every read would start a
            // new allocation per read: a client sending one small message per read then
            // pinned a whole chunk per message (RSS grew to ~1 GB at 20k msgs/s).
            let slice = READ_CHUNK;
            if rbuf.capacity() - rbuf.len() < MIN_READ {
                rbuf.reserve(slice);
            }
            // A subscriber over its window that acknowledges nothing holds its org's
            // publishers: after the write timeout it is closed as a slow consumer.
            let stuck_deadline = self
                .flow
                .over()
                .then(|| self.last_ack + self.limits.write_timeout);
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
                }
                // The engine has not taken this session's packets yet (look again in a
                // moment), or the org's window is spent (woken by the next delivery).
                _ = async {
                    if engine_behind {
                        tokio::time::sleep(Duration::from_millis(1)).await
                    } else {
                        self.flow.wait().await
                    }
                }, if paused => {
                    if self.held_read {
                        self.held_read = false;
                        if let Some(end) = self.inbound(rbuf, stream).await? {
                            return Ok(end);
                        }
                    }
                }
                _ = sleep_until_opt(stuck_deadline) => return Err(SessionError::SlowConsumer),
                // Acknowledgements waiting for their messages to reach the disk.
                r = self.committed.changed(), if !self.held.is_empty() => {
                    if r.is_err() {
                        return Err(SessionError::Link("the message-state writer stopped".into()));
                    }
                    self.release_held()?;
                    self.flush_timed(stream).await?;
                }
                // The persistent session has deliveries.
                _ = notified(&self.persistent) => {
                    self.pull()?;
                    self.flush_timed(stream).await?;
                }
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
                    self.flush_timed(stream).await?;
                    if wake {
                        if let Some(l) = &self.link {
                            l.wake().await.map_err(|e| SessionError::Link(e.to_string()))?;
                        }
                    }
                }
                _ = sleep_until_opt(ka_deadline) => return Err(SessionError::KeepAlive),
            }
        }
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
    fn ack_when(&mut self, ticket: Ticket, packet: Packet) -> Result<(), SessionError> {
        let due = self.held.last().map_or(ticket, |(t, _)| ticket.max(*t));
        if self.held.is_empty() && due <= *self.committed.borrow() {
            self.version.write(packet, &mut self.wbuf)?;
        } else {
            self.held.push((due, packet));
        }
        Ok(())
    }

    /// Writes the held acknowledgements whose tickets are durable now.
    fn release_held(&mut self) -> Result<(), SessionError> {
        let committed = *self.committed.borrow_and_update();
        let ready = self
            .held
            .iter()
            .take_while(|(t, _)| *t <= committed)
            .count();
        for (_, p) in self.held.drain(..ready) {
            self.version.write(p, &mut self.wbuf)?;
        }
        Ok(())
    }

    /// Writes the persistent session's next deliveries, as many as its window allows.
    fn pull(&mut self) -> Result<(), SessionError> {
        let Some(p) = &self.persistent else {
            return Ok(());
        };
        let room = MAX_INFLIGHT.saturating_sub(self.out_inflight);
        if room == 0 {
            return Ok(());
        }
        for d in p.take(room) {
            let mut publish = d.publish;
            let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
            let Some(t) = self.principal.outbound_topic(topic) else {
                warn!(topic, "dropping a message outside the client's topic space");
                continue;
            };
            publish.topic = Bytes::from(t);
            self.counters.deliveries.increment(1);
            let start = self.wbuf.len();
            self.version
                .write(Packet::Publish(publish, d.props), &mut self.wbuf)?;
            if self.wbuf.get(start).is_some_and(|b| b & 0b0110 != 0) {
                self.out_inflight += 1;
            } else {
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

    /// Encodes one engine delivery for the client. Returns true when the engine
    /// paused this session and must be woken after the write.
    fn outbound(&mut self, n: Outbound) -> Result<bool, SessionError> {
        let packet = match n {
            Outbound::Paused => return Ok(true),
            Outbound::Publish(mut publish, properties) => {
                let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
                match self.principal.outbound_topic(topic) {
                    Some(t) => publish.topic = Bytes::from(t),
                    None => {
                        // Cannot happen: subscriptions only reach the client's own org.
                        warn!(topic, "dropping a message outside the client's topic space");
                        return Ok(false);
                    }
                }
                self.counters.deliveries.increment(1);
                let start = self.wbuf.len();
                self.version
                    .write(Packet::Publish(publish, properties), &mut self.wbuf)?;
                // rumqttd keeps a publish's QoS private; the fixed header has it.
                if self.wbuf.get(start).is_some_and(|b| b & 0b0110 != 0) {
                    self.out_inflight += 1;
                } else {
                    // QoS 0 has no acknowledgement: delivered once written.
                    self.flow.delivered();
                }
                return Ok(false);
            }
            Outbound::Ack(Packet::SubAck(ack, props)) => {
                Packet::SubAck(self.merge_suback(ack), props)
            }
            // A PUBACK/PUBREC waits until what the message must leave on disk is there.
            Outbound::Ack(p @ Packet::PubAck(..)) | Outbound::Ack(p @ Packet::PubRec(..)) => {
                let pkid = match &p {
                    Packet::PubAck(a, _) => a.pkid,
                    Packet::PubRec(a, _) => a.pkid,
                    _ => 0,
                };
                self.quota.acknowledged(&p);
                let ticket = self.gates.remove(&pkid).unwrap_or(0);
                self.ack_when(ticket, p)?;
                return Ok(false);
            }
            Outbound::Ack(p @ Packet::PubComp(..)) => {
                self.quota.acknowledged(&p);
                self.ack_when(0, p)?;
                return Ok(false);
            }
            Outbound::Ack(p) => {
                self.quota.acknowledged(&p);
                p
            }
            Outbound::Disconnect(code) => {
                match self.version.disconnect(code, "disconnected by the broker") {
                    Some(p) => p,
                    None => return Ok(false),
                }
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
                Packet::Publish(mut publish, props) => {
                    if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                        return Err(SessionError::Protocol("topic aliases are not supported"));
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
                        let rec = PubRec {
                            pkid,
                            reason: PubRecReason::Success,
                        };
                        self.quota.released_one();
                        self.ack_when(0, Packet::PubRec(rec, None))?;
                        self.flush(stream).await?;
                        continue;
                    }
                    let mut extra = Vec::new();
                    if qos == 2 {
                        self.inbound_qos2.insert(pkid);
                        if let Some(p) = &self.persistent {
                            extra = p.record_inbound(pkid);
                        }
                    }
                    let limits = crate::state::StateLimits::from(self.quota.limits.get());
                    let ticket = match self.ctx.state.publish(
                        &self.org_state,
                        &publish,
                        qos,
                        props.as_ref(),
                        &limits,
                        extra,
                    ) {
                        Ok(t) => t,
                        Err(refused) => {
                            crate::metrics::limit_refused(
                                self.principal.org.as_str(),
                                refused.limit(),
                            );
                            let why = format!("over the org's {} limit", refused.limit());
                            info!(org = %self.principal.org, limit = refused.limit(), "closing: over a limit");
                            if let Some(p) = self
                                .version
                                .disconnect(DisconnectReasonCode::QuotaExceeded, &why)
                            {
                                self.version.write(p, &mut self.wbuf)?;
                                self.flush(stream).await?;
                            }
                            return Err(SessionError::OverLimit {
                                limit: refused.limit(),
                                text: why,
                            });
                        }
                    };
                    if qos > 0 && ticket > 0 {
                        self.gates.insert(pkid, ticket);
                    }
                    if qos == 2 {
                        self.engine_qos2.insert(pkid);
                    }
                    self.flow
                        .published(std::str::from_utf8(&publish.topic).unwrap_or_default());
                    self.send_to_engine(Packet::Publish(publish, props)).await?;
                }
                Packet::Subscribe(sub, props) => {
                    let mut slots = Vec::with_capacity(sub.filters.len());
                    let mut allowed = Vec::new();
                    for f in sub.filters {
                        match self.principal.subscribe_filter(&f.path) {
                            Ok(internal) => {
                                if let Some(refused) = self.quota.subscribe(&internal) {
                                    slots.push(Some(refused));
                                    continue;
                                }
                                slots.push(None);
                                self.flow.subscribed(&internal);
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
                    if let Some(p) = &self.persistent {
                        // A persistent session's subscriptions are certmq's: durable
                        // before the SUBACK, retained messages queued after it.
                        let granted: Vec<(String, u8)> = allowed
                            .iter()
                            .map(|f| (f.path.clone(), f.qos as u8))
                            .collect();
                        let codes: Vec<SubscribeReasonCode> =
                            allowed.iter().map(|f| granted_code(f.qos as u8)).collect();
                        let ticket = p.subscribe(&granted);
                        self.ctx.state.durable(ticket).await;
                        self.pending_subs.insert(sub.pkid, slots);
                        let ack = self.merge_suback(SubAck {
                            pkid: sub.pkid,
                            return_codes: codes,
                        });
                        self.ack_when(0, Packet::SubAck(ack, None))?;
                        self.flush(stream).await?;
                    } else if allowed.is_empty() {
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
                        self.flow.unsubscribed(f);
                        self.quota.unsubscribed(f);
                    }
                    if let Some(p) = &self.persistent {
                        let ticket = p.unsubscribe(&unsub.filters);
                        self.ctx.state.durable(ticket).await;
                        let ack = UnsubAck {
                            pkid: unsub.pkid,
                            reasons: vec![UnsubAckReason::Success; unsub.filters.len()],
                        };
                        self.ack_when(0, Packet::UnsubAck(ack, None))?;
                        self.flush(stream).await?;
                    } else {
                        self.send_to_engine(Packet::Unsubscribe(unsub, props))
                            .await?;
                    }
                }
                Packet::Disconnect(d, _) => {
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
                    match (&self.persistent, p) {
                        (Some(session), Packet::PubAck(a, _)) => {
                            session.acked(a.pkid, false);
                            self.pull()?;
                            self.flush(stream).await?;
                        }
                        (Some(session), Packet::PubRec(a, _)) => {
                            if session.acked(a.pkid, true) == Acked::Release {
                                let rel = PubRel {
                                    pkid: a.pkid,
                                    reason: PubRelReason::Success,
                                };
                                self.version
                                    .write(Packet::PubRel(rel, None), &mut self.wbuf)?;
                            }
                            self.pull()?;
                            self.flush(stream).await?;
                        }
                        (_, p) => self.send_to_engine(p).await?,
                    }
                }
                Packet::PubComp(c, props) => match &self.persistent {
                    Some(session) => {
                        session.completed(c.pkid);
                    }
                    None => self.send_to_engine(Packet::PubComp(c, props)).await?,
                },
                Packet::PubRel(r, props) => {
                    // The client releases a QoS 2 message it sent: the engine completes
                    // those it has; one taken before a reconnect is completed here.
                    self.inbound_qos2.remove(&r.pkid);
                    if let Some(session) = &self.persistent {
                        session.released_inbound(r.pkid);
                    }
                    if self.engine_qos2.remove(&r.pkid) {
                        self.send_to_engine(Packet::PubRel(r, props)).await?;
                    } else {
                        let comp = PubComp {
                            pkid: r.pkid,
                            reason: PubCompReason::Success,
                        };
                        self.quota
                            .acknowledged(&Packet::PubComp(comp.clone(), None));
                        self.ack_when(0, Packet::PubComp(comp, None))?;
                        self.flush(stream).await?;
                    }
                }
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
        let link = match &mut self.link {
            Some(link) => link,
            None => {
                let link = self
                    .ctx
                    .engine
                    .link(&self.client_id)
                    .await
                    .map_err(|e| SessionError::Link(e.to_string()))?;
                self.link.insert(link)
            }
        };
        link.send(p)
            .await
            .map_err(|e| SessionError::Link(e.to_string()))
    }
}

/// Woken when a persistent session has deliveries; never for a clean one.
async fn notified(session: &Option<PersistentSession>) {
    match session {
        Some(s) => s.notify().notified().await,
        None => std::future::pending().await,
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

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
