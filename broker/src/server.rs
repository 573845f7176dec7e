//! The MQTT/TLS listener: accept (capped), pick the org's config by SNI, finish the
//! handshake (timed), read the identity off the client certificate, run the session.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use registry::{cert, Registry};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn, Instrument};

use crate::engine::{Engine, EngineConfig};
use crate::session::{self, Peer, SessionCtx, SessionLimits};
use crate::sessions::{CloseReason, Sessions};
use crate::tls::OrgTlsCache;

/// Broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Time allowed from TCP accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// Open connections (handshaking or in session); more are closed at once.
    pub max_connections: usize,
    pub limits: SessionLimits,
    pub engine: EngineConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            handshake_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            limits: SessionLimits::default(),
            engine: EngineConfig::default(),
        }
    }
}

/// A TLS alert record, sent in the clear before any handshake message: fatal,
/// `unrecognized_name` (112).
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];
/// Fatal `internal_error` (80).
const ALERT_INTERNAL_ERROR: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 80];

/// The broker: TLS front end, live sessions and the engine.
pub struct Broker {
    tls: Arc<OrgTlsCache>,
    sessions: Arc<Sessions>,
    ctx: Arc<SessionCtx>,
    config: BrokerConfig,
}

impl Broker {
    /// Starts the engine and subscribes to registry changes: an org's TLS config is
    /// rebuilt on its next handshake, and its live sessions whose admitting CA is no
    /// longer active (or whose org is gone) are closed at once.
    pub fn new(registry: Arc<Registry>, config: BrokerConfig) -> Arc<Broker> {
        let tls = OrgTlsCache::new(registry.clone());
        let sessions = Arc::new(Sessions::default());
        let engine = Engine::start(&config.engine);
        let ctx = Arc::new(SessionCtx {
            registry: registry.clone(),
            pressure: crate::flow::Pressure::new(engine.lag_handle()),
            engine,
            sessions: sessions.clone(),
            limits: config.limits.clone(),
        });
        let broker = Arc::new(Broker {
            tls,
            sessions,
            ctx,
            config,
        });
        let weak = Arc::downgrade(&broker);
        registry.on_change(move |registry::Change::Org(org)| {
            if let Some(b) = weak.upgrade() {
                b.reconcile(org);
            }
        });
        broker
    }

    /// Live sessions (list, kick).
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    fn reconcile(&self, org: &registry::OrgId) {
        let active: Option<HashSet<String>> = match self.tls.get(org) {
            Ok(t) => t.map(|t| t.cas.iter().map(|c| c.fingerprint.clone()).collect()),
            Err(e) => {
                // Keep serving with what was admitted; the next handshake will retry.
                error!(%org, cause = %e, "cannot rebuild TLS config");
                return;
            }
        };
        let revocations = match self.ctx.registry.revocations(org) {
            Ok(r) => r,
            Err(e) => {
                error!(%org, cause = %e, "cannot read revocations");
                return;
            }
        };
        let n = self.sessions.kick_where(CloseReason::Revoked, |s| {
            &s.org == org
                && (active
                    .as_ref()
                    .is_none_or(|set| !set.contains(&s.ca_fingerprint))
                    || revocations.refuses(&s.identity, &s.ca_fingerprint, &s.cert_serial))
        });
        if n > 0 {
            info!(%org, sessions = n, "closed sessions that are no longer admitted");
        }
    }

    /// Serves MQTT over TLS on `listener` until `shutdown` is cancelled, then closes
    /// every session and waits (up to 5 s) for them to end.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
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
                remote = %addr,
                org = tracing::field::Empty,
                client_id = tracing::field::Empty
            );
            tracker.spawn(
                async move {
                    broker.connection(tcp, addr).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
        self.sessions.kick_where(CloseReason::Shutdown, |_| true);
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }

    async fn connection(&self, tcp: TcpStream, addr: SocketAddr) {
        let deadline = Instant::now() + self.config.handshake_timeout;
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or_default();
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = match tokio::time::timeout_at(deadline, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                debug!(cause = %e, "not a TLS ClientHello");
                return;
            }
            Err(_) => {
                debug!("no ClientHello before the handshake timeout");
                return;
            }
        };
        let sni = start.client_hello().server_name().map(str::to_owned);
        let org = sni.as_deref().and_then(|s| self.tls.org_for_sni(s));
        let org_tls = match org.as_ref().map(|o| self.tls.get(o)) {
            Some(Ok(Some(t))) => t,
            Some(Err(e)) => {
                error!(cause = %e, "cannot build the org's TLS config");
                let mut io = start.io;
                let _ = io.write_all(&ALERT_INTERNAL_ERROR).await;
                return;
            }
            _ => {
                debug!(sni = ?sni, "no org for this server name");
                let mut io = start.io;
                let _ = io.write_all(&ALERT_UNRECOGNIZED_NAME).await;
                let _ = io.shutdown().await;
                return;
            }
        };
        tracing::Span::current().record("org", org_tls.org.as_str());
        let stream = match tokio::time::timeout_at(
            deadline,
            start.into_stream(org_tls.config.clone()),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                info!(cause = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!("TLS handshake timed out");
                return;
            }
        };
        let (_, conn) = stream.get_ref();
        let Some(chain) = conn.peer_certificates().filter(|c| !c.is_empty()) else {
            // Cannot happen: the verifier requires a client certificate.
            return;
        };
        let leaf = &chain[0];
        let details = cert::details(leaf).ok();
        let ca = org_tls.admitting_ca(chain);
        let peer = Peer {
            principal_org: org_tls.org.clone(),
            identity: cert::identity_of(leaf),
            ca_id: ca.map(|c| c.id.clone()).unwrap_or_default(),
            ca_fingerprint: ca.map(|c| c.fingerprint.clone()).unwrap_or_default(),
            cert_serial: details
                .as_ref()
                .map(|d| d.serial.clone())
                .unwrap_or_default(),
            cert_not_after: details
                .map(|d| d.not_after)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            remote_addr: addr,
            local_port,
        };
        drop(org_tls);
        session::run(stream, peer, self.ctx.clone()).await;
    }
}
