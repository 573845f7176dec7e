//! Benchmarks against any MQTT-over-mTLS broker on this machine: scenarios with fixed
//! counts and durations that stop by themselves, each producing a [`BenchReport`]
//! (JSON) and SVG charts.
//!
//! | scenario | measures |
//! | --- | --- |
//! | [`connect`](ConnectConfig) | full mTLS handshakes + CONNECT → CONNACK per second, latency percentiles |
//! | [`throughput`](ThroughputConfig) | fan-in: N devices → one application, QoS 0 or 1, msgs/s and end-to-end latency; with `orgs` > 1 the devices are split over several orgs, one application each |
//! | [`idle`](IdleConfig) | N idle mTLS connections, broker RSS per connection |
//! | [`resume`](ResumeConfig) | reconnect storm with TLS session resumption, resumed vs full handshakes |
//! | [`reload`](ReloadConfig) | certmq only: admin API change → first handshake that sees it |
//! | [`flood`](FloodConfig) | QoS 1 publishers flooding one slow subscriber: in/out rates, loss, broker peak RSS |
//! | [`puback`](PubackConfig) | fan-in with PUBACK-driven publishers (`inflight` each, optionally paced): offered/acknowledged/delivered rates, latency; with `persistent_subscriber`, the application has a persistent session (`durable`) |
//! | [`bridge`](BridgeConfig) | `compare` only: PUBACK-driven publishers → the broker → its outgoing bridge → an upstream mosquitto → one subscriber: delivered msgs/s, end-to-end latency, and what the broker holds while the upstream is down |
//! | [`offline`](OfflineConfig) | N offline persistent sessions with M queued QoS 1 messages each: broker RSS per session and per message, a sample reconnects and counts |
//!
//! Clients are the hand-written minimal MQTT 3.1.1 client of this module over
//! tokio-rustls (see `mqtt.rs` for why not rumqttc), with `TCP_NODELAY`, the SNI name
//! given explicitly, and client ids/topics valid for certmq's Watson rules
//! (`d:<org>:<type>:<id>` publishing `iot-2/evt/<e>/fmt/<f>`, application
//! `a:<org>:<app>`), so the same run works against certmq and against a broker without
//! topic rules (subscribe the application to `iot-2/#` there).
//!
//! Only loopback targets are accepted: these are load tests.
//! [`compare`] runs every scenario against mosquitto and certmq side by side.

mod bridge;
pub mod compare;
mod connect;
mod idle;
mod latency;
mod mqtt;
mod net;
mod offline;
mod overload;
mod plot;
mod proc;
mod reload;
mod report;
mod resume;
mod throughput;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::Serialize;
use tokio::task::JoinSet;

pub use bridge::BridgeConfig;
pub use connect::ConnectConfig;
pub use idle::IdleConfig;
pub use latency::{Latency, LatencySummary};
pub use net::SourceAddrs;
pub use offline::OfflineConfig;
pub use overload::{OverloadCurve, OverloadPoint};
pub use plot::{render_svg, Plot};
pub use proc::{cpu_seconds, peak_rss_kib, rss_kib};
pub use reload::ReloadConfig;
pub use report::{
    BenchReport, BridgeResult, ConnectResult, FloodResult, IdleResult, OfflineResult,
    OrgThroughput, OutageResult, PubackResult, ReloadResult, ReloadStat, Results, ResumeResult,
    ThroughputResult,
};
pub use resume::ResumeConfig;
pub use throughput::{FloodConfig, PubackConfig, ThroughputConfig, EVENT_TOPIC, MAX_ORGS};

use crate::certs::{ClientCertOptions, TestCa};
use crate::fleet::{APP_EVENT_FILTER, DEVICE_COMMAND_FILTER};
use report::ErrorLog;

/// How long one connection may take from TCP connect to CONNACK.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// MQTT keep-alive of benchmark clients: long, so idle connections need no PINGREQ
/// while a scenario runs.
const KEEP_ALIVE_SECS: u16 = 900;

