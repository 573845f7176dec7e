//! The MQTT engine seam: the only part of the broker that knows rumqttd.
//!
//! rumqttd does routing, subscriptions, retained messages, QoS state and shared
//! subscriptions. It has no public way to accept a stream certmq already authenticated,
//! so each session gets a [`Link`] to the router and bridges it to the client's socket
//! (see `session/bridge.rs`). Sessions see only this module's interface:
//!
//! - [`Engine::link`] opens a session's link (and answers its CONNACK);
//! - [`Link`] carries the session's publishes, subscriptions, acknowledgements and its
//!   final disconnect in, and [`Outbound`] deliveries out;
//! - [`Engine::publish`] publishes on the broker's own behalf (status events, wills);
//! - [`Engine::purge`] forgets everything an org left in the engine: its retained
//!   messages and its persistent sessions (after the org is deleted).
//!
//! The packet model is rumqttd's protocol module ([`packet`], with the wire codec in
//! [`codec`]); it is a codec with no router in it, so another engine can keep it.
//! The durable message state and the cluster plug in behind this interface.

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
        ConnAck, ConnectReturnCode, Disconnect, DisconnectReasonCode, Filter, LastWill, Login,
        Packet, PingResp, Publish, PublishProperties, SubAck, Subscribe, SubscribeReasonCode,
    };
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
    /// Client ids whose last session was persistent: the engine may hold their state.
    persistent: Mutex<HashSet<String>>,
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

    /// Opens the link of session `client_id`. The answer carries the engine's CONNACK
    /// (session present for a persistent session it holds). Sessions open theirs only
    /// when they first need the engine (see `session/mod.rs`).
    pub(crate) async fn link(
        &self,
        client_id: &str,
        clean_session: bool,
    ) -> Result<(Link, Packet), EngineError> {
        let router = self.router(org_of_client(client_id).unwrap_or_default());
        let (tx, rx, ack) = router.link(client_id, clean_session).await?;
        let ack = Option::<Packet>::from(ack)
            .ok_or_else(|| EngineError("the engine answered the link without a CONNACK".into()))?;
        Ok((
            Link {
                tx,
                rx,
                state: self.state.clone(),
            },
            ack,
        ))
    }

    /// Records whether `client_id` connects with a persistent session; returns whether
    /// the engine may hold state from an earlier persistent session of it (a clean
    /// session must then open its link at once, so the engine discards that state).
    pub(crate) fn note_session_kind(&self, client_id: &str, persistent: bool) -> bool {
        let mut set = lock(&self.state.persistent);
        if persistent {
            !set.insert(client_id.to_owned())
        } else {
            set.remove(client_id)
        }
    }

    /// Publishes on the broker's own behalf (QoS 0): status events and wills. Sessions
    /// need no link of their own for these, so an idle session holds none.
    pub(crate) async fn publish(&self, topic: Bytes, payload: Bytes, retain: bool) {
        let publish = Publish::new(topic, payload, retain);
        self.state.note_publish(&publish);
        self.router_of_topic(&publish.topic).publish(publish).await;
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

    /// Forgets everything `org` left in the engine: its retained messages are cleared
    /// and its persistent sessions discarded. Call it when the org is gone and its live
    /// sessions have ended, so an org created later with the same id starts empty.
    pub(crate) async fn purge(&self, org: &OrgId) {
        let topics = lock(&self.state.retained).remove(org).unwrap_or_default();
        for topic in topics {
            self.router(org.as_str())
                .publish(Publish::new(Bytes::from(topic), Bytes::new(), true))
                .await;
        }
        let clients: Vec<String> = {
            let mut set = lock(&self.state.persistent);
            let mine: Vec<String> = set
                .iter()
                .filter(|c| org_of_client(c) == Some(org.as_str()))
                .cloned()
                .collect();
            for c in &mine {
                set.remove(c);
            }
            mine
        };
        for client_id in clients {
            // A clean link replaces the persistent state; its DISCONNECT frees it.
            match self.link(&client_id, true).await {
                Ok((mut link, _)) => link.disconnect().await,
                Err(e) => tracing::warn!(%org, client_id, cause = %e, "cannot purge a session"),
            }
        }
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
