//! The MQTT engine: rumqttd's router, run in-process, behind one small type so it can
//! be swapped without touching the rest of the broker.
//!
//! rumqttd does routing, subscriptions, retained messages, QoS state and shared
//! subscriptions. It has no public way to accept a stream we already authenticated, so
//! each session gets a "local link" (`LinkTx`/`LinkRx`) and the session task bridges it
//! to the client's socket (see `session.rs`).

use std::sync::Arc;

use rumqttd::local::{LinkBuilder, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig};

/// Engine sizing.
#[derive(Debug, Clone)]
pub struct EngineConfig {
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
            max_connections: 100_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
        }
    }
}

type Connect =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), EngineError> + Send + Sync;

/// The engine refused a link (connection limit reached, router gone).
#[derive(Debug, thiserror::Error)]
#[error("engine: {0}")]
pub struct EngineError(String);

/// A running router and the means to open links to it.
#[derive(Clone)]
pub struct Engine {
    connect: Arc<Connect>,
}

impl Engine {
    /// Starts the router on its own thread.
    pub fn start(config: &EngineConfig) -> Engine {
        let router = Router::new(
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
        Engine {
            connect: Arc::new(move |client_id: &str, clean: bool| {
                // Wills are fired by the session (the router never fires a local
                // link's will), so none is registered here.
                LinkBuilder::new(client_id, router_tx.clone())
                    .clean_session(clean)
                    .build()
                    .map_err(|e| EngineError(e.to_string()))
            }),
        }
    }

    /// Opens a link for `client_id`. The router answers with a ConnAck notification
    /// (carrying session-present). Runs on a blocking thread: `build` waits on a channel.
    pub async fn link(
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
