//! Benchmark reports: what each scenario measured, as JSON (serde) and SVG charts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::latency::LatencySummary;
use super::plot::{render_svg, Plot};

/// Errors kept verbatim in a report; the rest are only counted.
const KEPT_ERRORS: usize = 20;

/// One benchmark run against one broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Label of the broker under test (`certmq`, `mosquitto`, …).
    pub broker: String,
    /// Start of the run, RFC 3339 UTC.
    pub started_at: String,
    /// Wall time of the run, seconds (certificate minting included).
    pub elapsed_s: f64,
    /// The scenario's parameters.
    pub config: serde_json::Value,
    /// CPU time the broker process used during the run, seconds (with its pid).
    pub broker_cpu_s: Option<f64>,
    /// CPU time the simulator used during the run (certificate minting included).
    pub sim_cpu_s: Option<f64>,
    /// What was measured; its `scenario` field names the scenario.
    #[serde(flatten)]
    pub results: Results,
    /// The first errors seen, verbatim.
    pub errors: Vec<String>,
    /// How many errors were seen in all.
    pub error_count: usize,
}

/// What a scenario measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum Results {
    Connect(ConnectResult),
    Throughput(ThroughputResult),
    Idle(IdleResult),
    Resume(ResumeResult),
    Reload(ReloadResult),
    Flood(FloodResult),
    Puback(PubackResult),
    Offline(OfflineResult),
    Bridge(BridgeResult),
}

/// `connect`: full mTLS handshakes + CONNECT → CONNACK, then DISCONNECT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectResult {
    pub connections: usize,
    pub concurrency: usize,
    pub ok: usize,
    pub failed: usize,
    /// Successful connections per second (from the first dial to the last CONNACK).
    pub rate_per_s: f64,
    /// TCP connect → CONNACK.
    pub connect: Option<LatencySummary>,
    /// TCP connect → TLS handshake done.
    pub handshake: Option<LatencySummary>,
    /// CONNECT written → CONNACK read.
    pub connack: Option<LatencySummary>,
    /// TCP connect → CONNACK distribution `(nines, ms)` for the chart.
    pub connect_curve: Vec<(f64, f64)>,
}

/// `throughput`: fan-in from N devices to one application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputResult {
    pub qos: u8,
    pub publishers: usize,
    pub payload_bytes: usize,
    /// Messages each publisher may have on the way (published, not yet received by
    /// the application).
    pub window: usize,
    pub measure_s: f64,
    /// Messages the publishers wrote in the whole run (warm-up included).
    pub sent: u64,
    /// Messages the application received in the whole run.
    pub received: u64,
    /// Messages never received (gaps in sequence numbers + not arrived after the drain).
    pub missing: u64,
    /// Messages received during the measurement window, per second.
    pub rate_per_s: f64,
    /// Publisher → application latency of the messages received in the window.
    pub latency: Option<LatencySummary>,
    pub latency_curve: Vec<(f64, f64)>,
    /// Messages received per second, sampled every 250 ms over the whole run.
    pub rate_series: Vec<(f64, f64)>,
    /// Orgs the publishers were split over, one application each (1: the single-org
    /// fan-in). The figures above are totals over all orgs.
    #[serde(default = "one_org")]
    pub orgs: usize,
    /// Messages an application received from another org's publishers (0 on a broker
    /// that keeps orgs apart; always 0 with one org).
    #[serde(default)]
    pub foreign: u64,
    /// Each org's share when `orgs` > 1 (empty otherwise).
    #[serde(default)]
    pub per_org: Vec<OrgThroughput>,
    /// CPU time (user + system) the broker used during the measurement window, % of one
    /// core (above 100: more than one core busy); `None` without its pid.
    #[serde(default)]
    pub broker_cpu_pct: Option<f64>,
    /// The same for the load generator (this process).
    #[serde(default)]
    pub sim_cpu_pct: Option<f64>,
}

fn one_org() -> usize {
    1
}

