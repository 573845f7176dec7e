//! rumqttd's router, run in-process: started on its own thread, reached through local
//! links (`LinkTx`/`LinkRx`), one for each session, one for the broker's own publishes
//! and one for the probe that measures the router's lag.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::{Notification, RouterConfig};

use super::EngineError;

/// Engine sizing.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Routers (threads); each org is routed by one of them. Default: the number of
    /// cores, at most 8.
    pub routers: usize,
    /// Connections one router admits (an org may have them all).
    pub max_connections: usize,
    /// Packets the router queues for one client before it waits for that client.
    pub max_outgoing_packet_count: u64,
    /// Size of one commit-log segment per topic, bytes.
    pub max_segment_size: usize,
    /// Segments kept per topic; older ones are dropped (bounds router memory).
    pub max_segment_count: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            routers: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8),
            max_connections: 100_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
        }
    }
}

type Connect =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), EngineError> + Send + Sync;

/// A running router and the means to open links to it.
#[derive(Clone)]
pub(crate) struct Router {
    connect: Arc<Connect>,
    /// Round trip of the last probe through the router, microseconds.
    lag_us: Arc<AtomicU64>,
    /// Notified after every probe measurement (flow control waits on it).
    measured: Arc<tokio::sync::Notify>,
    /// Publishes made by the broker itself (status events, wills), see [`Router::publish`].
    system: tokio::sync::mpsc::Sender<(Publish, u8)>,
}

/// The client id of the broker's own link, which carries status events and wills.
const SYSTEM_CLIENT: &str = "certmq-system";

/// The client id and topic of the router probe (no MQTT client can use either: client
/// ids need an org and topics a `/tenants/<org>/` prefix).
const PROBE_CLIENT: &str = "certmq-probe";
const PROBE_TOPIC: &str = "/certmq/probe";
/// How often the probe measures the router.
const PROBE_EVERY: Duration = Duration::from_millis(50);

impl Router {
    /// Starts the router on its own thread.
    pub(crate) fn start(config: &EngineConfig) -> Router {
        let router = rumqttd::Router::new(
            0,
            RouterConfig {
                max_connections: config.max_connections,
                max_outgoing_packet_count: config.max_outgoing_packet_count,
                max_segment_size: config.max_segment_size,
                max_segment_count: config.max_segment_count,
                custom_segment: None,
                initialized_filters: None,
                shared_subscriptions_strategy: Default::default(),
            },
        );
        let router_tx = router.spawn();
        let (system, system_rx) = tokio::sync::mpsc::channel(4096);
        let engine = Router {
            system,
            lag_us: Arc::new(AtomicU64::new(0)),
            measured: Arc::default(),
            connect: Arc::new(move |client_id: &str, clean: bool| {
                // Wills are fired by the session (the router never fires a local
                // link's will), so none is registered here.
                LinkBuilder::new(client_id, router_tx.clone())
                    .clean_session(clean)
                    .build()
                    .map_err(|e| EngineError(e.to_string()))
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(engine.clone().probe());
            tokio::spawn(engine.clone().system_link(system_rx));
        }
        engine
    }

    /// Publishes through the broker's own link, at QoS 0 or 1 (2 is sent as 1).
    pub(crate) async fn publish(&self, publish: Publish, qos: u8) {
        let _ = self.system.send((publish, qos)).await;
    }

    async fn system_link(self, mut rx: tokio::sync::mpsc::Receiver<(Publish, u8)>) {
        let Ok((mut tx, mut link_rx, _)) = self.link(SYSTEM_CLIENT, true).await else {
            tracing::error!("the broker's own engine link could not connect: no status events");
            return;
        };
        // The router acknowledges the QoS 1 publishes (wills, restored retained
        // messages): nothing waits for those acknowledgements.
        tokio::spawn(async move { while link_rx.next().await.is_ok() {} });
        let mut pkid: u16 = 0;
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 256).await > 0 {
            let mut packets = batch.drain(..).map(|(p, qos)| {
                if qos == 0 {
                    return Packet::Publish(p, None);
                }
                pkid = pkid.checked_add(1).unwrap_or(1);
                Packet::Publish(crate::engine::packet::with_qos(&p, 1, pkid, false), None)
            });
            // All but the last without a router notification: one per batch.
            let Some(last) = packets.next_back() else {
                continue;
            };
            tx.buffer().extend(packets);
            if tx.send(last).await.is_err() {
                return;
            }
        }
    }

    /// How far behind the router is, in microseconds: the last probe's round trip
    /// (publish in, delivery out). The router is one thread that both ingests and
    /// delivers; when ingest starves delivery this grows, and every session's flow
    /// control slows its publisher (see `flow.rs`).
    /// Notified after every measurement of the lag.
    pub(crate) fn measured(&self) -> Arc<tokio::sync::Notify> {
        self.measured.clone()
    }

    pub(crate) fn lag_handle(&self) -> Arc<AtomicU64> {
        self.lag_us.clone()
    }

    async fn probe(self) {
        let Ok((mut tx, mut rx, _)) = self.link(PROBE_CLIENT, true).await else {
            tracing::warn!("router probe could not connect; flow control sees no router lag");
            return;
        };
        if tx.subscribe(PROBE_TOPIC).is_err() {
            return;
        }
        let mut tick = tokio::time::interval(PROBE_EVERY);
        loop {
            tick.tick().await;
            let sent = Instant::now();
            if tx.try_publish(PROBE_TOPIC, "p").is_err() {
                // The router's channel is full: as behind as it gets.
                self.lag_us.store(1_000_000, Ordering::Relaxed);
                self.measured.notify_waiters();
                continue;
            }
            let lag = loop {
                match tokio::time::timeout(Duration::from_secs(1), rx.next()).await {
                    Ok(Ok(Some(rumqttd::Notification::Forward(_)))) => break sent.elapsed(),
                    Ok(Ok(_)) => continue,
                    Ok(Err(_)) => return,
                    Err(_) => break Duration::from_secs(1),
                }
            };
            self.lag_us.store(
                lag.as_micros().min(u128::from(u64::MAX)) as u64,
                Ordering::Relaxed,
            );
            self.measured.notify_waiters();
        }
    }

    /// Opens a link for `client_id`. The router answers with a ConnAck notification
    /// (carrying session-present). Runs on a blocking thread: `build` waits on a channel.
    pub(crate) async fn link(
        &self,
        client_id: &str,
        clean_session: bool,
    ) -> Result<(LinkTx, LinkRx, Notification), EngineError> {
        let connect = self.connect.clone();
        let client_id = client_id.to_owned();
        tokio::task::spawn_blocking(move || connect(&client_id, clean_session))
            .await
            .unwrap_or_else(|e| Err(EngineError(e.to_string())))
    }
}