/// The broker under test and how to reach it.
#[derive(Debug, Clone)]
pub struct BenchTarget {
    /// Label in reports and file names (`certmq`, `mosquitto`, …).
    pub broker: String,
    /// MQTT-over-TLS address; must be a loopback address.
    pub addr: SocketAddr,
    /// TLS server name to send, e.g. `acme.messaging.localhost`.
    pub sni: String,
    /// Org id, for client ids (`d:<org>:<type>:<id>`).
    pub org: String,
    /// Device type of the simulated devices.
    pub device_type: String,
    /// PEM the broker's certificate is checked against when `verify_server`.
    pub server_ca_pem: String,
    /// Verify the broker's certificate (costs the load generator one chain
    /// verification and one signature check per full handshake). Off by default in the
    /// CLI: the load generator shares the machine with the broker.
    pub verify_server: bool,
    /// Filter the application subscribes to: certmq's `iot-2/type/+/id/+/evt/+/fmt/+`,
    /// or e.g. `iot-2/#` on a broker without Watson topic rewriting.
    pub app_filter: String,
    /// The broker's process id, for RSS figures (`idle`, `flood`, `offline`).
    pub broker_pid: Option<u32>,
    /// The broker rewrites topics the Watson way (certmq): a device subscribes to its
    /// commands as `iot-2/cmd/+/fmt/+`. false (e.g. mosquitto): it subscribes to the
    /// application's topic itself, `iot-2/type/<t>/id/<d>/cmd/+/fmt/+`.
    pub watson_topics: bool,
    /// The broker keeps no org namespaces (e.g. mosquitto): with several orgs
    /// ([`BenchTarget::for_org`]) each org's topics and application filter are prefixed
    /// by `<org>/`, so that the orgs' trees stay apart as they do on certmq.
    pub prefix_org_topics: bool,
    /// Prefix of every topic the devices publish on (`""`, or `<org>/` from
    /// [`BenchTarget::for_org`] when `prefix_org_topics`).
    pub topic_prefix: String,
}

impl BenchTarget {
    /// A target with the defaults: device type `sensor`, no server verification,
    /// certmq's application filter, no pid.
    pub fn new(broker: &str, addr: SocketAddr, org: &str, sni: &str, server_ca_pem: &str) -> Self {
        Self {
            broker: broker.to_owned(),
            addr,
            sni: sni.to_owned(),
            org: org.to_owned(),
            device_type: "sensor".to_owned(),
            server_ca_pem: server_ca_pem.to_owned(),
            verify_server: false,
            app_filter: APP_EVENT_FILTER.to_owned(),
            broker_pid: None,
            watson_topics: true,
            prefix_org_topics: false,
            topic_prefix: String::new(),
        }
    }

    /// This target as seen by org `org` in a run over several orgs: client ids
    /// `…:<org>:…`; the SNI name's first label replaced by `org` when it is this
    /// target's org (`acme.messaging.localhost` → `org2.messaging.localhost`), otherwise
    /// kept; with `prefix_org_topics`, topics and the application filter under `<org>/`.
    pub fn for_org(&self, org: &str) -> BenchTarget {
        let sni = match self.sni.strip_prefix(&format!("{}.", self.org)) {
            Some(rest) => format!("{org}.{rest}"),
            None => self.sni.clone(),
        };
        let mut t = BenchTarget {
            org: org.to_owned(),
            sni,
            ..self.clone()
        };
        if self.prefix_org_topics {
            t.topic_prefix = format!("{org}/");
            t.app_filter = format!("{org}/{}", self.app_filter);
        }
        t
    }

    /// The topic an application publishes command `command` (format `bin`) to device
    /// `device_id` on: `iot-2/type/<t>/id/<d>/cmd/<command>/fmt/bin`, on every broker.
    pub fn command_topic(&self, device_id: &str, command: &str) -> String {
        format!(
            "iot-2/type/{}/id/{device_id}/cmd/{command}/fmt/bin",
            self.device_type
        )
    }

    /// The filter device `device_id` subscribes to for its commands: certmq's
    /// `iot-2/cmd/+/fmt/+`, or the application's topic with wildcards on a broker
    /// without Watson topic rewriting.
    pub fn device_command_filter(&self, device_id: &str) -> String {
        if self.watson_topics {
            DEVICE_COMMAND_FILTER.to_owned()
        } else {
            format!("iot-2/type/{}/id/{device_id}/cmd/+/fmt/+", self.device_type)
        }
    }

    /// Checks the target: loopback only, valid names.
    pub fn validate(&self) -> Result<()> {
        if !self.addr.ip().is_loopback() {
            bail!(
                "{} is not a loopback address: benchmarks only run against this machine",
                self.addr
            );
        }
        if !crate::fleet::is_org_id(&self.org) {
            bail!("invalid org id {:?}", self.org);
        }
        if !crate::fleet::is_name(&self.device_type) {
            bail!("invalid device type {:?}", self.device_type);
        }
        ServerName::try_from(self.sni.clone())
            .with_context(|| format!("invalid TLS server name {:?}", self.sni))?;
        Ok(())
    }

    fn dialer(&self, source: SourceAddrs) -> Result<net::Dialer> {
        Ok(net::Dialer {
            addr: self.addr,
            sni: ServerName::try_from(self.sni.clone())
                .with_context(|| format!("invalid TLS server name {:?}", self.sni))?,
            source,
        })
    }
}