/// One org's part of a multi-org fan-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrgThroughput {
    pub org: String,
    pub publishers: usize,
    pub sent: u64,
    pub received: u64,
    pub missing: u64,
    /// Messages its application received in the measurement window, per second.
    pub rate_per_s: f64,
    pub p99_ms: Option<f64>,
}

/// `idle`: N idle connections held open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleResult {
    pub connections: usize,
    pub connected: usize,
    pub failed: usize,
    /// Connections that answered a PINGREQ after the measurement.
    pub alive: usize,
    /// 127.0.0.x source addresses used (0: the kernel chose).
    pub source_addrs: usize,
    pub connect_rate_per_s: f64,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// (RSS after − RSS before) / connected, KiB.
    pub rss_per_connection_kib: Option<f64>,
    /// `(connections, broker RSS MiB)` while connecting.
    pub rss_series: Vec<(f64, f64)>,
}

/// `resume`: reconnect storm with TLS session resumption.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeResult {
    pub devices: usize,
    pub connections_per_device: usize,
    pub concurrency: usize,
    pub ok: usize,
    pub failed: usize,
    pub resumed: usize,
    pub full: usize,
    /// Resumed / (ok − devices): the first connection of a device cannot resume.
    pub resumed_fraction: f64,
    /// Successful connections per second.
    pub rate_per_s: f64,
    /// TCP connect → CONNACK of resumed handshakes.
    pub resumed_latency: Option<LatencySummary>,
    /// TCP connect → CONNACK of full handshakes.
    pub full_latency: Option<LatencySummary>,
}

/// One kind of change in `reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadStat {
    /// API call returned → first handshake (+ CONNECT) that saw the change, ms, per
    /// iteration.
    pub samples_ms: Vec<f64>,
    pub p50_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Median duration of the API call itself, ms.
    pub api_p50_ms: Option<f64>,
    /// Handshakes completed after the API call returned that still saw the old state.
    pub stale_handshakes: usize,
}

/// `reload` (certmq only): admin API change → first handshake that sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadResult {
    pub iterations: usize,
    /// `PATCH ca-certs/{id} {"active":false}` → a device of that CA is refused.
    pub ca_deactivate: ReloadStat,
    /// `PATCH ca-certs/{id} {"active":true}` → a device of that CA is admitted.
    pub ca_activate: ReloadStat,
    /// `POST server-certs/{id}/activate` → the new certificate is presented.
    pub server_cert_activate: ReloadStat,
}

/// `flood`: QoS 1 publishers flooding one slow subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloodResult {
    pub publishers: usize,
    pub payload_bytes: usize,
    /// Messages per second the subscriber consumes at most.
    pub subscriber_rate: u64,
    pub flood_s: f64,
    /// PUBLISHes acknowledged by the broker (PUBACK) during the flood.
    pub published: u64,
    /// Messages the subscriber received, drain included.
    pub received: u64,
    /// Acknowledged but never delivered: `lost` + `undelivered`.
    pub missing: u64,
    /// Messages skipped in a publisher's sequence (dropped by the broker).
    pub lost: u64,
    /// Acknowledged messages not (yet) delivered when the drain ended.
    pub undelivered: u64,
    /// Acknowledged publishes per second during the flood.
    pub in_per_s: f64,
    /// Messages delivered per second during the flood.
    pub out_per_s: f64,
    pub rss_before_kib: Option<u64>,
    /// Highest broker RSS sampled (every 50 ms) during the flood and the drain.
    pub peak_rss_kib: Option<u64>,
    /// `(seconds, msgs/s)` acknowledged and delivered, and `(seconds, RSS MiB)`.
    pub in_series: Vec<(f64, f64)>,
    pub out_series: Vec<(f64, f64)>,
    pub rss_series: Vec<(f64, f64)>,
}

