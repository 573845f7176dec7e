//! The MQTT engine seam: the only part of the broker that knows rumqttd.
//!
//! rumqttd does routing, subscriptions, retained messages, QoS state and shared
//! subscriptions. It has no public way to accept a stream certmq already authenticated,
//! so each session gets a [`Link`] to the router and bridges it to the client's socket
//! (see `session/bridge.rs`). Sessions see only this module's interface:
//!
//! - [`Engine::link`] opens a session's link (always clean: persistent sessions are
//!   certmq's own, in `state`);
//! - [`Link`] carries the session's publishes, subscriptions, acknowledgements and its
//!   final disconnect in, and [`Outbound`] deliveries out;
//! - [`Engine::publish`] publishes on the broker's own behalf (status events, wills,
//!   retained messages restored on start);
//! - [`Engine::purge`] forgets the retained messages an org left in the engine (after
//!   the org is deleted).
//!
//! The packet model is rumqttd's protocol module ([`packet`], with the wire codec in
//! [`codec`]); it is a codec with no router in it, so another engine can keep it.
//! The durable message state (`state`) sits beside it; the cluster plugs in behind
//! this interface.

pub mod codec;
mod router;

use crate::lock;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use registry::OrgId;

pub use router::EngineConfig;
pub(crate) use router::Router;

/// The packet model sessions use (rumqttd's protocol module).
pub mod packet {
    pub use rumqttd::protocol::{
        ConnAck, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter,
        LastWill, LastWillProperties, Login, Packet, PingResp, PubAck, PubAckReason, PubComp,
        PubCompReason, PubRec, PubRecReason, PubRel, PubRelReason, Publish, PublishProperties, QoS,
        SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
    };

    /// A PUBLISH with the given QoS, packet id and DUP flag (rumqttd keeps those fields
    /// private; its own serialization is the way in).
    pub fn publish(
        topic: &[u8],
        payload: &[u8],
        qos: u8,
        retain: bool,
        pkid: u16,
        dup: bool,
    ) -> Publish {
        use bytes::BufMut;
        let mut b = bytes::BytesMut::with_capacity(5 + topic.len() + payload.len());
        b.put_u8(0b0011_0000 | u8::from(retain) | ((qos.min(2)) << 1) | (u8::from(dup) << 3));
        b.put_u16(pkid);
        b.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
        b.put_slice(topic);
        b.put_slice(payload);
        Publish::deserialize(b.freeze())
    }

    /// `p` with another QoS, packet id and DUP flag; topic and payload are shared, not
    /// copied.
    pub fn with_qos(p: &Publish, qos: u8, pkid: u16, dup: bool) -> Publish {
        let mut out = publish(b"", b"", qos, p.retain, pkid, dup);
        out.topic = p.topic.clone();
        out.payload = p.payload.clone();
        out
    }
}

use packet::{DisconnectReasonCode, Packet, Publish, PublishProperties};

/// The engine refused a link or a packet (connection limit reached, router gone).
#[derive(Debug, thiserror::Error)]
#[error("engine: {0}")]
pub struct EngineError(pub(crate) String);

/// What the engine hands a session to deliver to its client.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// A message for one of the session's subscriptions (internal topic).
    Publish(Publish, Option<PublishProperties>),
    /// An answer to something the session sent (PUBACK, SUBACK, UNSUBACK, …).
    Ack(Packet),
    /// The engine closes the session.
    Disconnect(DisconnectReasonCode),
    /// The engine stopped sending until the session calls [`Link::wake`] (its
    /// outgoing buffer is full: the client is behind).
    Paused,
}

/// A running engine: cheap to clone.
///
/// It runs several routers (see [`EngineConfig::routers`]), each on its own thread, and
/// puts each org on one of them: orgs never share topics, so they need not share a
/// router, and different orgs' traffic uses different cores.
#[derive(Clone)]
pub struct Engine {
    routers: Arc<[Router]>,
    state: Arc<State>,
}

/// What certmq must know about the engine's contents to purge an org: rumqttd cannot
/// enumerate them.
#[derive(Default)]
struct State {
    /// Internal topics with a retained message, per org.
    retained: Mutex<HashMap<OrgId, HashSet<String>>>,
}