/// The org ids of a run over `n` orgs: `first`, then `org2`, …, `org<n>`. Fails when
/// `first` is one of the generated ids or `n` is 0.
pub fn org_ids(first: &str, n: usize) -> Result<Vec<String>> {
    if n == 0 {
        bail!("orgs must be at least 1");
    }
    let ids: Vec<String> = std::iter::once(first.to_owned())
        .chain((2..=n).map(|k| format!("org{k}")))
        .collect();
    if ids[1..].iter().any(|id| id == first) {
        bail!(
            "org {first:?} is also one of the generated org ids org2..org{n}: pick another --org"
        );
    }
    Ok(ids)
}

/// A simulated client: its MQTT client id, its TLS configuration (certificate), and
/// whether it connects with a clean session (the default) or a persistent one.
pub(crate) struct SimClient {
    pub(crate) client_id: String,
    pub(crate) tls: Arc<ClientConfig>,
    /// CONNECT with clean session 1; false: clean session 0, a persistent session.
    pub(crate) clean_session: bool,
}

impl SimClient {
    /// Opens connection `index` as this client (TLS handshake, CONNECT → CONNACK) within
    /// [`OPEN_TIMEOUT`].
    async fn open(&self, dialer: &net::Dialer, index: usize) -> Result<net::Opened> {
        self.open_within(dialer, index, OPEN_TIMEOUT).await
    }

    /// [`SimClient::open`] within `timeout`.
    async fn open_within(
        &self,
        dialer: &net::Dialer,
        index: usize,
        timeout: Duration,
    ) -> Result<net::Opened> {
        net::open(
            dialer,
            index,
            self.tls.clone(),
            &self.client_id,
            KEEP_ALIVE_SECS,
            self.clean_session,
            timeout,
        )
        .await
    }
}

/// Waits for every worker in `set`, handing each one's outcome to `each` as it ends;
/// a worker that panicked or was cancelled is logged as "`what` worker failed".
async fn join_workers<T: 'static>(
    mut set: JoinSet<T>,
    what: &str,
    errors: &mut ErrorLog,
    mut each: impl FnMut(T, &mut ErrorLog),
) {
    while let Some(done) = set.join_next().await {
        match done {
            Ok(out) => each(out, errors),
            Err(e) => errors.push(format!("{what} worker failed: {e}")),
        }
    }
}

/// Mints `count` device certificates `d:<type>:<prefix><n>` (n from 1) from `ca`.
pub(crate) fn mint_devices(
    target: &BenchTarget,
    ca: &TestCa,
    prefix: &str,
    count: usize,
    resumption: bool,
) -> Result<Vec<SimClient>> {
    (1..=count)
        .map(|n| {
            let device_id = format!("{prefix}{n}");
            let cert = ca.issue_client(
                &format!("d:{}:{device_id}", target.device_type),
                ClientCertOptions::default(),
            )?;
            Ok(SimClient {
                client_id: format!("d:{}:{}:{device_id}", target.org, target.device_type),
                tls: net::client_config(
                    &cert,
                    &target.server_ca_pem,
                    target.verify_server,
                    resumption,
                )?,
                clean_session: true,
            })
        })
        .collect()
}

/// Mints the application certificate `a:<app_id>` from `ca`.
pub(crate) fn mint_app(target: &BenchTarget, ca: &TestCa, app_id: &str) -> Result<SimClient> {
    let cert = ca.issue_client(&format!("a:{app_id}"), ClientCertOptions::default())?;
    Ok(SimClient {
        client_id: format!("a:{}:{app_id}", target.org),
        tls: net::client_config(&cert, &target.server_ca_pem, target.verify_server, false)?,
        clean_session: true,
    })
}

/// A scenario and its parameters.
#[derive(Debug, Clone)]
pub enum Scenario {
    Connect(ConnectConfig),
    Throughput(ThroughputConfig),
    Idle(IdleConfig),
    Resume(ResumeConfig),
    Reload(ReloadConfig),
    Flood(FloodConfig),
    /// `throughput --driver puback`.
    Puback(PubackConfig),
    Offline(OfflineConfig),
}

impl Scenario {
    /// Checks the parameters before anything starts.
    pub fn validate(&self) -> Result<()> {
        match self {
            Scenario::Connect(c) => c.validate(),
            Scenario::Throughput(c) => c.validate(),
            Scenario::Idle(c) => c.validate(),
            Scenario::Resume(c) => c.validate(),
            Scenario::Reload(c) => c.validate(),
            Scenario::Flood(c) => c.validate(),
            Scenario::Puback(c) => c.validate(),
            Scenario::Offline(c) => c.validate(),
        }
    }