/// `throughput --driver puback`: QoS 1 publishers driven by the broker's PUBACKs (up
/// to `inflight` unacknowledged each), one application reading as fast as it can.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PubackResult {
    pub publishers: usize,
    pub payload_bytes: usize,
    /// PUBLISHes each publisher may have unacknowledged by the broker.
    pub inflight: usize,
    /// Configured total rate, msgs/s (0: unpaced, as fast as PUBACKs allow).
    pub rate: u64,
    /// The application had a persistent session (clean session 0): `durable`.
    #[serde(default)]
    pub persistent_subscriber: bool,
    pub measure_s: f64,
    /// PUBLISHes written / acknowledged by the broker in the whole run.
    pub sent: u64,
    pub acked: u64,
    /// Messages the application received in the whole run (drain included).
    pub received: u64,
    /// Sequence gaps in what the application got: acknowledged, then skipped.
    pub lost: u64,
    /// Messages the application got more than once (QoS 1 redelivery).
    #[serde(default)]
    pub duplicates: u64,
    /// Acknowledged but not received when the drain ended (lost included).
    pub missing: u64,
    /// PUBLISHes written per second in the measurement window: what the publishers
    /// managed to offer (below `rate` when the inflight window held them back).
    pub offered_per_s: f64,
    /// PUBACKs per second in the measurement window.
    pub acked_per_s: f64,
    /// Messages the application received per second in the measurement window.
    pub delivered_per_s: f64,
    /// Publisher → application latency of the messages received in the window.
    pub latency: Option<LatencySummary>,
    pub latency_curve: Vec<(f64, f64)>,
    pub rss_before_kib: Option<u64>,
    /// Highest broker RSS sampled (every 50 ms) during the run.
    pub peak_rss_kib: Option<u64>,
    /// `(seconds, msgs/s)` acknowledged and delivered, sampled every 250 ms.
    pub acked_series: Vec<(f64, f64)>,
    pub delivered_series: Vec<(f64, f64)>,
}

/// `offline`: persistent sessions offline while QoS 1 messages are queued for them;
/// broker memory, and what a sample of them gets on reconnecting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineResult {
    pub devices: usize,
    pub messages_per_device: usize,
    pub payload_bytes: usize,
    /// PUBLISHes the application had unacknowledged at most.
    pub inflight: usize,
    /// Persistent sessions created (CONNECT clean session 0, SUBACK, DISCONNECT).
    pub sessions: usize,
    pub session_failed: usize,
    /// Sessions created per second.
    pub sessions_per_s: f64,
    /// Commands acknowledged by the broker (PUBACK): queued for an offline session.
    pub queued: u64,
    /// First PUBLISH → last PUBACK, seconds.
    pub queue_s: f64,
    /// Commands queued per second.
    pub queue_rate_per_s: f64,
    /// Broker RSS at the start, with the empty offline sessions, with every command
    /// queued (each after the settle time).
    pub rss_start_kib: Option<u64>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// (before − start) / sessions, KiB.
    pub rss_per_session_kib: Option<f64>,
    /// (after − before) / queued, bytes.
    pub rss_per_message_bytes: Option<f64>,
    /// Devices that reconnected (clean session 0) to count their messages.
    pub sample: usize,
    pub sample_connected: usize,
    /// Reconnects whose CONNACK had session present set.
    pub sessions_present: usize,
    /// messages_per_device × sample.
    pub sample_expected: u64,
    /// Distinct commands the sample received.
    pub sample_received: u64,
    /// Sampled devices that received every one of their commands.
    pub complete: usize,
    /// Commands the sample did not receive.
    pub shortfall: u64,
    /// Commands received more than once.
    pub duplicates: u64,
    /// Messages that were not one of the device's own commands.
    pub foreign: u64,
    /// Reconnect (TCP connect) → last of the device's commands, complete devices only.
    pub drain: Option<LatencySummary>,
    /// `(commands queued, broker RSS MiB)` while queueing.
    pub rss_series: Vec<(f64, f64)>,
}

