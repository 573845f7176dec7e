//! Prometheus metrics (`GET /metrics`), all named `certmq_*`.
//!
//! Counters go through the `metrics` facade into `metrics-exporter-prometheus` (the
//! pair rumqttd itself uses); sessions keep their counter handles, so the hot path is an
//! atomic add. Gauges that describe current state — live connections, certificate
//! expiry — are computed at scrape time from the session registry and the registry, so
//! a deleted CA or a departed org leaves no stale series behind.

use std::fmt::Write as _;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeMap;

use registry::{Kind, OrgId, Registry};
use time::OffsetDateTime;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once; `None` if another one was installed first.
fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|_| handle)
        })
        .as_ref()
}

/// Call once at start-up so counters recorded before the first scrape are kept.
pub fn install() {
    if handle().is_some() {
        describe();
    }
}

/// The HELP text of every metric recorded through the facade (the gauges computed at
/// scrape time write their own, in [`render`]).
fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "certmq_handshakes_total",
        "TLS handshakes by org (_unknown before SNI picked one), result (ok|failed) and reason (e.g. unrecognized_name, unknown_ca, certificate_expired, timeout)."
    );
    describe_counter!(
        "certmq_tls_config_errors_total",
        "Times an org's TLS config could not be built; its last good config kept serving."
    );
    describe_counter!(
        "certmq_connect_refusals_total",
        "CONNECTs refused by admission, by the stage that refused (certificate, identity, client_id, security_level, blocked)."
    );
    describe_counter!(
        "certmq_cluster_forwarded_total",
        "Messages this node published to the cluster (NATS; QoS >= 1 acknowledged by the stream)."
    );
    describe_counter!(
        "certmq_cluster_forward_failures_total",
        "Messages accepted on this node that did not reach the cluster (queue full, NATS error, or QoS >= 1 not in the stream within the ack timeout)."
    );
    describe_counter!(
        "certmq_cluster_received_total",
        "Messages this node received from other nodes through the cluster and routed to its sessions."
    );
    describe_counter!(
        "certmq_cluster_overflows_total",
        "Times the NATS client dropped messages for one of this node's subscriptions (a slow consumer); each starts a catch-up from the stream."
    );
    describe_gauge!(
        "certmq_cluster_sessions_held",
        "Persistent sessions this node holds in the cluster's sessions bucket."
    );
    describe_counter!(
        "certmq_cluster_sessions_taken_over_total",
        "Persistent sessions taken over from another node."
    );
    describe_counter!(
        "certmq_cluster_session_messages_read_total",
        "Messages read from the cluster stream into persistent sessions taken over."
    );
    describe_gauge!(
        "certmq_cluster_nats_connected",
        "1 while this node is connected to the cluster's NATS server, else 0."
    );
    describe_gauge!(
        "certmq_cluster_lag_seconds",
        "How late this node routed messages from other nodes lately (origin time to routing, the largest in the last 250 ms; clock skew between nodes adds to it)."
    );
    describe_gauge!(
        "certmq_cluster_backlog",
        "The most messages waiting in one of this node's NATS subscriptions in the last 250 ms (counted up to 1000: behind)."
    );
    describe_counter!(
        "certmq_cluster_throttled_total",
        "Times this node started holding an org's publishers because another node reported it was behind for that org."
    );
    describe_gauge!(
        "certmq_cluster_holds",
        "(node, org) pairs for which this node holds its publishers now (another node behind)."
    );
    describe_counter!(
        "certmq_kicks_total",
        "Sessions closed by the broker, by org and reason (kicked, revoked, taken_over, shutdown, policy_changed)."
    );
    describe_counter!(
        "certmq_limit_refusals_total",
        "Things refused because they would take an org over one of its limits, by org and limit (an OrgLimits field)."
    );
    describe_counter!(
        "certmq_dropped_total",
        "Messages dropped, by org and reason (e.g. queue_full: the oldest of a session queue over its limit)."
    );
    describe_counter!(
        "certmq_publishes_total",
        "PUBLISH packets received from clients, by org and client kind (device, gateway, application)."
    );
    describe_counter!(
        "certmq_deliveries_total",
        "Messages written to subscribers, by org and client kind."
    );
    describe_counter!(
        "certmq_outbound_forwarded_total",
        "Messages delivered to outgoing destinations, by org and kind (bridge, webhook)."
    );
    describe_counter!(
        "certmq_outbound_failures_total",
        "Failed connection or delivery attempts of outgoing destinations, by org and kind."
    );
    describe_counter!(
        "certmq_network_refusals_total",
        "Connections an org's network policy refused, by org and reason (denied: a deny entry matched; not_allowed: no allow entry did)."
    );
    describe_gauge!(
        "certmq_persistent_sessions",
        "Persistent sessions held in the message state, connected or not."
    );
    describe_gauge!(
        "certmq_queued_messages",
        "Messages queued for persistent sessions, over all orgs."
    );
    describe_gauge!(
        "certmq_state_write_failing",
        "1 while writes of message state fail (acknowledgements are then held back), else 0."
    );
}

