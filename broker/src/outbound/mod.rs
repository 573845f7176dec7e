//! Outgoing connections: the org's bridges (to remote MQTT brokers) and webhooks (to
//! HTTPS endpoints), each over TLS with its own trust and client certificate.
//!
//! A destination is a persistent session of its org's message state, named
//! `$dest:<id>` (no MQTT client can have that id), subscribed to the destination's
//! filters. So its queue is the one every persistent session has: QoS 1 messages are
//! on disk before the publisher's PUBACK, survive a restart, and are bounded by the
//! org's `max_queued_messages_per_session` (oldest dropped first, counted in
//! `certmq_dropped_total{reason="queue_full"}`). A message leaves the queue when the
//! remote acknowledged it (PUBACK, or a 2xx answer), so nothing acknowledged to a
//! device is lost on the way out. Destinations are not counted by flow control: a slow
//! or unreachable destination fills its own queue and never slows the org's devices.
//!
//! A bridge's session is attached while its remote connection is up and detached
//! while it is down, like a device's: while down, QoS 1 messages queue and QoS 0
//! messages are not kept. A webhook's session is attached while it runs.
//!
//! The [`Outbound`] manager follows the registry: every change of an org re-reads its
//! destinations, stops those gone or changed, starts the new ones (a changed one
//! reconnects with its new settings, its queue kept), and discards a deleted one's
//! queue.

mod mqtt;
mod tls;
mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use registry::live::{DestinationState, DestinationStatus};
use registry::{Destination, DestinationKind, Identity, Name, OrgId, Registry, SecurityPolicy};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::acl::{tenant_prefix, Principal};
use crate::lock;
use crate::state::tree::filter_matches;
use crate::state::{MessageState, SendRetained, SessionHandle};

/// How long a connect, a handshake, a CONNACK or an HTTP answer may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before a retry; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// At most this long between attempts: a partner back from an outage gets its backlog
/// within 10 s, and a partner that stays down sees one attempt per 10 s.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The message-state client id of destination `id`.
fn session_client(id: &str) -> String {
    format!("$dest:{id}")
}

/// The application principal a destination's filters are checked and mapped with:
/// a destination sees what an application of its org may subscribe to in watson mode,
/// and anything in the org's topic space when the org's topic policy is `custom`
/// (the admin configures destinations; docs/topic-policies.md).
fn principal(org: &OrgId, custom: bool) -> Option<Principal> {
    let app_id = Name::try_from("certmq").ok()?;
    let mut p = Principal::new(
        org.clone(),
        Identity::App { app_id },
        &SecurityPolicy::default(),
        &Default::default(),
        None,
    );
    if custom {
        p.topics = crate::acl::Topics::Anywhere;
    }
    Some(p)
}

/// Maps an application-view `filter` of `org` to its internal filter, or says why an
/// application may not subscribe to it (`custom`: the org's topic policy is custom).
pub(crate) fn internal_filter(org: &OrgId, custom: bool, filter: &str) -> Result<String, String> {
    let p = principal(org, custom).ok_or("no application principal")?;
    p.subscribe_filter(filter).map_err(|e| {
        if custom {
            format!("{e}; destinations take any filter of the org's topic space")
        } else {
            format!(
                "{e}; destinations take what an application may subscribe to (events and status)"
            )
        }
    })
}

/// What the broker reports about a destination: kept by its task, read by the API.
#[derive(Default)]
pub(crate) struct Status {
    inner: Mutex<StatusInner>,
    forwarded: AtomicU64,
    /// Messages a bridge brought in from the remote (`receive` rules).
    pub(crate) received: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct StatusInner {
    state: Option<DestinationState>,
    last_error: Option<(String, OffsetDateTime)>,
    connected_since: Option<OffsetDateTime>,
    last_http_status: Option<u16>,
}

impl Status {
    fn set(&self, state: DestinationState) {
        let mut g = lock(&self.inner);
        if state == DestinationState::Connected && g.state != Some(state) {
            g.connected_since = Some(OffsetDateTime::now_utc());
        } else if state != DestinationState::Connected {
            g.connected_since = None;
        }
        g.state = Some(state);
    }

    fn failed(&self, why: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut g = lock(&self.inner);
        g.state = Some(DestinationState::Failed);
        g.connected_since = None;
        g.last_error = Some((why, OffsetDateTime::now_utc()));
    }

    fn http(&self, code: u16) {
        lock(&self.inner).last_http_status = Some(code);
    }