/// `bridge` (run by `compare`): PUBACK-driven QoS 1 publishers → the edge broker → its
/// outgoing bridge → an upstream mosquitto → one subscriber there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeResult {
    pub publishers: usize,
    pub payload_bytes: usize,
    /// PUBLISHes each publisher may have unacknowledged by the edge.
    pub inflight: usize,
    /// Configured total rate, msgs/s (0: unpaced, as fast as the edge's PUBACKs allow).
    pub rate: u64,
    pub measure_s: f64,
    /// PUBLISHes written / acknowledged by the edge in the whole run.
    pub sent: u64,
    pub acked: u64,
    /// Distinct messages the upstream subscriber received (drain included).
    pub received: u64,
    /// Messages it received more than once (QoS 1 redelivery over the bridge).
    pub duplicates: u64,
    /// Acknowledged by the edge and never received upstream when the drain ended.
    pub missing: u64,
    /// The first runs of sequence numbers written and never received upstream, as
    /// `pub<n> <first>–<last>` (at most 10): where the missing ones were.
    #[serde(default)]
    pub missing_ranges: Vec<String>,
    /// PUBLISHes written / acknowledged per second in the measurement window.
    pub offered_per_s: f64,
    pub acked_per_s: f64,
    /// Distinct messages the upstream subscriber received per second in the window.
    pub delivered_per_s: f64,
    /// Publisher → upstream subscriber latency of the messages received in the window.
    pub latency: Option<LatencySummary>,
    pub latency_curve: Vec<(f64, f64)>,
    /// CPU of the edge broker and of the upstream mosquitto during the window, % of one
    /// core (`None` across an outage: the upstream is another process afterwards).
    pub edge_cpu_pct: Option<f64>,
    pub upstream_cpu_pct: Option<f64>,
    /// certmq: `certmq_dropped_total` of the org after the run (messages its queues
    /// dropped, the bridge's included); `None` for mosquitto.
    pub edge_dropped: Option<u64>,
    /// certmq: the bridge as `GET /orgs/{org}/bridges/{id}` showed it after the run
    /// (`state`, `forwarded`, `queued`, `failures`, `last_error`).
    pub bridge_status: Option<serde_json::Value>,
    /// The upstream was stopped for a while during the run (`queue while down`).
    pub outage: Option<OutageResult>,
    /// `(seconds, msgs/s)` acknowledged by the edge and delivered upstream.
    pub acked_series: Vec<(f64, f64)>,
    pub delivered_series: Vec<(f64, f64)>,
}

/// What a `bridge` run with the upstream stopped and started again found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutageResult {
    /// From the stop (the upstream exited) to the restart (it listens again), seconds.
    pub down_s: f64,
    /// PUBLISHes the devices wrote while the upstream was down.
    pub sent_while_down: u64,
    /// Messages written before the restart that had not reached the subscriber by then:
    /// what the edge had to hold.
    pub backlog: u64,
    /// Distinct messages the subscriber received after the restart.
    pub delivered_after_restart: u64,
    /// Of the backlog, messages that never arrived.
    pub backlog_missing: u64,
    /// Restart → the first message at the subscriber, seconds.
    pub first_after_restart_s: Option<f64>,
    /// Restart → the last message of the backlog at the subscriber, seconds (`None`
    /// when some never arrived).
    pub drain_s: Option<f64>,
}

impl BridgeResult {
    /// `bridge`, `bridge-r<rate>` when paced, `bridge-outage` with the upstream stopped
    /// for a while.
    pub fn name(&self) -> String {
        if self.outage.is_some() {
            "bridge-outage".into()
        } else if self.rate == 0 {
            "bridge".into()
        } else {
            format!("bridge-r{}", self.rate)
        }
    }
}

impl PubackResult {
    /// `puback-w<inflight>`, or `puback-w<inflight>-r<rate>` when paced; `durable-…`
    /// instead of `puback-…` when the application had a persistent session.
    pub fn name(&self) -> String {
        let kind = if self.persistent_subscriber {
            "durable"
        } else {
            "puback"
        };
        if self.rate == 0 {
            format!("{kind}-w{}", self.inflight)
        } else {
            format!("{kind}-w{}-r{}", self.inflight, self.rate)
        }
    }
}