/// The org of an internal topic (`/tenants/<org>/…`).
fn org_of(topic: &[u8]) -> Option<OrgId> {
    let rest = topic.strip_prefix(b"/tenants/")?;
    let end = rest.iter().position(|b| *b == b'/')?;
    OrgId::try_from(std::str::from_utf8(&rest[..end]).ok()?).ok()
}

/// Which of `n` routers an org lives on: a stable hash of its id (FNV-1a), so an org
/// keeps its router for the life of the process.
fn router_index(org: &str, n: usize) -> usize {
    let hash = org.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    usize::try_from(hash % n.max(1) as u64).unwrap_or(0)
}

/// The org of a client id (`d:<org>:…`, `a:<org>:…`).
fn org_of_client(client_id: &str) -> Option<&str> {
    client_id.split(':').nth(1)
}

impl State {
    fn note_publish(&self, p: &Publish) {
        if !p.retain {
            return;
        }
        let Some(org) = org_of(&p.topic) else {
            return;
        };
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let mut retained = lock(&self.retained);
        let set = retained.entry(org).or_default();
        if p.payload.is_empty() {
            set.remove(&topic);
        } else {
            set.insert(topic);
        }
    }
}

impl Engine {
    /// Starts the engine (rumqttd's router on its own thread, the broker's own link and
    /// the router probe).
    pub fn start(config: &EngineConfig) -> Engine {
        let routers: Vec<Router> = (0..config.routers.max(1))
            .map(|_| Router::start(config))
            .collect();
        Engine {
            routers: routers.into(),
            state: Arc::default(),
        }
    }

    /// The router `org` lives on.
    fn router(&self, org: &str) -> &Router {
        &self.routers[router_index(org, self.routers.len())]
    }

    /// The router of the org an internal topic belongs to.
    fn router_of_topic(&self, topic: &[u8]) -> &Router {
        match org_of(topic) {
            Some(org) => self.router(org.as_str()),
            None => &self.routers[0],
        }
    }

    /// Opens the link of session `client_id`, always a clean one: the engine routes
    /// between live sessions and keeps no session state (persistent sessions are
    /// certmq's own, see `state`). Sessions open theirs only when they first need the
    /// engine (see `session/mod.rs`).
    pub(crate) async fn link(&self, client_id: &str) -> Result<Link, EngineError> {
        let router = self.router(org_of_client(client_id).unwrap_or_default());
        let (tx, rx, _ack) = router.link(client_id, true).await?;
        Ok(Link {
            tx,
            rx,
            state: self.state.clone(),
        })
    }

    /// Publishes on the broker's own behalf: status events, wills, retained messages
    /// restored on start (QoS 0 or 1; a QoS 2 message goes to clean sessions as QoS 1).
    /// Sessions need no link of their own for these, so an idle session holds none.
    pub(crate) async fn publish(&self, publish: Publish, qos: u8) {
        self.state.note_publish(&publish);
        self.router_of_topic(&publish.topic)
            .publish(publish, qos)
            .await;
    }

    /// How far behind the router of `org` is, and the notification after each
    /// measurement of it (see `flow.rs`).
    pub(crate) fn lag(
        &self,
        org: &OrgId,
    ) -> (Arc<std::sync::atomic::AtomicU64>, Arc<tokio::sync::Notify>) {
        let router = self.router(org.as_str());
        (router.lag_handle(), router.measured())
    }

    /// Forgets everything `org` left in the engine: its retained messages are cleared.
    /// (Persistent sessions are not the engine's: see `state`.) Call it when the org is
    /// gone and its live sessions have ended, so an org created later with the same id
    /// starts empty.
    pub(crate) async fn purge(&self, org: &OrgId) {
        let topics = lock(&self.state.retained).remove(org).unwrap_or_default();
        for topic in topics {
            self.clear_retained(org, topic).await;
        }
    }