/// Why a handshake ended, as the `reason` label of `certmq_handshakes_total`.
pub(crate) fn handshake(org: Option<&str>, reason: &'static str) {
    let result = if reason == "ok" { "ok" } else { "failed" };
    metrics::counter!(
        "certmq_handshakes_total",
        "org" => org.unwrap_or("_unknown").to_owned(),
        "result" => result,
        "reason" => reason
    )
    .increment(1);
}

/// Maps a handshake error to a short reason label.
pub(crate) fn handshake_reason(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(c)) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate_expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate_not_yet_valid"
            }
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Revoked => "certificate_revoked",
            _ => "bad_certificate",
        },
        Some(Error::NoCertificatesPresented) => "no_client_certificate",
        Some(Error::AlertReceived(_)) => "client_alert",
        Some(_) => "tls_error",
        None => "io_error",
    }
}

/// An org's TLS config that failed to build (its last good one keeps serving).
pub(crate) fn tls_config_error(org: &str) {
    metrics::counter!("certmq_tls_config_errors_total", "org" => org.to_owned()).increment(1);
}

/// A connection refused by the org's network policy
/// (`certmq_network_refusals_total{org,reason}`, reason `denied` or `not_allowed`).
pub(crate) fn network_refused(org: &str, reason: &'static str) {
    metrics::counter!(
        "certmq_network_refusals_total", "org" => org.to_owned(), "reason" => reason
    )
    .increment(1);
}

/// A CONNECT refused by admission, by the stage that refused it.
pub(crate) fn refused(stage: registry::live::Stage) {
    metrics::counter!("certmq_connect_refusals_total", "stage" => stage.as_str()).increment(1);
}

/// A session closed by the broker (kick, revocation, takeover, shutdown).
/// Messages this node sent to the cluster: `certmq_cluster_forwarded_total{node}`.
pub(crate) fn cluster_forwarded(node: &str) {
    metrics::counter!("certmq_cluster_forwarded_total", "node" => node.to_owned()).increment(1);
}

/// Messages that did not reach the cluster (QoS ≥ 1: not in the stream within the ack
/// timeout): `certmq_cluster_forward_failures_total{node}`.
pub(crate) fn cluster_forward_failed(node: &str) {
    metrics::counter!("certmq_cluster_forward_failures_total", "node" => node.to_owned())
        .increment(1);
}

/// Messages this node received from the cluster and routed:
/// `certmq_cluster_received_total{node}`.
pub(crate) fn cluster_received(node: &str) {
    metrics::counter!("certmq_cluster_received_total", "node" => node.to_owned()).increment(1);
}

/// A subscription of this node overflowed in the NATS client:
/// `certmq_cluster_overflows_total{node}`.
pub(crate) fn cluster_overflow(node: &str) {
    metrics::counter!("certmq_cluster_overflows_total", "node" => node.to_owned()).increment(1);
}

/// A persistent session taken over from another node, and the messages it was owed
/// read from the stream: `certmq_cluster_sessions_taken_over_total{node}`,
/// `certmq_cluster_session_messages_read_total{node}`.
pub(crate) fn cluster_session_taken_over(node: &str, messages: u64) {
    metrics::counter!("certmq_cluster_sessions_taken_over_total", "node" => node.to_owned())
        .increment(1);
    metrics::counter!("certmq_cluster_session_messages_read_total", "node" => node.to_owned())
        .increment(messages);
}

/// Persistent sessions this node holds in the cluster's sessions bucket:
/// `certmq_cluster_sessions_held{node}`.
pub(crate) fn cluster_sessions_held(node: &str, n: usize) {
    metrics::gauge!("certmq_cluster_sessions_held", "node" => node.to_owned()).set(n as f64);
}