impl Results {
    /// A short name for files and tables: `connect`, `throughput-qos1`,
    /// `throughput-qos1-orgs8` (fan-in over 8 orgs), …
    pub fn name(&self) -> String {
        match self {
            Results::Connect(_) => "connect".into(),
            Results::Throughput(t) if t.orgs > 1 => {
                format!("throughput-qos{}-orgs{}", t.qos, t.orgs)
            }
            Results::Throughput(t) => format!("throughput-qos{}", t.qos),
            Results::Idle(_) => "idle".into(),
            Results::Resume(_) => "resume".into(),
            Results::Reload(_) => "reload".into(),
            Results::Flood(_) => "flood".into(),
            Results::Puback(p) => p.name(),
            Results::Offline(_) => "offline".into(),
            Results::Bridge(b) => b.name(),
        }
    }
}

/// `, 8 orgs` for a run over several orgs, nothing for one.
fn orgs_note(orgs: usize) -> String {
    if orgs > 1 {
        format!(", {orgs} orgs")
    } else {
        String::new()
    }
}

impl BenchReport {
    /// The charts of this report.
    pub fn plots(&self) -> Vec<Plot> {
        let who = &self.broker;
        let latency = |name: &str, title: String, series: Vec<(String, Vec<(f64, f64)>)>| Plot {
            name: name.into(),
            title,
            x_label: "percentile (nines: 1 = p90, 2 = p99, 3 = p99.9)".into(),
            y_label: "latency, ms".into(),
            series,
        };
        match &self.results {
            Results::Connect(c) => vec![latency(
                "latency",
                format!(
                    "{who}: mTLS connect → CONNACK latency ({} conns, concurrency {})",
                    c.ok, c.concurrency
                ),
                vec![(who.clone(), c.connect_curve.clone())],
            )],
            Results::Throughput(t) => vec![
                latency(
                    "latency",
                    format!(
                        "{who}: QoS {} fan-in latency, {} publishers{}",
                        t.qos,
                        t.publishers,
                        orgs_note(t.orgs)
                    ),
                    vec![(who.clone(), t.latency_curve.clone())],
                ),
                Plot {
                    name: "rate".into(),
                    title: format!(
                        "{who}: QoS {} fan-in{}, received msgs/s",
                        t.qos,
                        orgs_note(t.orgs)
                    ),
                    x_label: "time, s".into(),
                    y_label: "msgs/s".into(),
                    series: vec![(who.clone(), t.rate_series.clone())],
                },
            ],
            Results::Idle(i) => vec![Plot {
                name: "rss".into(),
                title: format!(
                    "{who}: broker RSS while opening {} idle mTLS connections",
                    i.connections
                ),
                x_label: "connections".into(),
                y_label: "RSS, MiB".into(),
                series: vec![(who.clone(), i.rss_series.clone())],
            }],
            Results::Resume(_) => Vec::new(),
            Results::Offline(o) => vec![Plot {
                name: "rss".into(),
                title: format!(
                    "{who}: broker RSS while queueing {} QoS 1 messages for {} offline sessions",
                    o.messages_per_device, o.sessions
                ),
                x_label: "messages queued".into(),
                y_label: "RSS, MiB".into(),
                series: vec![(who.clone(), o.rss_series.clone())],
            }],
            Results::Reload(r) => {
                let series = |s: &ReloadStat| {
                    s.samples_ms
                        .iter()
                        .enumerate()
                        .map(|(i, ms)| (i as f64 + 1.0, *ms))
                        .collect::<Vec<_>>()
                };
                vec![Plot {
                    name: "delay".into(),
                    title: format!("{who}: API change → first handshake that sees it"),
                    x_label: "iteration".into(),
                    y_label: "ms".into(),
                    series: vec![
                        ("CA deactivated".into(), series(&r.ca_deactivate)),
                        ("CA activated".into(), series(&r.ca_activate)),
                        (
                            "server cert activated".into(),
                            series(&r.server_cert_activate),
                        ),
                    ],
                }]
            }
            Results::Flood(f) => vec![
                Plot {
                    name: "rate".into(),
                    title: format!(
                        "{who}: {} QoS 1 publishers → 1 slow subscriber",
                        f.publishers
                    ),
                    x_label: "time, s".into(),
                    y_label: "msgs/s".into(),
                    series: vec![
                        ("acknowledged (in)".into(), f.in_series.clone()),
                        ("delivered (out)".into(), f.out_series.clone()),
                    ],
                },
                Plot {
                    name: "rss".into(),
                    title: format!("{who}: broker RSS under the flood"),
                    x_label: "time, s".into(),
                    y_label: "RSS, MiB".into(),
                    series: vec![(who.clone(), f.rss_series.clone())],
                },
            ],
            Results::Bridge(b) => {
                let offered = match (&b.outage, b.rate) {
                    (Some(o), rate) => {
                        format!("{rate} msgs/s offered, upstream down {:.1} s", o.down_s)
                    }
                    (None, 0) => "unpaced".to_owned(),
                    (None, rate) => format!("{rate} msgs/s offered"),
                };
                vec![
                    latency(
                        "latency",
                        format!("{who}: QoS 1 over the bridge, end to end, {offered}"),
                        vec![(who.clone(), b.latency_curve.clone())],
                    ),
                    Plot {
                        name: "rate".into(),
                        title: format!("{who}: bridge to an upstream mosquitto, {offered}"),
                        x_label: "time, s".into(),
                        y_label: "msgs/s".into(),
                        series: vec![
                            ("acknowledged by the edge".into(), b.acked_series.clone()),
                            ("delivered upstream".into(), b.delivered_series.clone()),
                        ],
                    },
                ]
            }
            Results::Puback(p) => {
                let offered = if p.rate == 0 {
                    "unpaced".to_owned()
                } else {
                    format!("{} msgs/s offered", p.rate)
                };
                vec![
                    latency(
                        "latency",
                        format!(
                            "{who}: QoS 1 latency, {} publishers, inflight {}, {offered}",
                            p.publishers, p.inflight
                        ),
                        vec![(who.clone(), p.latency_curve.clone())],
                    ),
                    Plot {
                        name: "rate".into(),
                        title: format!(
                            "{who}: PUBACK-driven publishers, inflight {}, {offered}",
                            p.inflight
                        ),
                        x_label: "time, s".into(),
                        y_label: "msgs/s".into(),
                        series: vec![
                            ("acknowledged".into(), p.acked_series.clone()),
                            ("delivered".into(), p.delivered_series.clone()),
                        ],
                    },
                ]
            }
        }
    }