    fn config_json(&self) -> serde_json::Value {
        fn json<T: Serialize>(t: &T) -> serde_json::Value {
            serde_json::to_value(t).unwrap_or_default()
        }
        match self {
            Scenario::Connect(c) => json(c),
            Scenario::Throughput(c) => json(c),
            Scenario::Idle(c) => json(c),
            Scenario::Resume(c) => json(c),
            Scenario::Reload(c) => json(c),
            Scenario::Flood(c) => json(c),
            Scenario::Puback(c) => json(c),
            Scenario::Offline(c) => json(c),
        }
    }
}

/// Runs `scenario` against `target` with clients whose certificates `ca` issues (a CA
/// the broker trusts for the org). Fails when the run cannot start (bad parameters, the
/// application cannot connect); individual connection failures are counted in the
/// report.
pub async fn run(target: &BenchTarget, ca: &TestCa, scenario: &Scenario) -> Result<BenchReport> {
    target.validate()?;
    scenario.validate()?;
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let started = tokio::time::Instant::now();
    let broker_cpu = target.broker_pid.and_then(cpu_seconds);
    let sim_cpu = cpu_seconds(std::process::id());
    let mut errors = ErrorLog::default();
    let results = match scenario {
        Scenario::Connect(c) => Results::Connect(connect::run(target, ca, c, &mut errors).await?),
        Scenario::Throughput(c) => {
            Results::Throughput(throughput::run_fan_in(target, ca, c, &mut errors).await?)
        }
        Scenario::Idle(c) => Results::Idle(idle::run(target, ca, c, &mut errors).await?),
        Scenario::Resume(c) => Results::Resume(resume::run(target, ca, c, &mut errors).await?),
        Scenario::Reload(c) => Results::Reload(reload::run(target, ca, c, &mut errors).await?),
        Scenario::Flood(c) => {
            Results::Flood(throughput::run_flood(target, ca, c, &mut errors).await?)
        }
        Scenario::Puback(c) => {
            Results::Puback(throughput::run_puback(target, ca, c, &mut errors).await?)
        }
        Scenario::Offline(c) => Results::Offline(offline::run(target, ca, c, &mut errors).await?),
    };
    let (errors, error_count) = errors.into_parts();
    let used = |before: Option<f64>, pid: Option<u32>| Some(pid.and_then(cpu_seconds)? - before?);
    Ok(BenchReport {
        broker: target.broker.clone(),
        started_at,
        elapsed_s: started.elapsed().as_secs_f64(),
        broker_cpu_s: used(broker_cpu, target.broker_pid),
        sim_cpu_s: used(sim_cpu, Some(std::process::id())),
        config: scenario.config_json(),
        results,
        errors,
        error_count,
    })
}

/// Raises this process's open-file limit to its hard limit (each connection is a file);
/// returns the new soft limit.
pub fn raise_nofile_limit() -> Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX).context("raise RLIMIT_NOFILE")
}

/// This process's current open-file (soft) limit.
fn nofile_limit() -> u64 {
    rlimit::Resource::NOFILE
        .get()
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_start_with_the_given_org() {
        assert_eq!(org_ids("acme", 1).expect("ids"), vec!["acme"]);
        assert_eq!(
            org_ids("acme", 4).expect("ids"),
            vec!["acme", "org2", "org3", "org4"]
        );
        assert!(org_ids("acme", 0).is_err());
        assert!(org_ids("org3", 4).is_err(), "collides with a generated id");
        assert!(org_ids("org3", 2).is_ok());
    }

    #[test]
    fn a_target_per_org() {
        let addr: SocketAddr = ([127, 0, 0, 1], 8883).into();
        let certmq = BenchTarget::new("certmq", addr, "acme", "acme.messaging.localhost", "");
        let t = certmq.for_org("org2");
        assert_eq!(
            (t.org.as_str(), t.sni.as_str()),
            ("org2", "org2.messaging.localhost")
        );
        assert_eq!(
            t.app_filter, APP_EVENT_FILTER,
            "certmq keeps orgs apart itself"
        );
        assert_eq!(t.topic_prefix, "");
        let mut mosquitto = certmq.clone();
        mosquitto.app_filter = "iot-2/#".into();
        mosquitto.prefix_org_topics = true;
        mosquitto.sni = "broker.example".into();
        let t = mosquitto.for_org("org2");
        assert_eq!(
            t.sni, "broker.example",
            "an SNI name not of the org is kept"
        );
        assert_eq!(t.app_filter, "org2/iot-2/#");
        assert_eq!(t.topic_prefix, "org2/");
        assert_eq!(mosquitto.for_org("acme").topic_prefix, "acme/");
    }
}