/// How far behind this node's receiving was lately: the deepest backlog of a NATS
/// subscription, `certmq_cluster_backlog{node}`, and the largest lag (ms),
/// `certmq_cluster_lag_seconds{node}`.
pub(crate) fn cluster_load(node: &str, backlog: u64, lag_ms: u64) {
    metrics::gauge!("certmq_cluster_backlog", "node" => node.to_owned()).set(backlog as f64);
    metrics::gauge!("certmq_cluster_lag_seconds", "node" => node.to_owned())
        .set(lag_ms as f64 / 1000.0);
}

/// A hold started on this node's publishers for a node behind:
/// `certmq_cluster_throttled_total{node}`.
pub(crate) fn cluster_throttled(node: &str) {
    metrics::counter!("certmq_cluster_throttled_total", "node" => node.to_owned()).increment(1);
}

/// The holds in effect on this node's publishers: `certmq_cluster_holds{node}`.
pub(crate) fn cluster_holds(node: &str, n: usize) {
    metrics::gauge!("certmq_cluster_holds", "node" => node.to_owned()).set(n as f64);
}

/// Whether this node is connected to NATS: `certmq_cluster_nats_connected{node}`.
pub(crate) fn cluster_connected(node: &str, connected: bool) {
    metrics::gauge!("certmq_cluster_nats_connected", "node" => node.to_owned()).set(if connected {
        1.0
    } else {
        0.0
    });
}

pub(crate) fn kick(org: &str, reason: &'static str) {
    metrics::counter!("certmq_kicks_total", "org" => org.to_owned(), "reason" => reason)
        .increment(1);
}

/// The message state's size, and whether writing it is failing.
pub(crate) fn state(persistent_sessions: usize, queued: usize, failing: bool) {
    metrics::gauge!("certmq_persistent_sessions").set(persistent_sessions as f64);
    metrics::gauge!("certmq_queued_messages").set(queued as f64);
    metrics::gauge!("certmq_state_write_failing").set(f64::from(u8::from(failing)));
}

/// Something refused because it would take `org` over one of its limits
/// (`certmq_limit_refusals_total{org,limit}`); `limit` is the `OrgLimits` field name,
/// e.g. `max_connections` (see `crate::limits`).
pub(crate) fn limit_refused(org: &str, limit: &'static str) {
    metrics::counter!(
        "certmq_limit_refusals_total", "org" => org.to_owned(), "limit" => limit
    )
    .increment(1);
}

/// `n` messages of `org` dropped (`certmq_dropped_total{org,reason}`), e.g. the oldest
/// of a session's queue over `max_queued_messages_per_session` (reason
/// `queue_full`).
pub(crate) fn dropped(org: &str, reason: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("certmq_dropped_total", "org" => org.to_owned(), "reason" => reason)
            .increment(n);
    }
}

/// `n` messages of `org` delivered to an outgoing destination of `kind` (`bridge`,
/// `webhook`): `certmq_outbound_forwarded_total{org,kind}`.
pub(crate) fn outbound_forwarded(org: &str, kind: &'static str, n: u64) {
    metrics::counter!("certmq_outbound_forwarded_total", "org" => org.to_owned(), "kind" => kind)
        .increment(n);
}

/// A failed connection or delivery attempt of an outgoing destination:
/// `certmq_outbound_failures_total{org,kind}`.
pub(crate) fn outbound_failure(org: &str, kind: &'static str) {
    metrics::counter!("certmq_outbound_failures_total", "org" => org.to_owned(), "kind" => kind)
        .increment(1);
}

/// Per-session counter handles: one lookup at CONNECT, an atomic add per packet.
pub(crate) struct SessionCounters {
    pub publishes: metrics::Counter,
    pub deliveries: metrics::Counter,
}