    /// Writes `<broker>-<scenario>.json` and one `<broker>-<scenario>-<chart>.svg` per
    /// chart into `dir` (created if missing); returns the paths written.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let stem = format!("{}-{}", self.broker, self.results.name());
        let json_path = dir.join(format!("{stem}.json"));
        let json = serde_json::to_string_pretty(self).context("serialize report")?;
        std::fs::write(&json_path, json + "\n")
            .with_context(|| format!("write {}", json_path.display()))?;
        let mut written = vec![json_path];
        for plot in self.plots() {
            let path = dir.join(format!("{stem}-{}.svg", plot.name));
            std::fs::write(&path, render_svg(&plot)?)
                .with_context(|| format!("write {}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Errors of a run: the first [`KEPT_ERRORS`] verbatim, all counted.
#[derive(Debug, Default)]
pub(crate) struct ErrorLog {
    kept: Vec<String>,
    count: usize,
}

impl ErrorLog {
    pub(crate) fn push(&mut self, error: impl std::fmt::Display) {
        self.count += 1;
        if self.kept.len() < KEPT_ERRORS {
            self.kept.push(error.to_string());
        }
    }

    pub(crate) fn merge(&mut self, other: ErrorLog) {
        self.count += other.count;
        for e in other.kept {
            if self.kept.len() < KEPT_ERRORS {
                self.kept.push(e);
            }
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn into_parts(self) -> (Vec<String>, usize) {
        (self.kept, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(p99: f64) -> LatencySummary {
        LatencySummary {
            count: 10,
            min_ms: 1.0,
            mean_ms: 2.0,
            p50_ms: 2.0,
            p99_ms: p99,
            p999_ms: p99,
            max_ms: p99,
        }
    }

    fn connect_report() -> BenchReport {
        BenchReport {
            broker: "certmq".into(),
            started_at: "2025-01-01T00:00:00Z".into(),
            elapsed_s: 1.5,
            broker_cpu_s: Some(1.0),
            sim_cpu_s: None,
            config: serde_json::json!({ "connections": 10 }),
            results: Results::Connect(ConnectResult {
                connections: 10,
                concurrency: 2,
                ok: 10,
                failed: 0,
                rate_per_s: 1234.5,
                connect: Some(summary(9.0)),
                handshake: Some(summary(8.0)),
                connack: Some(summary(1.0)),
                connect_curve: vec![(0.0, 1.0), (2.0, 9.0)],
            }),
            errors: vec![],
            error_count: 0,
        }
    }

    #[test]
    fn json_is_flat_with_a_scenario_tag_and_roundtrips() {
        let r = connect_report();
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["scenario"], "connect");
        assert_eq!(v["broker"], "certmq");
        assert_eq!(v["rate_per_s"], 1234.5);
        assert_eq!(v["connect"]["p99_ms"], 9.0);
        let back: BenchReport = serde_json::from_value(v).expect("parse back");
        assert_eq!(back, r);
    }

    #[test]
    fn names_and_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let r = connect_report();
        let files = r.write(dir.path()).expect("write");
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["certmq-connect.json", "certmq-connect-latency.svg"]
        );
        let text = std::fs::read_to_string(&files[0]).expect("read");
        let back: BenchReport = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, r);
        let mut t = r;
        t.results = Results::Throughput(ThroughputResult {
            qos: 1,
            publishers: 2,
            payload_bytes: 64,
            window: 4,
            measure_s: 1.0,
            sent: 5,
            received: 5,
            missing: 0,
            rate_per_s: 5.0,
            latency: None,
            latency_curve: vec![],
            rate_series: vec![],
            orgs: 1,
            foreign: 0,
            per_org: vec![],
            broker_cpu_pct: None,
            sim_cpu_pct: None,
        });
        assert_eq!(t.results.name(), "throughput-qos1");
        assert_eq!(t.plots().len(), 2);
        if let Results::Throughput(x) = &mut t.results {
            x.orgs = 8;
        }
        assert_eq!(t.results.name(), "throughput-qos1-orgs8");
        assert!(t.plots()[0].title.ends_with("2 publishers, 8 orgs"));
        // Reports written before multi-org runs read as one org.
        let mut v = serde_json::to_value(&t).expect("json");
        for k in [
            "orgs",
            "foreign",
            "per_org",
            "broker_cpu_pct",
            "sim_cpu_pct",
        ] {
            v.as_object_mut().expect("object").remove(k);
        }
        let old: BenchReport = serde_json::from_value(v).expect("old report");
        assert_eq!(old.results.name(), "throughput-qos1");
    }

    #[test]
    fn error_log_keeps_the_first_and_counts_all() {
        let mut log = ErrorLog::default();
        for i in 0..30 {
            log.push(format!("e{i}"));
        }
        let mut other = ErrorLog::default();
        other.push("late");
        log.merge(other);
        assert_eq!(log.count(), 31);
        let (kept, count) = log.into_parts();
        assert_eq!(count, 31);
        assert_eq!(kept.len(), KEPT_ERRORS);
        assert_eq!(kept[0], "e0");
    }
}