    fn report(&self, queued: usize) -> DestinationStatus {
        let g = lock(&self.inner);
        DestinationStatus {
            state: g.state.unwrap_or(DestinationState::Connecting),
            last_error: g.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: g.last_error.as_ref().map(|(_, at)| *at),
            connected_since: g.connected_since,
            forwarded: self.forwarded.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            queued,
            failures: self.failures.load(Ordering::Relaxed),
            last_http_status: g.last_http_status,
        }
    }
}

/// One rule, ready to use: the application-view filter, its internal form, the
/// remote topic template and the QoS.
struct Rule {
    filter: String,
    internal: String,
    template: String,
    qos: u8,
}

/// Everything a destination's task needs.
pub(crate) struct Dest {
    config: Destination,
    registry: Arc<Registry>,
    state: Arc<MessageState>,
    status: Arc<Status>,
    client: String,
    rules: Vec<Rule>,
    prefix: String,
    /// The application principal `receive` rules publish as.
    principal: Principal,
}

impl Dest {
    fn kind(&self) -> &'static str {
        self.config.kind.as_str()
    }

    /// The application view of an internal topic, and the rule it falls under.
    fn route(&self, internal: &[u8]) -> Option<(String, &Rule)> {
        let topic = std::str::from_utf8(internal).ok()?;
        let app = topic.strip_prefix(&self.prefix)?.to_owned();
        let rule = self
            .rules
            .iter()
            .find(|r| filter_matches(&r.filter, &app))?;
        Some((app, rule))
    }

    /// Attaches the destination's session (created on first use) — unless the
    /// destination was stopped or is gone from the registry meanwhile (its org deleted):
    /// then `None`, so no session is made for an org whose state was purged.
    fn attach(&self, stop: &CancellationToken) -> Option<SessionHandle> {
        let d = &self.config;
        let exists = self.registry.get_destination(&d.org, d.kind, &d.id).is_ok();
        if stop.is_cancelled() || !exists {
            return None;
        }
        let org = self.state.org(&d.org);
        Some(self.state.attach(&org, &self.client, false, None).session)
    }

    /// Makes the session's subscriptions the destination's filters.
    fn sync_subscriptions(&self, stop: &CancellationToken) {
        let Some(h) = self.attach(stop) else { return };
        // In a cluster every node may run the destination (a shared registry): its
        // filters are then one shared group across the nodes, so each message is sent
        // by one node only (docs/cluster-messages.md).
        let clustered = self.state.cluster().is_some();
        let wanted: Vec<(String, u8, SendRetained, u32)> = self
            .rules
            .iter()
            .map(|r| {
                let filter = if clustered {
                    format!("$share/{}/{}", self.client, r.internal)
                } else {
                    r.internal.clone()
                };
                (filter, r.qos, SendRetained::Never, 0)
            })
            .collect();
        let stale: Vec<String> = h
            .filters()
            .into_iter()
            .filter(|f| !wanted.iter().any(|(w, _, _, _)| w == f))
            .collect();
        if !stale.is_empty() {
            h.unsubscribe(&stale);
        }
        h.subscribe(&wanted);
        h.detach();
    }

    fn forwarded(&self, n: u64) {
        if n > 0 {
            self.status.forwarded.fetch_add(n, Ordering::Relaxed);
            crate::metrics::outbound_forwarded(self.config.org.as_str(), self.kind(), n);
        }
    }
}

struct Running {
    config: Destination,
    /// The org's topic policy was custom when it started (its filters map differently
    /// in each mode, so a switch restarts it).
    custom: bool,
    stop: CancellationToken,
    status: Arc<Status>,
    task: JoinHandle<()>,
}

/// Runs every org's destinations.
pub(crate) struct Outbound {
    registry: Arc<Registry>,
    state: Arc<MessageState>,
    running: Mutex<HashMap<(OrgId, String), Running>>,
    rt: tokio::runtime::Handle,
}