impl SessionCounters {
    pub(crate) fn new(org: &str, kind: &'static str) -> SessionCounters {
        SessionCounters {
            publishes: metrics::counter!(
                "certmq_publishes_total", "org" => org.to_owned(), "kind" => kind
            ),
            deliveries: metrics::counter!(
                "certmq_deliveries_total", "org" => org.to_owned(), "kind" => kind
            ),
        }
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole Prometheus text exposition; `conns` counts live sessions per org and kind
/// (see `Sessions::counts`).
pub fn render(mut conns: BTreeMap<(OrgId, Kind), usize>, registry: &Registry) -> String {
    let mut out = handle().map(|h| h.render()).unwrap_or_default();
    let orgs = registry.list_orgs().unwrap_or_default();
    // Every org and kind is reported, 0 included: a series that vanishes when the last
    // device leaves cannot be told from a broker that stopped reporting it.
    for org in &orgs {
        for kind in [Kind::Device, Kind::Gateway, Kind::App] {
            conns.entry((org.id.clone(), kind)).or_insert(0);
        }
    }

    out.push_str(
        "# HELP certmq_connections Live MQTT sessions.\n# TYPE certmq_connections gauge\n",
    );
    for ((org, kind), n) in conns {
        let _ = writeln!(
            out,
            "certmq_connections{{org=\"{}\",kind=\"{}\"}} {n}",
            label(org.as_str()),
            kind.as_str()
        );
    }

    out.push_str(
        "# HELP certmq_cert_not_after_seconds Expiry of CA, server and client certificates (Unix time; a client certificate is active while a destination uses it).\n\
         # TYPE certmq_cert_not_after_seconds gauge\n",
    );
    let mut days = String::from(
        "# HELP certmq_cert_days_to_expiry Whole days until a CA, server or client certificate expires.\n\
         # TYPE certmq_cert_days_to_expiry gauge\n",
    );
    let now = OffsetDateTime::now_utc();
    for org in orgs {
        let cas = registry.list_cas(&org.id).unwrap_or_default();
        let cas = cas
            .iter()
            .map(|c| ("ca", &c.id, c.active, c.details.not_after));
        let srv = registry.list_server_certs(&org.id).unwrap_or_default();
        let srv = srv
            .iter()
            .map(|c| ("server", &c.id, c.active, c.details.not_after));
        let cli = registry.list_client_certs(&org.id).unwrap_or_default();
        let cli = cli
            .iter()
            .map(|c| ("client", &c.id, !c.used_by.is_empty(), c.details.not_after));
        for (kind, id, active, not_after) in cas.chain(srv).chain(cli) {
            let labels = format!(
                "org=\"{}\",kind=\"{kind}\",id=\"{}\",active=\"{active}\"",
                label(org.id.as_str()),
                label(id)
            );
            let _ = writeln!(
                out,
                "certmq_cert_not_after_seconds{{{labels}}} {}",
                not_after.unix_timestamp()
            );
            let _ = writeln!(
                days,
                "certmq_cert_days_to_expiry{{{labels}}} {}",
                (not_after - now).whole_days()
            );
        }
    }
    out.push_str(&days);
    out.push_str(
        "# HELP certmq_device_certs_expiring Devices whose current certificate expires within 30 days.\n\
         # TYPE certmq_device_certs_expiring gauge\n",
    );
    for org in registry.list_orgs().unwrap_or_default() {
        let n = registry
            .devices_expiring(&org.id, registry::devices::EXPIRING_SOON_DAYS)
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "certmq_device_certs_expiring{{org=\"{}\"}} {n}",
            label(org.id.as_str())
        );
    }
    out
}

#[cfg(test)]
mod help_tests {
    /// Every metric this module records through the facade has a `describe_*` line
    /// (a metric added without one would show no HELP in `/metrics`).
    #[test]
    fn every_recorded_metric_is_described() {
        let src = include_str!("metrics.rs");
        let start = src.find("fn describe()").expect("describe()");
        let end = start + src[start..].find("\n}\n").expect("end of describe()");
        let described = &src[start..end];
        let recorded = src
            .match_indices("!(")
            .filter(|(i, _)| {
                let before = &src[..*i];
                before.ends_with("counter")
                    || before.ends_with("gauge")
                    || before.ends_with("histogram")
            })
            .filter(|(i, _)| {
                !src[..*i].ends_with("describe_counter") && !src[..*i].ends_with("describe_gauge")
            })
            .filter_map(|(i, _)| {
                let rest = src[i..].trim_start_matches("!(").trim_start();
                let name = rest.strip_prefix('"')?.split('"').next()?;
                name.starts_with("certmq_").then_some(name)
            });
        let recorded: Vec<&str> = recorded.collect();
        assert!(recorded.len() >= 10, "found only {recorded:?}");
        for name in recorded {
            assert!(
                described.contains(&format!("\"{name}\"")),
                "{name} has no describe_* line in describe()"
            );
        }
    }
}