    /// Clears the engine's retained message at `topic` (internal) of `org`.
    pub(crate) async fn clear_retained(&self, org: &OrgId, topic: String) {
        if let Some(set) = lock(&self.state.retained).get_mut(org) {
            set.remove(&topic);
        }
        self.router(org.as_str())
            .publish(Publish::new(Bytes::from(topic), Bytes::new(), true), 0)
            .await;
    }
}

/// One session's link to the engine.
pub(crate) struct Link {
    tx: rumqttd::local::LinkTx,
    rx: rumqttd::local::LinkRx,
    state: Arc<State>,
}

impl Link {
    /// Forwards a packet from the client (already authorized and rewritten to internal
    /// topics): PUBLISH, SUBSCRIBE, UNSUBSCRIBE or a QoS acknowledgement.
    pub(crate) async fn send(&mut self, packet: Packet) -> Result<(), EngineError> {
        if let Packet::Publish(p, _) = &packet {
            self.state.note_publish(p);
        }
        self.tx
            .send(packet)
            .await
            .map(|_| ())
            .map_err(|e| EngineError(e.to_string()))
    }

    /// Packets sent and not yet taken by the router.
    pub(crate) fn queued(&self) -> usize {
        self.tx.buffer().len()
    }

    /// The next delivery for the client; `None` when the engine has nothing for the
    /// session right now (spurious wake-up).
    pub(crate) async fn next(&mut self) -> Result<Option<Outbound>, EngineError> {
        use rumqttd::Notification;
        loop {
            let n = self
                .rx
                .next()
                .await
                .map_err(|e| EngineError(e.to_string()))?;
            let out = match n {
                None => return Ok(None),
                Some(Notification::Forward(f)) => Outbound::Publish(f.publish, f.properties),
                Some(Notification::Unschedule) => Outbound::Paused,
                Some(Notification::DeviceAck(ack)) => Outbound::Ack(Packet::from(ack)),
                Some(Notification::Disconnect(d, _)) => Outbound::Disconnect(d.reason_code),
                Some(other) => {
                    tracing::debug!(?other, "ignoring engine notification");
                    continue;
                }
            };
            return Ok(Some(out));
        }
    }

    /// Resumes deliveries after [`Outbound::Paused`].
    pub(crate) async fn wake(&self) -> Result<(), EngineError> {
        self.rx.wake().await.map_err(|e| EngineError(e.to_string()))
    }

    /// Ends the session at the engine. Without it rumqttd never frees a link.
    pub(crate) async fn disconnect(&mut self) {
        let _ = self
            .tx
            .send(Packet::Disconnect(
                packet::Disconnect {
                    reason_code: DisconnectReasonCode::NormalDisconnection,
                },
                None,
            ))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_topics_name_their_org() {
        assert_eq!(
            org_of(b"/tenants/acme/iot-2/type/t/id/d/evt/e/fmt/f").map(|o| o.to_string()),
            Some("acme".into())
        );
        assert_eq!(org_of(b"/certmq/probe"), None);
        assert_eq!(org_of(b"/tenants/"), None);
        assert_eq!(org_of_client("d:acme:t:d"), Some("acme"));
    }

    #[test]
    fn orgs_spread_over_routers_and_keep_theirs() {
        let orgs: Vec<String> = (0..64).map(|i| format!("org{i}")).collect();
        let mut used = [0usize; 4];
        for o in &orgs {
            let i = router_index(o, 4);
            assert_eq!(i, router_index(o, 4), "stable");
            used[i] += 1;
        }
        assert!(
            used.iter().all(|n| *n > 0),
            "every router gets orgs: {used:?}"
        );
        assert_eq!(router_index("acme", 1), 0);
    }

    #[test]
    fn retained_topics_are_tracked_until_cleared() {
        let state = State::default();
        let topic = "/tenants/acme/iot-2/type/t/id/d/evt/e/fmt/f";
        state.note_publish(&Publish::new(topic, "x", true));
        state.note_publish(&Publish::new("/tenants/acme/other", "x", false));
        let acme = OrgId::try_from("acme").unwrap();
        assert_eq!(lock(&state.retained)[&acme].len(), 1);
        state.note_publish(&Publish::new(topic, "", true));
        assert!(lock(&state.retained)[&acme].is_empty());
    }
}