impl Outbound {
    /// The manager, with every stored destination started. `None` without a runtime.
    pub(crate) fn start(
        registry: Arc<Registry>,
        state: Arc<MessageState>,
    ) -> Option<Arc<Outbound>> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let o = Arc::new(Outbound {
            registry,
            state,
            running: Mutex::default(),
            rt,
        });
        match o.registry.list_orgs() {
            Ok(orgs) => {
                for org in orgs {
                    o.reconcile(&org.id);
                }
            }
            Err(e) => warn!(cause = %e, "cannot read the orgs: outgoing destinations not started"),
        }
        Some(o)
    }

    /// Brings `org`'s running destinations in line with the registry.
    pub(crate) fn reconcile(&self, org: &OrgId) {
        let desired: Vec<Destination> = if self.registry.get_org(org).is_ok() {
            [DestinationKind::Bridge, DestinationKind::Webhook]
                .into_iter()
                .flat_map(|k| self.registry.list_destinations(org, k).unwrap_or_default())
                .collect()
        } else {
            Vec::new()
        };
        let custom = self.registry.topic_policy(org).is_ok_and(|p| p.is_custom());
        let mut running = lock(&self.running);
        let mine: Vec<(OrgId, String)> =
            running.keys().filter(|(o, _)| o == org).cloned().collect();
        let mut previous = HashMap::new();
        for key in mine {
            let still = desired.iter().find(|d| d.id == key.1);
            let same = |r: &Running| still.is_some_and(|d| r.config == *d) && r.custom == custom;
            if running.get(&key).is_some_and(same) {
                continue;
            }
            let Some(r) = running.remove(&key) else {
                continue;
            };
            r.stop.cancel();
            if still.is_some() {
                previous.insert(key.1.clone(), (r.task, r.status));
            } else {
                // Deleted: its queue goes once its task has let go of the session.
                info!(%org, id = key.1, kind = r.config.kind.as_str(), "destination deleted: stopping it");
                let state = self.state.clone();
                let (org, client) = (org.clone(), session_client(&key.1));
                self.rt.spawn(async move {
                    let _ = r.task.await;
                    state.discard_session(&org, &client);
                });
            }
        }
        for d in desired {
            let key = (org.clone(), d.id.clone());
            if running.contains_key(&key) {
                continue;
            }
            let (before, status) = match previous.remove(&d.id) {
                Some((task, status)) => (Some(task), status),
                None => (None, Arc::new(Status::default())),
            };
            let stop = CancellationToken::new();
            let task = self.spawn(d.clone(), custom, status.clone(), stop.clone(), before);
            running.insert(
                key,
                Running {
                    config: d,
                    custom,
                    stop,
                    status,
                    task,
                },
            );
        }
    }

    fn spawn(
        &self,
        config: Destination,
        custom: bool,
        status: Arc<Status>,
        stop: CancellationToken,
        before: Option<JoinHandle<()>>,
    ) -> JoinHandle<()> {
        let registry = self.registry.clone();
        let state = self.state.clone();
        self.rt.spawn(async move {
            if let Some(t) = before {
                let _ = t.await;
            }
            let org = config.org.clone();
            let mut rules = Vec::new();
            for r in &config.forward {
                match internal_filter(&org, custom, &r.filter) {
                    Ok(internal) => rules.push(Rule {
                        filter: r.filter.clone(),
                        internal,
                        template: r.topic.clone(),
                        qos: r.qos,
                    }),
                    Err(e) => {
                        status.failed(format!("filter {:?}: {e}", r.filter));
                        return;
                    }
                }
            }
            let Some(principal) = principal(&org, custom) else {
                status.failed("no application principal".into());
                return;
            };
            let dest = Dest {
                principal,
                client: session_client(&config.id),
                prefix: tenant_prefix(&org),
                config,
                registry,
                state,
                status,
                rules,
            };
            run(dest, stop).await;
        })
    }

    /// What the broker reports about destination `id` of `org`.
    pub(crate) fn status(&self, org: &OrgId, id: &str) -> Option<DestinationStatus> {
        let status = lock(&self.running)
            .get(&(org.clone(), id.to_owned()))
            .map(|r| r.status.clone())?;
        Some(status.report(self.state.queued(org, &session_client(id))))
    }

    /// Stops every destination (the broker is stopping); their queues stay.
    pub(crate) fn stop_all(&self) {
        for r in lock(&self.running).values() {
            r.stop.cancel();
        }
    }
}

/// A destination's life: connect, forward until the connection fails, wait, again —
/// until `stop`.
async fn run(dest: Dest, stop: CancellationToken) {
    dest.sync_subscriptions(&stop);
    let mut backoff = FIRST_BACKOFF;
    let (org, id, kind) = (dest.config.org.clone(), dest.config.id.clone(), dest.kind());
    info!(%org, id, kind, url = dest.config.url, "destination starting");
    // `connecting` until the first attempt ends; after a failure the state stays
    // `failed` (with its reason) while retrying, until a connection comes up.
    dest.status.set(DestinationState::Connecting);
    loop {
        let started = Instant::now();
        let result = match dest.config.kind {
            DestinationKind::Bridge => mqtt::connection(&dest, &stop).await,
            DestinationKind::Webhook => webhook::connection(&dest, &stop).await,
        };
        match result {
            Ok(()) => return,
            Err(why) => {
                warn!(%org, id, kind, cause = why, "destination failed; retrying");
                crate::metrics::outbound_failure(org.as_str(), kind);
                dest.status.failed(why);
            }
        }
        // A connection that lasted was healthy: start the backoff over.
        if started.elapsed() > MAX_BACKOFF {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
