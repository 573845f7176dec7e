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

use crate::admission::Arrival;
use crate::engine::{Engine, EngineConfig};
use crate::session::{self, Peer, SessionCtx, SessionLimits};
use crate::sessions::{CloseReason, Sessions};
use crate::tls::OrgTlsCache;
use registry::Transport;

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
    pub(crate) ctx: Arc<SessionCtx>,
    config: BrokerConfig,
}

impl Broker {
    /// Starts the engine and subscribes to registry changes: an org's TLS config is
    /// rebuilt on its next handshake, and its live sessions whose admitting CA is no
    /// longer active (or whose org is gone) are closed at once.
    pub fn new(registry: Arc<Registry>, config: BrokerConfig) -> Arc<Broker> {
        crate::metrics::install();
        let tls = OrgTlsCache::new(registry.clone());
        let sessions = Arc::new(Sessions::default());
        let engine = Engine::start(&config.engine);
        let ctx = Arc::new(SessionCtx {
            registry: registry.clone(),
            tls: tls.clone(),
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

    pub(crate) fn tls(&self) -> &OrgTlsCache {
        &self.tls
    }

    /// The Prometheus text exposition of the broker's metrics.
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(&self.sessions, &self.ctx.registry)
    }

    /// Live sessions (list, kick).
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// Re-applies admission to the org's live sessions after a change: a session whose
    /// credentials no longer pass — CA gone or inactive, serial revoked, identity
    /// blocked, token replaced or deleted, security level raised, org deleted — is closed.
    fn reconcile(&self, org: &registry::OrgId) {
        let tls = match self.tls.get(org) {
            Ok(t) => t,
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
        let active: HashSet<&str> = tls
            .as_ref()
            .map(|t| t.cas.iter().map(|c| c.fingerprint.as_str()).collect())
            .unwrap_or_default();
        let registry = &self.ctx.registry;
        let n = self.sessions.kick_where(CloseReason::Revoked, |s| {
            if &s.org != org {
                return false;
            }
            let Some(tls) = &tls else {
                return true; // the org is gone
            };
            if revocations.blocked.contains(&s.identity) {
                return true;
            }
            let cert_ok = s.has_cert
                && active.contains(s.ca_fingerprint.as_str())
                && !revocations.refuses(&s.identity, &s.ca_fingerprint, &s.cert_serial);
            let token_ok = s.token_version.is_some()
                && registry
                    .device_token_version(org, &s.identity)
                    .ok()
                    .flatten()
                    == s.token_version;
            !tls.policy
                .level_for(&s.identity)
                .admits(s.transport, cert_ok, token_ok)
        });
        if n > 0 {
            info!(%org, sessions = n, "closed sessions that are no longer admitted");
        }
    }

    /// Serves MQTT over TLS on `listener` until `shutdown` is cancelled, then closes
    /// every session and waits (up to 5 s) for them to end.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.accept_loop(listener, shutdown, false).await
    }

    /// Serves plain MQTT (no TLS) on `listener`: only orgs whose policy is
    /// `tls_optional` admit anyone here, and only with a token; the org comes from the
    /// client id.
    pub async fn serve_plain(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.accept_loop(listener, shutdown, true).await
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        plain: bool,
    ) {
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
                    if plain {
                        broker.plain_connection(tcp, addr).await;
                    } else {
                        broker.connection(tcp, addr).await;
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        self.sessions.kick_where(CloseReason::Shutdown, |_| true);
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    }

    async fn plain_connection(&self, tcp: TcpStream, addr: SocketAddr) {
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or_default();
        let peer = Peer {
            arrival: Arrival {
                transport: Transport::Plain,
                org_tls: None,
                has_cert: false,
                cert_identity: None,
            },
            ca_id: String::new(),
            ca_fingerprint: String::new(),
            cert_serial: String::new(),
            cert_not_after: time::OffsetDateTime::UNIX_EPOCH,
            remote_addr: addr,
            local_port,
        };
        session::run(tcp, peer, self.ctx.clone()).await;
    }

    async fn connection(&self, tcp: TcpStream, addr: SocketAddr) {
        let deadline = Instant::now() + self.config.handshake_timeout;
        let local_port = tcp.local_addr().map(|a| a.port()).unwrap_or_default();
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = match tokio::time::timeout_at(deadline, acceptor).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => {
                debug!(cause = %e, "not a TLS ClientHello");
                crate::metrics::handshake(None, "not_tls");
                return;
            }
            Err(_) => {
                debug!("no ClientHello before the handshake timeout");
                crate::metrics::handshake(None, "timeout");
                return;
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
                return;
            }
            _ => {
                debug!(sni = ?sni, "no org for this server name");
                crate::metrics::handshake(None, "unrecognized_name");
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
                let reason = crate::metrics::handshake_reason(&e);
                crate::metrics::handshake(Some(org_tls.org.as_str()), reason);
                return;
            }
            Err(_) => {
                debug!("TLS handshake timed out");
                crate::metrics::handshake(Some(org_tls.org.as_str()), "timeout");
                return;
            }
        };
        let (_, conn) = stream.get_ref();
        // No chain only when the org's policy admits tokens (the verifier decides).
        let chain = conn.peer_certificates().filter(|c| !c.is_empty());
        let leaf = chain.and_then(|c| c.first());
        let summary = leaf.and_then(|l| cert::client_summary(l));
        // A resumed TLS session carries the certificate verified when it was issued;
        // one that has expired since does not come back in that way.
        if summary
            .as_ref()
            .is_some_and(|d| d.not_after < time::OffsetDateTime::now_utc())
        {
            crate::metrics::handshake(Some(org_tls.org.as_str()), "certificate_expired");
            return;
        }
        crate::metrics::handshake(Some(org_tls.org.as_str()), "ok");
        let ca = chain.and_then(|c| org_tls.admitting_ca(c));
        let (cert_identity, cert_serial, cert_not_after) = match summary {
            Some(s) => (s.identity, s.serial, s.not_after),
            None => (None, String::new(), time::OffsetDateTime::UNIX_EPOCH),
        };
        let peer = Peer {
            ca_id: ca.map(|c| c.id.clone()).unwrap_or_default(),
            ca_fingerprint: ca.map(|c| c.fingerprint.clone()).unwrap_or_default(),
            cert_serial,
            cert_not_after,
            arrival: Arrival {
                transport: Transport::Tls,
                has_cert: leaf.is_some(),
                cert_identity,
                org_tls: Some(org_tls),
            },
            remote_addr: addr,
            local_port,
        };
        session::run(stream, peer, self.ctx.clone()).await;
    }
}
