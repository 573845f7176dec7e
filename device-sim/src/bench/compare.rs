//! `certmq-sim compare`: the same scenarios against mosquitto and certmq, on this
//! machine, with the same CA and the same server certificate, one fresh broker process
//! per scenario; then a markdown table of both brokers' figures, their ratio and the
//! targets, written into `docs/benchmarks.md`.
//!
//! * mosquitto (2.x from the distribution) gets a TLS listener on a free loopback port
//!   with `require_certificate true`, `use_identity_as_username true` and
//!   `set_tcp_nodelay true`, the simulator's CA as `cafile` and a P-256 server
//!   certificate for `<org>.messaging.localhost` signed by that CA.
//! * certmq (`certmq serve` on free ports, a temp data dir) gets the org, the same CA
//!   and the same server certificate + key through its admin API.
//! * Scenarios with persistent sessions (`durable`, `offline`) run mosquitto with
//!   `persistence true` in its temp dir (default `autosave_interval`): a periodic
//!   snapshot, not an fsync per message as certmq does — the comparison favours
//!   mosquitto there.
//! * With `orgs` > 1, QoS 1 fan-in also runs with the publishers split over that many
//!   orgs, one application each: certmq gets orgs `<org>`, `org2`, …, each with the same
//!   CA and its own server certificate for `<org>.messaging.localhost` from that CA;
//!   mosquitto, which has no orgs, gets one topic tree per org (`<org>/iot-2/…`, each
//!   application subscribed to `<org>/iot-2/#`).
//! * `bridge` starts, besides the broker under test (the *edge*), an upstream mosquitto
//!   of its own CA requiring client certificates, and gives the edge a bridge to it:
//!   certmq through its admin API (a client certificate, `POST /orgs/{org}/bridges`),
//!   mosquitto through its `connection` section. See [`super::bridge`].
//! * With at least two CPUs and `taskset` available, the broker runs on CPU 0
//!   (`taskset -c 0`); run the simulator itself on CPU 1 (`taskset -c 1 certmq-sim
//!   compare`, as `bench/compare.sh` does). `bridge`'s upstream runs on CPU 1 too.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use super::bridge::{self, Upstream};
use super::overload::{self, OverloadCurve, OverloadPoint};
use super::{
    nofile_limit, BenchReport, BenchTarget, BridgeConfig, BridgeResult, ConnectConfig, FloodConfig,
    IdleConfig, LatencySummary, OfflineConfig, OfflineResult, PubackConfig, PubackResult,
    ReloadConfig, Results, ResumeConfig, Scenario, ThroughputConfig, ThroughputResult,
};
use crate::admin::AdminClient;
use crate::certs::{ClientCert, ClientCertOptions, TestCa};
use crate::fleet::APP_EVENT_FILTER;

/// Marks the generated part of the benchmarks document.
pub const BEGIN_MARK: &str = "<!-- certmq-sim compare: begin (generated, do not edit) -->";
/// End of the generated part.
pub const END_MARK: &str = "<!-- certmq-sim compare: end -->";
/// Admin token of the certmq started by `compare`.
const TOKEN: &str = "certmq-sim-compare";
const DOMAIN: &str = "messaging.localhost";

/// Everything `compare` needs to know.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// The `certmq` binary (release build).
    pub certmq_bin: PathBuf,
    /// The `mosquitto` binary.
    pub mosquitto_bin: PathBuf,
    /// Reports, charts, certificates and broker logs go here.
    pub out: PathBuf,
    /// The markdown document to update (its generated section), if any.
    pub doc: Option<PathBuf>,
    pub org: String,
    /// `throughput`: with more than 1, QoS 1 fan-in runs once more with the publishers
    /// split over this many orgs (`org`, then `org2`, …).
    pub orgs: usize,
    /// Run the brokers under `taskset -c 0`.
    pub pin: bool,
    /// Scenarios to run, out of [`ALL_SCENARIOS`].
    pub scenarios: Vec<String>,
    pub connect: ConnectConfig,
    /// Its `qos` and `orgs` are ignored: fan-in runs at QoS 0 and at QoS 1 with one org,
    /// and at QoS 1 with [`CompareOptions::orgs`] orgs when that is above 1.
    pub throughput: ThroughputConfig,
    pub idle: IdleConfig,
    pub resume: ResumeConfig,
    pub flood: FloodConfig,
    /// Publishers, payload and run lengths of `inflight` and `overload` (its `inflight`
    /// and `rate` are set per run).
    pub puback: PubackConfig,
    /// `inflight`: the windows to measure, unpaced.
    pub inflight_windows: Vec<usize>,
    /// `overload`: the window of the capacity run and of every load level.
    pub overload_inflight: usize,
    /// `overload`: offered rates in % of the broker's own capacity.
    pub overload_percents: Vec<u32>,
    /// `durable`: the publishers' window (the plain run with a clean-session
    /// application uses it too).
    pub durable_inflight: usize,
    /// `durable`: the paced runs offer this % of certmq's unpaced durable delivered rate,
    /// to both brokers.
    pub durable_percent: u32,
    /// `offline`: sessions, messages per session, sample.
    pub offline: OfflineConfig,
    pub reload_iterations: usize,
    /// The command line, quoted in the document.
    pub command_line: String,
}

/// All scenario names, in the order they run.
pub const ALL_SCENARIOS: [&str; 11] = [
    "connect",
    "throughput",
    "idle",
    "resume",
    "flood",
    "reload",
    "inflight",
    "durable",
    "overload",
    "offline",
    "bridge",
];
/// `bridge`: the paced runs offer this % of certmq's unpaced delivered rate, to both.
const BRIDGE_PERCENT: u32 = 50;

/// A broker process started for one scenario.
struct Running {
    child: Child,
    addr: SocketAddr,
    admin_url: Option<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Certificates shared by both brokers.
struct Material {
    ca: TestCa,
    ca_path: PathBuf,
    server_chain: String,
    server_key: String,
    server_path: PathBuf,
    server_key_path: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Broker {
    Mosquitto,
    Certmq,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Mosquitto => "mosquitto",
            Broker::Certmq => "certmq",
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn command(opts: &CompareOptions, program: &Path) -> Command {
    if opts.pin {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("0").arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// The `persistence` lines of mosquitto's config: off, or on in `dir` with the default
/// `autosave_interval` (a snapshot of the in-memory state every 1,800 s and at a clean
/// shutdown; no fsync per message).
fn mosquitto_persistence(persistent: bool, dir: &Path) -> String {
    if persistent {
        format!(
            "persistence true\npersistence_location {}/\n",
            dir.display()
        )
    } else {
        "persistence false\n".to_owned()
    }
}

/// Whether `scenario` needs a broker that keeps persistent sessions (mosquitto then
/// runs with persistence on).
fn wants_persistence(scenario: &Scenario) -> bool {
    match scenario {
        Scenario::Puback(c) => c.persistent_subscriber,
        Scenario::Offline(_) => true,
        _ => false,
    }
}

fn start_mosquitto(opts: &CompareOptions, m: &Material, persistent: bool) -> Result<Running> {
    start_mosquitto_with(opts, m, persistent, "")
}

/// [`start_mosquitto`] with `extra` lines at the end of its config (e.g. a bridge).
fn start_mosquitto_with(
    opts: &CompareOptions,
    m: &Material,
    persistent: bool,
    extra: &str,
) -> Result<Running> {
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let conf = dir.path().join("mosquitto.conf");
    let text = format!(
        "# written by certmq-sim compare\n\
         per_listener_settings false\n\
         {}\
         user root\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         listener {port} 127.0.0.1\n\
         cafile {}\n\
         certfile {}\n\
         keyfile {}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         set_tcp_nodelay true\n\
         allow_anonymous false\n\
         {extra}",
        mosquitto_persistence(persistent, dir.path()),
        m.ca_path.display(),
        m.server_path.display(),
        m.server_key_path.display()
    );
    std::fs::write(&conf, text)?;
    let log = std::fs::File::create(opts.out.join("mosquitto.log"))?;
    let child = command(opts, &opts.mosquitto_bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "start {} (Debian: apt-get install -y mosquitto)",
                opts.mosquitto_bin.display()
            )
        })?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut running = Running {
        child,
        addr,
        admin_url: None,
        _dir: dir,
    };
    for _ in 0..100 {
        if TcpStream::connect(addr).is_ok() {
            return Ok(running);
        }
        if let Some(status) = running.child.try_wait()? {
            bail!(
                "mosquitto exited ({status}); see {}",
                opts.out.join("mosquitto.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("mosquitto did not listen on {addr} within 5 s")
}

/// Starts certmq with `orgs` orgs: `opts.org` with the shared server certificate, then
/// `org2`, … with the same CA and a server certificate of their own from it.
async fn start_certmq(opts: &CompareOptions, m: &Material, orgs: usize) -> Result<Running> {
    let dir = tempfile::tempdir()?;
    let log = std::fs::File::create(opts.out.join("certmq.log"))?;
    let mut child = command(opts, &opts.certmq_bin)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args([
            "--mqtt",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            // The load comes from a handful of loopback addresses at rates no single
            // device address would reach: the per-address limits are off, as they would
            // be behind an L4 balancer.
            "--max-pending-per-ip",
            "0",
            "--handshakes-per-ip",
            "0",
            "--domain",
            DOMAIN,
            // No plain-MQTT listener: nothing here uses it, and its fixed port may be taken.
            "--mqtt-plain",
            "off",
        ])
        .env("CERTMQ_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "start {} (cargo build --release first)",
                opts.certmq_bin.display()
            )
        })?;
    let stdout = child.stdout.take().context("certmq stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("certmq ready ") => break line,
            Some(Ok(_)) => continue,
            _ => {
                let _ = child.kill();
                bail!(
                    "certmq exited before it was ready; see {}",
                    opts.out.join("certmq.log").display()
                )
            }
        }
    };
    // Keep draining stdout so certmq never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let field = |name: &str| -> Result<SocketAddr> {
        ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no {name}= in {ready:?}"))
    };
    let running = Running {
        addr: field("mqtt")?,
        admin_url: Some(format!("http://{}", field("admin")?)),
        child,
        _dir: dir,
    };
    let admin = AdminClient::new(running.admin_url.as_deref().unwrap_or_default(), TOKEN);
    for (k, org) in super::org_ids(&opts.org, orgs)?.iter().enumerate() {
        let own;
        let (chain, key) = if k == 0 {
            (&m.server_chain, &m.server_key)
        } else {
            own = m.ca.issue_server(&[format!("{org}.{DOMAIN}")])?;
            (&own.chain_pem, &own.key_pem)
        };
        admin.ensure_org(org).await?;
        admin.ensure_ca(org, &m.ca.pem()).await?;
        let id = admin.upload_server_cert(org, chain, key).await?;
        admin.activate_server_cert(org, &id).await?;
    }
    Ok(running)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Runs the comparison; returns every report (also written to `opts.out`).
pub async fn run(opts: &CompareOptions) -> Result<Vec<BenchReport>> {
    for s in &opts.scenarios {
        if !ALL_SCENARIOS.contains(&s.as_str()) {
            bail!(
                "unknown scenario {s:?} (known: {})",
                ALL_SCENARIOS.join(", ")
            );
        }
    }
    let wants = |s: &str| opts.scenarios.iter().any(|x| x == s);
    if wants("durable") && !(1..=1_000).contains(&opts.durable_percent) {
        bail!("durable: the paced share must be in 1..=1000 % of certmq's unpaced rate");
    }
    if wants("offline") {
        opts.offline.validate()?;
    }
    if wants("throughput") && opts.orgs > 1 {
        super::org_ids(&opts.org, opts.orgs)?;
        multi_org(&opts.throughput, opts.orgs).validate()?;
    }
    std::fs::create_dir_all(&opts.out)?;
    let out = opts.out.canonicalize()?;
    let ca = TestCa::new("certmq-sim compare CA")?;
    let sni = format!("{}.{DOMAIN}", opts.org);
    let server = ca.issue_server(std::slice::from_ref(&sni))?;
    let m = Material {
        ca_path: out.join("ca.pem"),
        server_path: out.join("server.pem"),
        server_key_path: out.join("server-key.pem"),
        server_chain: server.chain_pem.clone(),
        server_key: server.key_pem.clone(),
        ca,
    };
    std::fs::write(&m.ca_path, m.ca.pem())?;
    write_private(&out.join("ca-key.pem"), &m.ca.key_pem())?;
    std::fs::write(&m.server_path, &m.server_chain)?;
    write_private(&m.server_key_path, &m.server_key)?;

    let mut idle = opts.idle.clone();
    let fd_room = usize::try_from(nofile_limit().saturating_sub(200)).unwrap_or(usize::MAX);
    if wants("idle") && idle.connections > fd_room {
        eprintln!(
            "idle: {} connections do not fit the open-file limit ({}); using {fd_room}",
            idle.connections,
            nofile_limit()
        );
        idle.connections = fd_room;
    }
    let mut plan: Vec<(Scenario, Vec<Broker>)> = Vec::new();
    let both = vec![Broker::Mosquitto, Broker::Certmq];
    if wants("connect") {
        plan.push((Scenario::Connect(opts.connect.clone()), both.clone()));
    }
    if wants("throughput") {
        for t in throughput_runs(&opts.throughput, opts.orgs) {
            plan.push((Scenario::Throughput(t), both.clone()));
        }
    }
    if wants("idle") {
        plan.push((Scenario::Idle(idle), both.clone()));
    }
    if wants("resume") {
        plan.push((Scenario::Resume(opts.resume.clone()), both.clone()));
    }
    if wants("flood") {
        plan.push((Scenario::Flood(opts.flood.clone()), both.clone()));
    }
    if wants("reload") {
        // The admin URL is filled in per run below.
        let r = ReloadConfig::new("http://127.0.0.1:1", TOKEN, opts.reload_iterations);
        plan.push((Scenario::Reload(r), vec![Broker::Certmq]));
    }
    if wants("inflight") {
        for &inflight in &opts.inflight_windows {
            let c = PubackConfig {
                inflight,
                rate: 0,
                ..opts.puback.clone()
            };
            plan.push((Scenario::Puback(c), both.clone()));
        }
    }

    let mut reports = Vec::new();
    for (scenario, brokers) in plan {
        for broker in brokers {
            reports.push(run_on(opts, &m, &out, broker, &scenario).await?);
        }
    }
    if wants("durable") {
        durable_runs(opts, &m, &out, &mut reports).await?;
    }
    let mut curves = Vec::new();
    if wants("overload") {
        for broker in both {
            curves.push(overload_curve(opts, &m, &out, broker, &mut reports).await?);
        }
        overload::write(&out, &reports, &curves)?;
    } else if wants("inflight") {
        overload::write(&out, &reports, &curves)?;
    }
    if wants("offline") {
        for broker in [Broker::Mosquitto, Broker::Certmq] {
            let scenario = Scenario::Offline(opts.offline.clone());
            reports.push(run_on(opts, &m, &out, broker, &scenario).await?);
        }
    }
    if wants("bridge") {
        bridge_runs(opts, &m, &out, &mut reports).await?;
    }
    if let Some(doc) = &opts.doc {
        let section = markdown(&reports, &curves, &environment(opts), &opts.command_line);
        update_doc(doc, &section)?;
        eprintln!("updated {}", doc.display());
    }
    Ok(reports)
}

/// The fan-in runs of `throughput`: QoS 0 and QoS 1 with one org, then QoS 1 over
/// `orgs` orgs when that is above 1.
fn throughput_runs(base: &ThroughputConfig, orgs: usize) -> Vec<ThroughputConfig> {
    let mut runs: Vec<ThroughputConfig> = [0, 1]
        .map(|qos| ThroughputConfig {
            qos,
            orgs: 1,
            ..base.clone()
        })
        .into();
    if orgs > 1 {
        runs.push(multi_org(base, orgs));
    }
    runs
}

/// The QoS 1 fan-in of `base` over `orgs` orgs.
fn multi_org(base: &ThroughputConfig, orgs: usize) -> ThroughputConfig {
    ThroughputConfig {
        qos: 1,
        orgs,
        ..base.clone()
    }
}

/// Orgs `scenario` needs on the broker.
fn scenario_orgs(scenario: &Scenario) -> usize {
    match scenario {
        Scenario::Throughput(t) => t.orgs,
        _ => 1,
    }
}

/// `running` as a benchmark target: org `opts.org` and its SNI name, the broker's pid.
fn broker_target(
    opts: &CompareOptions,
    m: &Material,
    broker: Broker,
    running: &Running,
) -> BenchTarget {
    let sni = format!("{}.{DOMAIN}", opts.org);
    let mut target = BenchTarget::new(
        broker.name(),
        running.addr,
        &opts.org,
        &sni,
        &m.server_chain,
    );
    target.broker_pid = Some(running.child.id());
    target
}

/// Starts a fresh `broker`, runs `scenario` against it, stops it; writes the report.
async fn run_on(
    opts: &CompareOptions,
    m: &Material,
    out: &Path,
    broker: Broker,
    scenario: &Scenario,
) -> Result<BenchReport> {
    let running = match broker {
        Broker::Mosquitto => start_mosquitto(opts, m, wants_persistence(scenario))?,
        Broker::Certmq => start_certmq(opts, m, scenario_orgs(scenario)).await?,
    };
    let mut target = broker_target(opts, m, broker, &running);
    if broker == Broker::Mosquitto {
        // No Watson topic rewriting there: the application takes everything, and a
        // device subscribes to the application's command topic itself.
        target.app_filter = "iot-2/#".into();
        target.watson_topics = false;
        // No orgs either: several orgs get a topic tree each.
        target.prefix_org_topics = true;
    }
    let mut scenario = scenario.clone();
    if let (Scenario::Reload(r), Some(url)) = (&mut scenario, &running.admin_url) {
        r.admin_url = url.clone();
    }
    eprintln!("== {} {:?}", broker.name(), scenario);
    // Let the fresh broker settle (and the previous one's sockets go).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = super::run(&target, &m.ca, &scenario)
        .await
        .with_context(|| format!("{} against {}", scenario_name(&scenario), broker.name()))?;
    drop(running);
    report.write(out)?;
    eprintln!("{}", headline(&report));
    Ok(report)
}

/// `overload` for one broker: its capacity (delivered msgs/s of an unpaced
/// PUBACK-driven run; the `inflight` scenario's run is reused when it had the same
/// parameters), then one paced run per load level, each against a fresh broker so
/// that no backlog carries over from one level to the next.
async fn overload_curve(
    opts: &CompareOptions,
    m: &Material,
    out: &Path,
    broker: Broker,
    reports: &mut Vec<BenchReport>,
) -> Result<OverloadCurve> {
    let base = PubackConfig {
        inflight: opts.overload_inflight,
        rate: 0,
        ..opts.puback.clone()
    };
    let reused = reports.iter().find_map(|r| match &r.results {
        Results::Puback(p) if r.broker == broker.name() && r.config == config_json(&base) => {
            Some(p.clone())
        }
        _ => None,
    });
    let capacity = match reused {
        Some(p) => p,
        None => {
            let report = run_on(opts, m, out, broker, &Scenario::Puback(base.clone())).await?;
            let Results::Puback(p) = &report.results else {
                bail!("overload: capacity run returned {}", report.results.name());
            };
            let p = p.clone();
            reports.push(report);
            p
        }
    };
    let mut points = Vec::new();
    for (percent, rate) in overload::rates(capacity.delivered_per_s, &opts.overload_percents) {
        let cfg = PubackConfig {
            rate,
            ..base.clone()
        };
        let report = run_on(opts, m, out, broker, &Scenario::Puback(cfg)).await?;
        if let Results::Puback(p) = &report.results {
            points.push(OverloadPoint::new(percent, p));
        }
        reports.push(report);
    }
    Ok(OverloadCurve {
        broker: broker.name().to_owned(),
        inflight: base.inflight,
        capacity_per_s: capacity.delivered_per_s,
        points,
    })
}

/// `durable`: for each broker an unpaced PUBACK-driven run with a clean-session
/// application (reused from `inflight` when it ran with the same parameters) and one with
/// a persistent-session application; then both again, paced at `durable_percent` % of
/// certmq's unpaced durable delivered rate (the same rate for both brokers).
async fn durable_runs(
    opts: &CompareOptions,
    m: &Material,
    out: &Path,
    reports: &mut Vec<BenchReport>,
) -> Result<()> {
    let plain = PubackConfig {
        inflight: opts.durable_inflight,
        rate: 0,
        persistent_subscriber: false,
        ..opts.puback.clone()
    };
    let durable = PubackConfig {
        persistent_subscriber: true,
        ..plain.clone()
    };
    let brokers = [Broker::Mosquitto, Broker::Certmq];
    for broker in brokers {
        for c in [&plain, &durable] {
            let ran = reports
                .iter()
                .any(|r| r.broker == broker.name() && r.config == config_json(c));
            if !ran {
                reports.push(run_on(opts, m, out, broker, &Scenario::Puback(c.clone())).await?);
            }
        }
    }
    let capacity = reports.iter().rev().find_map(|r| match &r.results {
        Results::Puback(p) if r.broker == "certmq" && r.config == config_json(&durable) => {
            Some(p.delivered_per_s)
        }
        _ => None,
    });
    let Some(&(_, rate)) = capacity
        .map(|c| overload::rates(c, &[opts.durable_percent]))
        .unwrap_or_default()
        .first()
    else {
        eprintln!("durable: certmq delivered nothing unpaced; no paced runs");
        return Ok(());
    };
    for c in [&durable, &plain] {
        let paced = PubackConfig { rate, ..c.clone() };
        for broker in brokers {
            reports.push(run_on(opts, m, out, broker, &Scenario::Puback(paced.clone())).await?);
        }
    }
    Ok(())
}

/// The upstream side of `bridge`: its own CA, a server certificate for
/// [`bridge::UPSTREAM_NAME`] and 127.0.0.1 (mosquitto's bridge checks the address it
/// dials), and the client certificate both edges' bridges present; all as files in `out`.
struct UpstreamMaterial {
    ca: TestCa,
    ca_path: PathBuf,
    server_chain: String,
    server_path: PathBuf,
    server_key_path: PathBuf,
    bridge: ClientCert,
    bridge_path: PathBuf,
    bridge_key_path: PathBuf,
}

impl UpstreamMaterial {
    fn new(out: &Path) -> Result<Self> {
        let ca = TestCa::new("certmq-sim compare upstream CA")?;
        let server =
            ca.issue_server(&[bridge::UPSTREAM_NAME.to_owned(), "127.0.0.1".to_owned()])?;
        let bridge = ca.issue_client("certmq-sim-edge-bridge", ClientCertOptions::default())?;
        let up = Self {
            ca_path: out.join("upstream-ca.pem"),
            server_chain: server.chain_pem.clone(),
            server_path: out.join("upstream.pem"),
            server_key_path: out.join("upstream-key.pem"),
            bridge_path: out.join("bridge.pem"),
            bridge_key_path: out.join("bridge-key.pem"),
            ca,
            bridge,
        };
        std::fs::write(&up.ca_path, up.ca.pem())?;
        std::fs::write(&up.server_path, &server.chain_pem)?;
        write_private(&up.server_key_path, &server.key_pem)?;
        std::fs::write(&up.bridge_path, &up.bridge.chain_pem)?;
        write_private(&up.bridge_key_path, &up.bridge.key_pem)?;
        Ok(up)
    }
}

/// The upstream mosquitto's config: TLS with client certificates of its own CA, and
/// persistence, so that the subscriber's session and its queue survive a restart; queues
/// large enough that the upstream never drops what a bridge delivers.
fn upstream_conf(port: u16, dir: &Path, up: &UpstreamMaterial) -> String {
    format!(
        "# written by certmq-sim compare: the upstream of `bridge`\n\
         per_listener_settings false\n\
         persistence true\n\
         persistence_location {}/\n\
         user root\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         max_queued_messages 1000000\n\
         max_inflight_messages 1000\n\
         listener {port} 127.0.0.1\n\
         cafile {}\n\
         certfile {}\n\
         keyfile {}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         set_tcp_nodelay true\n\
         allow_anonymous false\n",
        dir.display(),
        up.ca_path.display(),
        up.server_path.display(),
        up.server_key_path.display()
    )
}

/// The lines mosquitto as the edge gets for its bridge: a window of 100 like certmq's
/// bridge, the queue limit of the run, the upstream checked against its CA and address,
/// and `edge/<type>/<id>/…` forwarded as `fleet/<type>/<id>/…`. `cleansession false`:
/// otherwise mosquitto keeps nothing for the bridge while it is disconnected. Notices
/// go to the log too: they show when the bridge connects.
fn edge_bridge_conf(
    upstream: SocketAddr,
    queue_limit: Option<u64>,
    up: &UpstreamMaterial,
) -> String {
    let queue = queue_limit.map_or_else(String::new, |q| format!("max_queued_messages {q}\n"));
    format!(
        "max_inflight_messages 100\n\
         {queue}\
         log_type notice\n\
         connection upstream\n\
         address {upstream}\n\
         bridge_protocol_version mqttv311\n\
         remote_clientid mosquitto-edge-bridge\n\
         cleansession false\n\
         notifications false\n\
         bridge_cafile {}\n\
         bridge_certfile {}\n\
         bridge_keyfile {}\n\
         bridge_insecure false\n\
         topic sensor/# out 1 {} fleet/\n",
        up.ca_path.display(),
        up.bridge_path.display(),
        up.bridge_key_path.display(),
        bridge::LOCAL_PREFIX
    )
}

/// `bridge`: unpaced for both edges, then both paced at [`BRIDGE_PERCENT`] % of
/// certmq's unpaced delivered rate, then the queue-while-down run for both.
async fn bridge_runs(
    opts: &CompareOptions,
    m: &Material,
    out: &Path,
    reports: &mut Vec<BenchReport>,
) -> Result<()> {
    let up = UpstreamMaterial::new(out)?;
    let full = BridgeConfig {
        publishers: opts.puback.publishers,
        warmup_ms: opts.puback.warmup_ms,
        measure_ms: opts.puback.measure_ms,
        ..BridgeConfig::default()
    };
    let brokers = [Broker::Certmq, Broker::Mosquitto];
    for broker in brokers {
        reports.push(bridge_on(opts, m, &up, out, broker, &full).await?);
    }
    let capacity = reports.iter().rev().find_map(|r| match &r.results {
        Results::Bridge(b) if r.broker == "certmq" && b.rate == 0 && b.outage.is_none() => {
            Some(b.delivered_per_s)
        }
        _ => None,
    });
    match capacity
        .map(|c| overload::rates(c, &[BRIDGE_PERCENT]))
        .unwrap_or_default()
        .first()
    {
        Some(&(_, rate)) => {
            let paced = BridgeConfig { rate, ..full };
            for broker in brokers {
                reports.push(bridge_on(opts, m, &up, out, broker, &paced).await?);
            }
        }
        None => eprintln!("bridge: certmq delivered nothing unpaced; no paced runs"),
    }
    let outage = BridgeConfig {
        publishers: opts.puback.publishers,
        ..BridgeConfig::outage()
    };
    for broker in brokers {
        reports.push(bridge_on(opts, m, &up, out, broker, &outage).await?);
    }
    Ok(())
}

/// One `bridge` run: a fresh upstream and a fresh `broker` as the edge, bridged to it.
async fn bridge_on(
    opts: &CompareOptions,
    m: &Material,
    up: &UpstreamMaterial,
    out: &Path,
    broker: Broker,
    cfg: &BridgeConfig,
) -> Result<BenchReport> {
    let up_dir = tempfile::tempdir()?;
    let up_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let conf = up_dir.path().join("upstream.conf");
    std::fs::write(&conf, upstream_conf(up_addr.port(), up_dir.path(), up))?;
    let mut upstream = Upstream::start(
        opts.mosquitto_bin.clone(),
        conf,
        out.join("upstream-mosquitto.log"),
        opts.pin.then_some(1),
        up_addr,
    )
    .await?;
    let (running, bridge_id) = match broker {
        Broker::Mosquitto => {
            let extra = edge_bridge_conf(up_addr, cfg.queue_limit, up);
            let running = start_mosquitto_with(opts, m, false, &extra)?;
            (running, None)
        }
        Broker::Certmq => {
            let running = start_certmq(opts, m, 1).await?;
            let admin = AdminClient::new(running.admin_url.as_deref().unwrap_or_default(), TOKEN);
            let id = certmq_bridge(&admin, &opts.org, up_addr, cfg.queue_limit, up).await?;
            (running, Some((admin, id)))
        }
    };
    let mut edge = broker_target(opts, m, broker, &running);
    edge.watson_topics = broker == Broker::Certmq;
    let sink = BenchTarget::new(
        "upstream",
        up_addr,
        &opts.org,
        bridge::UPSTREAM_NAME,
        &up.server_chain,
    );
    eprintln!("== {} bridge {cfg:?}", broker.name());
    // Let the fresh brokers settle and the bridge connect (mosquitto's at its start).
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let ends = bridge::Ends {
        edge: &edge,
        edge_ca: &m.ca,
        sink: &sink,
        sink_ca: &up.ca,
    };
    let mut report = bridge::run(&ends, cfg, &mut upstream)
        .await
        .with_context(|| format!("bridge against {}", broker.name()))?;
    if let (Some((admin, id)), Results::Bridge(b)) = (&bridge_id, &mut report.results) {
        b.bridge_status = admin
            .get(&format!("/orgs/{}/bridges/{id}", opts.org))
            .await
            .ok()
            .map(|v| {
                let keep = ["state", "forwarded", "queued", "failures", "last_error"];
                keep.iter()
                    .map(|k| ((*k).to_owned(), v[*k].clone()))
                    .collect()
            });
        b.edge_dropped = admin
            .metrics()
            .await
            .ok()
            .map(|text| dropped_total(&text, &opts.org));
    }
    drop(running);
    drop(upstream);
    report.write(out)?;
    eprintln!("{}", headline(&report));
    Ok(report)
}

/// Sets certmq's bridge up through the admin API: the queue limit (raised with the
/// platform token), the client certificate, the bridge with one forward rule; waits until
/// it is connected. Returns the bridge's id.
async fn certmq_bridge(
    admin: &AdminClient,
    org: &str,
    upstream: SocketAddr,
    queue_limit: Option<u64>,
    up: &UpstreamMaterial,
) -> Result<String> {
    if let Some(q) = queue_limit {
        admin
            .put(
                &format!("/orgs/{org}/limits"),
                serde_json::json!({ "max_queued_messages_per_session": q }),
            )
            .await?;
    }
    let cert = admin
        .post(
            &format!("/orgs/{org}/client-certs"),
            serde_json::json!({
                "certificate": up.bridge.chain_pem,
                "private_key": up.bridge.key_pem,
            }),
        )
        .await?;
    let cert_id = cert["id"]
        .as_str()
        .context("client certificate without id")?;
    let created = admin
        .post(
            &format!("/orgs/{org}/bridges"),
            serde_json::json!({
                "name": "upstream",
                "url": format!("mqtts://{upstream}"),
                "server_name": bridge::UPSTREAM_NAME,
                "ca_certificates": up.ca.pem(),
                "client_cert": cert_id,
                "forward": [{
                    "filter": APP_EVENT_FILTER,
                    "topic": bridge::FORWARD_TOPIC,
                    "qos": 1,
                }],
            }),
        )
        .await?;
    let id = created["id"]
        .as_str()
        .context("bridge without id")?
        .to_owned();
    let mut last = serde_json::Value::Null;
    for _ in 0..100 {
        last = admin.get(&format!("/orgs/{org}/bridges/{id}")).await?;
        if last["state"] == "connected" {
            return Ok(id);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "certmq's bridge did not connect within 10 s: state {}, last_error {}",
        last["state"],
        last["last_error"]
    )
}

/// The sum of `certmq_dropped_total` over `org`'s series in a Prometheus text.
fn dropped_total(metrics: &str, org: &str) -> u64 {
    let label = format!("org=\"{org}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("certmq_dropped_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

fn config_json(c: &PubackConfig) -> serde_json::Value {
    serde_json::to_value(c).unwrap_or_default()
}

fn scenario_name(s: &Scenario) -> &'static str {
    match s {
        Scenario::Connect(_) => "connect",
        Scenario::Throughput(_) => "throughput",
        Scenario::Idle(_) => "idle",
        Scenario::Resume(_) => "resume",
        Scenario::Reload(_) => "reload",
        Scenario::Flood(_) => "flood",
        Scenario::Puback(c) if c.persistent_subscriber => "durable",
        Scenario::Puback(_) => "puback",
        Scenario::Offline(_) => "offline",
    }
}

/// One line about a report, for the console.
pub fn headline(r: &BenchReport) -> String {
    let errors = if r.error_count > 0 {
        format!(
            " ({} errors, first: {})",
            r.error_count,
            r.errors.first().map_or("", String::as_str)
        )
    } else {
        String::new()
    };
    let body = match &r.results {
        Results::Connect(c) => format!(
            "{:.0} connects/s, {}, {} failed",
            c.rate_per_s,
            percentiles(c.connect.as_ref()),
            c.failed
        ),
        Results::Throughput(t) => throughput_headline(t),
        Results::Idle(i) => format!(
            "{} idle connections ({} alive), {} KiB RSS each",
            i.connected,
            i.alive,
            num(i.rss_per_connection_kib)
        ),
        Results::Resume(s) => format!(
            "{:.0} connects/s, {} resumed / {} full ({:.0}% of reconnects resumed)",
            s.rate_per_s,
            s.resumed,
            s.full,
            s.resumed_fraction * 100.0
        ),
        Results::Reload(x) => format!(
            "CA off p50 {} max {} ms; CA on p50 {} max {} ms; server cert p50 {} max {} ms",
            num(x.ca_deactivate.p50_ms),
            num(x.ca_deactivate.max_ms),
            num(x.ca_activate.p50_ms),
            num(x.ca_activate.max_ms),
            num(x.server_cert_activate.p50_ms),
            num(x.server_cert_activate.max_ms)
        ),
        Results::Flood(f) => format!(
            "in {:.0} msgs/s, out {:.0} msgs/s, {} lost, {} undelivered after the drain, peak RSS {} MiB",
            f.in_per_s,
            f.out_per_s,
            f.lost,
            f.undelivered,
            num(f.peak_rss_kib.map(|k| k as f64 / 1024.0))
        ),
        Results::Puback(p) => puback_headline(p),
        Results::Offline(o) => offline_headline(o),
        Results::Bridge(b) => bridge_headline(b),
    };
    format!("{} {}: {body}{errors}", r.broker, r.results.name())
}

/// `QoS 1: … msgs/s, p50 … ms, … missing` of a fan-in; over several orgs also each
/// org's rate, foreign messages and the broker's CPU.
fn throughput_headline(t: &ThroughputResult) -> String {
    let mut s = format!(
        "QoS {}: {:.0} msgs/s, {}, {} missing",
        t.qos,
        t.rate_per_s,
        percentiles(t.latency.as_ref()),
        t.missing
    );
    if t.orgs > 1 {
        let each: Vec<String> = t
            .per_org
            .iter()
            .map(|o| format!("{} {:.0}", o.org, o.rate_per_s))
            .collect();
        let _ = write!(
            s,
            ", {} foreign; {} orgs: {}; CPU broker {} %, load generator {} %",
            t.foreign,
            t.orgs,
            each.join(", "),
            num(t.broker_cpu_pct),
            num(t.sim_cpu_pct)
        );
    }
    s
}

/// `offered … acked … delivered msgs/s, p50 … ms, … lost` of a PUBACK-driven run.
fn puback_headline(p: &PubackResult) -> String {
    format!(
        "offered {:.0}, acked {:.0}, delivered {:.0} msgs/s, {} max {} ms, {} lost, {} duplicates, peak RSS {} MiB",
        p.offered_per_s,
        p.acked_per_s,
        p.delivered_per_s,
        percentiles(p.latency.as_ref()),
        num(p.latency.as_ref().map(|l| l.max_ms)),
        p.lost,
        p.duplicates,
        num(p.peak_rss_kib.map(|k| k as f64 / 1024.0))
    )
}

/// What a `bridge` run measured at the upstream, and what the outage did.
fn bridge_headline(b: &BridgeResult) -> String {
    let mut s = format!(
        "offered {:.0}, acked {:.0}, delivered upstream {:.0} msgs/s, {} max {} ms, {} missing, {} duplicates of {} acked, CPU edge {} % upstream {} %",
        b.offered_per_s,
        b.acked_per_s,
        b.delivered_per_s,
        percentiles(b.latency.as_ref()),
        num(b.latency.as_ref().map(|l| l.max_ms)),
        b.missing,
        b.duplicates,
        b.acked,
        num(b.edge_cpu_pct),
        num(b.upstream_cpu_pct)
    );
    if let Some(o) = &b.outage {
        let _ = write!(
            s,
            "; upstream down {} s: {} written meanwhile, backlog {} ({} never arrived), {} delivered after the restart, first after {} s, drained after {} s",
            num(Some(o.down_s)),
            o.sent_while_down,
            o.backlog,
            o.backlog_missing,
            o.delivered_after_restart,
            num(o.first_after_restart_s),
            num(o.drain_s)
        );
    }
    if let Some(d) = b.edge_dropped {
        let _ = write!(s, "; certmq dropped {d}");
    }
    if !b.missing_ranges.is_empty() {
        let _ = write!(s, "; never received: {}", b.missing_ranges.join(", "));
    }
    if let Some(st) = &b.bridge_status {
        let _ = write!(
            s,
            "; bridge {} forwarded {} queued {} failures {}",
            st["state"], st["forwarded"], st["queued"], st["failures"]
        );
    }
    s
}

/// What an `offline` run found: memory, queueing time, the sample's count.
fn offline_headline(o: &OfflineResult) -> String {
    format!(
        "{} sessions ({} failed), {} KiB RSS each; {} queued in {} s ({:.0}/s), {} B RSS each; \
         sample {}/{} complete, {} of {} received, {} duplicates, {} session present",
        o.sessions,
        o.session_failed,
        num(o.rss_per_session_kib),
        o.queued,
        num(Some(o.queue_s)),
        o.queue_rate_per_s,
        num(o.rss_per_message_bytes),
        o.complete,
        o.sample,
        o.sample_received,
        o.sample_expected,
        o.duplicates,
        o.sessions_present
    )
}

/// `p50 … p99 … p99.9 … ms` of a latency summary, for [`headline`].
pub(super) fn percentiles(l: Option<&LatencySummary>) -> String {
    format!(
        "p50 {} p99 {} p99.9 {} ms",
        num(l.map(|l| l.p50_ms)),
        num(l.map(|l| l.p99_ms)),
        num(l.map(|l| l.p999_ms))
    )
}

/// A number for tables: 3 significant digits below 100, whole numbers above; `–` for none.
pub(super) fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 100.0 => {
            let whole = v.round() as i64;
            // Thousands separators for readability.
            let s = whole.abs().to_string();
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i).is_multiple_of(3) {
                    out.push(',');
                }
                out.push(c);
            }
            if whole < 0 {
                format!("-{out}")
            } else {
                out
            }
        }
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

pub(super) fn ratio(certmq: Option<f64>, mosquitto: Option<f64>) -> String {
    match (certmq, mosquitto) {
        (Some(c), Some(m)) if m > 0.0 => format!("{:.2}×", c / m),
        _ => "–".into(),
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "–",
    }
}

/// The machine and versions, for the document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Environment {
    pub date: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub mosquitto: String,
    pub certmq_rev: String,
    pub pinned: bool,
    pub nofile: u64,
}

/// CPUs online on this machine (`/sys/devices/system/cpu/online`, e.g. `0-1`), whatever
/// this process's affinity; falls back to the CPUs this process may use.
pub fn online_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(&s))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Counts a kernel CPU list such as `0-3,6,8-9`.
fn count_cpu_list(list: &str) -> Option<usize> {
    list.trim().split(',').try_fold(0, |n, part| {
        let count = match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
        Some(n + count)
    })
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some(text.trim().to_owned())
}

fn environment(opts: &CompareOptions) -> Environment {
    let cpu = output("lscpu", &[])
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Model name:").map(|v| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "unknown".into());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let mosquitto = output(&opts.mosquitto_bin.to_string_lossy(), &["-h"])
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    let rev = output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    Environment {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        cpu,
        cpus: online_cpus(),
        memory_gib,
        kernel: output("uname", &["-r"]).unwrap_or_default(),
        mosquitto,
        certmq_rev: if dirty {
            format!("{rev} (+ uncommitted changes)")
        } else {
            rev
        },
        pinned: opts.pin,
        nofile: nofile_limit(),
    }
}

/// The generated section: environment, then one table row per metric.
pub fn markdown(
    reports: &[BenchReport],
    curves: &[OverloadCurve],
    env: &Environment,
    command_line: &str,
) -> String {
    let find = |broker: &str, name: &str| {
        reports
            .iter()
            .find(|r| r.broker == broker && r.results.name() == name)
            .map(|r| &r.results)
    };
    let mut rows: Vec<[String; 6]> = Vec::new();
    let mut row =
        |metric: &str, m: String, c: String, ratio: String, target: &str, ok: Option<bool>| {
            rows.push([
                metric.to_owned(),
                m,
                c,
                ratio,
                target.to_owned(),
                verdict(ok).to_owned(),
            ]);
        };
    let pct = |l: &Option<LatencySummary>| {
        l.as_ref().map_or_else(
            || "–".to_owned(),
            |l| {
                format!(
                    "{} / {} / {}",
                    num(Some(l.p50_ms)),
                    num(Some(l.p99_ms)),
                    num(Some(l.p999_ms))
                )
            },
        )
    };
    if let (Some(Results::Connect(m)), Some(Results::Connect(c))) =
        (find("mosquitto", "connect"), find("certmq", "connect"))
    {
        let r = c.rate_per_s / m.rate_per_s.max(1e-9);
        row(
            &format!(
                "mTLS connects/s (full handshake + CONNECT → CONNACK, {} conns, concurrency {})",
                c.connections, c.concurrency
            ),
            num(Some(m.rate_per_s)),
            num(Some(c.rate_per_s)),
            ratio(Some(c.rate_per_s), Some(m.rate_per_s)),
            "≥ 3,000/s and ≥ 1.5× mosquitto",
            Some(c.rate_per_s >= 3000.0 && r >= 1.5),
        );
        row(
            "connect latency p50 / p99 / p99.9, ms (TCP connect → CONNACK)",
            pct(&m.connect),
            pct(&c.connect),
            ratio(
                c.connect.as_ref().map(|l| l.p99_ms),
                m.connect.as_ref().map(|l| l.p99_ms),
            ),
            "p99 < 20 ms",
            c.connect.as_ref().map(|l| l.p99_ms < 20.0),
        );
        row(
            "CONNECT → CONNACK alone p50 / p99 / p99.9, ms",
            pct(&m.connack),
            pct(&c.connack),
            ratio(
                c.connack.as_ref().map(|l| l.p99_ms),
                m.connack.as_ref().map(|l| l.p99_ms),
            ),
            "",
            None,
        );
    }
    for qos in [0u8, 1] {
        let name = format!("throughput-qos{qos}");
        if let (Some(Results::Throughput(m)), Some(Results::Throughput(c))) =
            (find("mosquitto", &name), find("certmq", &name))
        {
            let r = c.rate_per_s / m.rate_per_s.max(1e-9);
            row(
                &format!(
                    "QoS {qos} fan-in msgs/s ({} publishers → 1 app, window {} each, {} B)",
                    c.publishers, c.window, c.payload_bytes
                ),
                num(Some(m.rate_per_s)),
                num(Some(c.rate_per_s)),
                ratio(Some(c.rate_per_s), Some(m.rate_per_s)),
                if qos == 1 { "≥ 1.2× mosquitto" } else { "" },
                (qos == 1).then_some(r >= 1.2),
            );
            row(
                &format!("QoS {qos} end-to-end latency p50 / p99 / p99.9, ms"),
                pct(&m.latency),
                pct(&c.latency),
                ratio(
                    c.latency.as_ref().map(|l| l.p99_ms),
                    m.latency.as_ref().map(|l| l.p99_ms),
                ),
                if qos == 1 { "p99 < 10 ms" } else { "" },
                (qos == 1).then(|| c.latency.as_ref().is_some_and(|l| l.p99_ms < 10.0)),
            );
            row(
                &format!("QoS {qos} messages missing (of sent)"),
                format!("{} of {}", m.missing, m.sent),
                format!("{} of {}", c.missing, c.sent),
                String::new(),
                "0",
                Some(c.missing == 0),
            );
        }
    }
    multi_org_rows(reports, env.pinned, &mut row);
    if let (Some(Results::Idle(m)), Some(Results::Idle(c))) =
        (find("mosquitto", "idle"), find("certmq", "idle"))
    {
        row(
            &format!("broker RSS per idle mTLS connection, KiB ({} connections held; {} answered PINGREQ)", c.connected, c.alive),
            num(m.rss_per_connection_kib),
            num(c.rss_per_connection_kib),
            ratio(c.rss_per_connection_kib, m.rss_per_connection_kib),
            "≤ 12 KiB",
            c.rss_per_connection_kib.map(|k| k <= 12.0),
        );
        row(
            "idle: connections opened per second (concurrency, with RSS sampling)",
            num(Some(m.connect_rate_per_s)),
            num(Some(c.connect_rate_per_s)),
            ratio(Some(c.connect_rate_per_s), Some(m.connect_rate_per_s)),
            "",
            None,
        );
    }
    if let (Some(Results::Resume(m)), Some(Results::Resume(c))) =
        (find("mosquitto", "resume"), find("certmq", "resume"))
    {
        row(
            &format!(
                "reconnect storm connects/s ({} devices × {}, resumption on)",
                c.devices, c.connections_per_device
            ),
            num(Some(m.rate_per_s)),
            num(Some(c.rate_per_s)),
            ratio(Some(c.rate_per_s), Some(m.rate_per_s)),
            "",
            None,
        );
        row(
            "reconnects resumed (TLS session resumption)",
            format!("{:.0}%", m.resumed_fraction * 100.0),
            format!("{:.0}%", c.resumed_fraction * 100.0),
            String::new(),
            "",
            None,
        );
        row(
            "resumed connect latency p50 / p99 / p99.9, ms",
            pct(&m.resumed_latency),
            pct(&c.resumed_latency),
            ratio(
                c.resumed_latency.as_ref().map(|l| l.p99_ms),
                m.resumed_latency.as_ref().map(|l| l.p99_ms),
            ),
            "",
            None,
        );
    }
    if let (Some(Results::Flood(m)), Some(Results::Flood(c))) =
        (find("mosquitto", "flood"), find("certmq", "flood"))
    {
        row(
            &format!("publisher flood ({} QoS 1 publishers → 1 subscriber reading {}/s): msgs/s in / out", c.publishers, c.subscriber_rate),
            format!("{} / {}", num(Some(m.in_per_s)), num(Some(m.out_per_s))),
            format!("{} / {}", num(Some(c.in_per_s)), num(Some(c.out_per_s))),
            String::new(),
            "",
            None,
        );
        row(
            "publisher flood: lost (acknowledged, skipped in delivery) of acknowledged",
            format!("{} of {}", m.lost, m.published),
            format!("{} of {}", c.lost, c.published),
            String::new(),
            "0",
            Some(c.lost == 0),
        );
        row(
            "publisher flood: still undelivered when the drain ended",
            m.undelivered.to_string(),
            c.undelivered.to_string(),
            String::new(),
            "0",
            Some(c.undelivered == 0),
        );
        let mib = |f: &super::FloodResult| f.peak_rss_kib.map(|k| k as f64 / 1024.0);
        row(
            "publisher flood: peak broker RSS, MiB",
            num(mib(m)),
            num(mib(c)),
            ratio(mib(c), mib(m)),
            "bounded",
            None,
        );
    }
    if let Some(Results::Reload(r)) = find("certmq", "reload") {
        let cell = |s: &super::ReloadStat| format!("{} / {}", num(s.p50_ms), num(s.max_ms));
        let under = |s: &super::ReloadStat| s.max_ms.map(|m| m < 100.0);
        for (label, s) in [
            (
                "CA deactivated → next handshake refused, p50 / max ms",
                &r.ca_deactivate,
            ),
            (
                "CA activated → next handshake admitted, p50 / max ms",
                &r.ca_activate,
            ),
            (
                "server cert activated → presented, p50 / max ms",
                &r.server_cert_activate,
            ),
        ] {
            row(
                &format!(
                    "{label} ({} changes, {} stale handshakes)",
                    r.iterations, s.stale_handshakes
                ),
                "restart needed".into(),
                cell(s),
                String::new(),
                "< 100 ms",
                under(s),
            );
        }
    }
    durable_rows(reports, &mut row);
    offline_rows(reports, &mut row);
    bridge_rows(reports, &mut row);

    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN_MARK}");
    let _ = writeln!(md, "\n### Latest run\n");
    let _ = writeln!(md, "- command: `{command_line}`");
    let _ = writeln!(md, "- date: {}", env.date);
    let _ = writeln!(
        md,
        "- machine: {} × {}, {:.0} GiB RAM, Linux {}; open-file limit {}",
        env.cpus, env.cpu, env.memory_gib, env.kernel, env.nofile
    );
    let _ = writeln!(
        md,
        "- versions: {}; certmq {}",
        env.mosquitto, env.certmq_rev
    );
    let _ = writeln!(
        md,
        "- placement: {}",
        if env.pinned {
            "broker on CPU 0 (`taskset -c 0`), load generator on CPU 1"
        } else {
            "not pinned (broker and load generator share all CPUs)"
        }
    );
    if !rows.is_empty() {
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "| metric | mosquitto | certmq | certmq / mosquitto | target | |"
        );
        let _ = writeln!(md, "| --- | ---: | ---: | ---: | --- | --- |");
        for r in &rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                r[0], r[1], r[2], r[3], r[4], r[5]
            );
        }
    }
    md.push_str(&overload::inflight_table(reports));
    md.push_str(&overload::overload_table(curves));
    let failures: Vec<String> = reports
        .iter()
        .filter(|r| r.error_count > 0)
        .map(|r| {
            format!(
                "- {} {}: {} errors, e.g. `{}`",
                r.broker,
                r.results.name(),
                r.error_count,
                r.errors.first().map_or("", String::as_str)
            )
        })
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "\nErrors during the run:\n");
        for f in failures {
            let _ = writeln!(md, "{f}");
        }
    }
    let _ = writeln!(md, "\n{END_MARK}");
    md
}

/// A table row: metric, mosquitto, certmq, ratio, target, verdict.
type Row<'a> = dyn FnMut(&str, String, String, String, &str, Option<bool>) + 'a;

/// `p50 / p99 / p99.9` in ms, `–` without a summary.
fn pct_cell(l: Option<&LatencySummary>) -> String {
    l.map_or_else(
        || "–".to_owned(),
        |l| {
            format!(
                "{} / {} / {}",
                num(Some(l.p50_ms)),
                num(Some(l.p99_ms)),
                num(Some(l.p999_ms))
            )
        },
    )
}

/// The fan-in of `broker` at `qos` over several orgs (`multi`) or one.
fn find_throughput<'a>(
    reports: &'a [BenchReport],
    broker: &str,
    qos: u8,
    multi: bool,
) -> Option<&'a ThroughputResult> {
    reports.iter().rev().find_map(|r| match &r.results {
        Results::Throughput(t) if r.broker == broker && t.qos == qos && (t.orgs > 1) == multi => {
            Some(t)
        }
        _ => None,
    })
}

/// Rows of the QoS 1 fan-in over several orgs, next to the single-org one: total and
/// per-org delivered rates, the gain over one org, latency, missing/foreign messages and
/// the broker's CPU (which shows whether it used more than one core).
fn multi_org_rows(reports: &[BenchReport], pinned: bool, row: &mut Row<'_>) {
    let (Some(m), Some(c)) = (
        find_throughput(reports, "mosquitto", 1, true),
        find_throughput(reports, "certmq", 1, true),
    ) else {
        return;
    };
    let n = c.orgs;
    let share = if c.publishers.is_multiple_of(n) {
        format!("{} each", c.publishers / n)
    } else {
        format!("{}–{} each", c.publishers / n, c.publishers / n + 1)
    };
    row(
        &format!(
            "QoS 1 fan-in, {n} orgs, msgs/s over all orgs ({} publishers → {n} apps, one per org, {share}; window {} each, {} B; mosquitto: one topic tree per org)",
            c.publishers, c.window, c.payload_bytes
        ),
        num(Some(m.rate_per_s)),
        num(Some(c.rate_per_s)),
        ratio(Some(c.rate_per_s), Some(m.rate_per_s)),
        "",
        None,
    );
    let (m1, c1) = (
        find_throughput(reports, "mosquitto", 1, false),
        find_throughput(reports, "certmq", 1, false),
    );
    let gain = |multi: &ThroughputResult, one: Option<&ThroughputResult>| {
        one.map(|o| multi.rate_per_s / o.rate_per_s.max(1e-9))
    };
    let times = |g: Option<f64>| g.map_or_else(|| "–".to_owned(), |g| format!("{g:.2}×"));
    if m1.is_some() || c1.is_some() {
        row(
            &format!("QoS 1 fan-in, {n} orgs ÷ 1 org, msgs/s"),
            times(gain(m, m1)),
            times(gain(c, c1)),
            String::new(),
            "",
            None,
        );
    }
    let spread = |t: &ThroughputResult| {
        let rates = t.per_org.iter().map(|o| o.rate_per_s);
        match (rates.clone().reduce(f64::min), rates.reduce(f64::max)) {
            (Some(lo), Some(hi)) => format!("{} / {}", num(Some(lo)), num(Some(hi))),
            _ => "–".to_owned(),
        }
    };
    row(
        &format!("QoS 1 fan-in, {n} orgs: slowest / fastest org, msgs/s"),
        spread(m),
        spread(c),
        String::new(),
        "",
        None,
    );
    row(
        &format!("QoS 1 fan-in, {n} orgs: end-to-end latency p50 / p99 / p99.9, ms"),
        pct_cell(m.latency.as_ref()),
        pct_cell(c.latency.as_ref()),
        ratio(
            c.latency.as_ref().map(|l| l.p99_ms),
            m.latency.as_ref().map(|l| l.p99_ms),
        ),
        "p99 < 10 ms",
        Some(c.latency.as_ref().is_some_and(|l| l.p99_ms < 10.0)),
    );
    let lost = |t: &ThroughputResult| format!("{} / {} of {}", t.missing, t.foreign, t.sent);
    row(
        &format!("QoS 1 fan-in, {n} orgs: missing / from another org (of sent)"),
        lost(m),
        lost(c),
        String::new(),
        "0 / 0",
        Some(c.missing == 0 && c.foreign == 0),
    );
    let cpu = |multi: &ThroughputResult, one: Option<&ThroughputResult>| {
        format!(
            "{} / {}",
            num(one.and_then(|o| o.broker_cpu_pct)),
            num(multi.broker_cpu_pct)
        )
    };
    let sim_cpu = |multi: &ThroughputResult, one: Option<&ThroughputResult>| {
        format!(
            "{} / {}",
            num(one.and_then(|o| o.sim_cpu_pct)),
            num(multi.sim_cpu_pct)
        )
    };
    let limit = if pinned {
        "; the broker is pinned to one CPU, so at most 100 %"
    } else {
        ""
    };
    row(
        &format!("QoS 1 fan-in: broker CPU in the measured window, % of one core, 1 org / {n} orgs{limit}"),
        cpu(m, m1),
        cpu(c, c1),
        String::new(),
        "",
        None,
    );
    row(
        &format!(
            "QoS 1 fan-in: load generator CPU in the same window, % of one core, 1 org / {n} orgs"
        ),
        sim_cpu(m, m1),
        sim_cpu(c, c1),
        String::new(),
        "",
        None,
    );
}

/// The PUBACK-driven run of `broker` with a persistent-session application (`durable`)
/// or a clean-session one, at window `inflight` and `rate` (0: unpaced).
fn find_puback<'a>(
    reports: &'a [BenchReport],
    broker: &str,
    durable: bool,
    inflight: usize,
    rate: u64,
) -> Option<&'a PubackResult> {
    reports.iter().rev().find_map(|r| match &r.results {
        Results::Puback(p)
            if r.broker == broker
                && p.persistent_subscriber == durable
                && p.inflight == inflight
                && p.rate == rate =>
        {
            Some(p)
        }
        _ => None,
    })
}

/// Rows of `durable`: persistent-session application vs clean-session one, unpaced and
/// paced at a share of certmq's unpaced durable rate.
fn durable_rows(reports: &[BenchReport], row: &mut Row<'_>) {
    let Some(cd) = reports.iter().rev().find_map(|r| match &r.results {
        Results::Puback(p) if r.broker == "certmq" && p.persistent_subscriber && p.rate == 0 => {
            Some(p)
        }
        _ => None,
    }) else {
        return;
    };
    let w = cd.inflight;
    let Some(md) = find_puback(reports, "mosquitto", true, w, 0) else {
        return;
    };
    let lat_p99 = |p: Option<&PubackResult>| p.and_then(|p| p.latency.as_ref()).map(|l| l.p99_ms);
    let losses = |p: &PubackResult| {
        format!(
            "{} / {} / {} of {}",
            p.lost, p.duplicates, p.missing, p.acked
        )
    };
    row(
        &format!(
            "durable QoS 1 fan-in, delivered msgs/s ({} PUBACK-driven publishers, inflight {w}, unpaced → 1 application with a persistent session, {} B)",
            cd.publishers, cd.payload_bytes
        ),
        num(Some(md.delivered_per_s)),
        num(Some(cd.delivered_per_s)),
        ratio(Some(cd.delivered_per_s), Some(md.delivered_per_s)),
        "≥ mosquitto",
        Some(cd.delivered_per_s >= md.delivered_per_s),
    );
    let (mp, cp) = (
        find_puback(reports, "mosquitto", false, w, 0),
        find_puback(reports, "certmq", false, w, 0),
    );
    if mp.is_some() || cp.is_some() {
        row(
            "the same with a clean-session application (nothing written to disk), delivered msgs/s",
            num(mp.map(|p| p.delivered_per_s)),
            num(cp.map(|p| p.delivered_per_s)),
            ratio(cp.map(|p| p.delivered_per_s), mp.map(|p| p.delivered_per_s)),
            "",
            None,
        );
    }
    row(
        "durable, unpaced: end-to-end p50 / p99 / p99.9, ms",
        pct_cell(md.latency.as_ref()),
        pct_cell(cd.latency.as_ref()),
        ratio(lat_p99(Some(cd)), lat_p99(Some(md))),
        "",
        None,
    );
    row(
        "durable, unpaced: lost / duplicates / missing after the drain, of acknowledged",
        losses(md),
        losses(cd),
        String::new(),
        "0 lost, 0 missing",
        Some(cd.lost == 0 && cd.missing == 0),
    );
    let Some(cpd) = reports.iter().rev().find_map(|r| match &r.results {
        Results::Puback(p)
            if r.broker == "certmq" && p.persistent_subscriber && p.inflight == w && p.rate > 0 =>
        {
            Some(p)
        }
        _ => None,
    }) else {
        return;
    };
    let rate = cpd.rate;
    let percent = (rate as f64 * 100.0 / cd.delivered_per_s.max(1e-9)).round();
    let mpd = find_puback(reports, "mosquitto", true, w, rate);
    row(
        &format!(
            "durable at {percent:.0} % of certmq's unpaced durable rate ({} msgs/s offered to both): delivered msgs/s",
            num(Some(rate as f64))
        ),
        num(mpd.map(|p| p.delivered_per_s)),
        num(Some(cpd.delivered_per_s)),
        ratio(Some(cpd.delivered_per_s), mpd.map(|p| p.delivered_per_s)),
        "",
        None,
    );
    row(
        &format!("durable at {percent:.0} %: end-to-end p50 / p99 / p99.9, ms"),
        pct_cell(mpd.and_then(|p| p.latency.as_ref())),
        pct_cell(cpd.latency.as_ref()),
        ratio(lat_p99(Some(cpd)), lat_p99(mpd)),
        "p99 < 10 ms",
        Some(lat_p99(Some(cpd)).is_some_and(|p| p < 10.0)),
    );
    row(
        &format!("durable at {percent:.0} %: lost / duplicates / missing, of acknowledged"),
        mpd.map_or_else(|| "–".to_owned(), losses),
        losses(cpd),
        String::new(),
        "0 lost, 0 missing",
        Some(cpd.lost == 0 && cpd.missing == 0),
    );
    let (mpp, cpp) = (
        find_puback(reports, "mosquitto", false, w, rate),
        find_puback(reports, "certmq", false, w, rate),
    );
    if mpp.is_some() || cpp.is_some() {
        row(
            "clean-session application at the same rate: end-to-end p50 / p99 / p99.9, ms",
            pct_cell(mpp.and_then(|p| p.latency.as_ref())),
            pct_cell(cpp.and_then(|p| p.latency.as_ref())),
            ratio(lat_p99(cpp), lat_p99(mpp)),
            "",
            None,
        );
    }
}

/// Rows of `offline`: memory of offline persistent sessions and their queues, and what
/// the reconnected sample received.
fn offline_rows(reports: &[BenchReport], row: &mut Row<'_>) {
    let find = |broker: &str| {
        reports.iter().rev().find_map(|r| match &r.results {
            Results::Offline(o) if r.broker == broker => Some(o),
            _ => None,
        })
    };
    let (Some(m), Some(c)) = (find("mosquitto"), find("certmq")) else {
        return;
    };
    let mib = |k: Option<u64>| num(k.map(|k| k as f64 / 1024.0));
    let rss = |o: &OfflineResult| {
        format!(
            "{} / {} / {}",
            mib(o.rss_start_kib),
            mib(o.rss_before_kib),
            mib(o.rss_after_kib)
        )
    };
    row(
        &format!(
            "offline persistent sessions: broker RSS per empty session, KiB ({} devices, clean session 0, one QoS 1 subscription each)",
            c.devices
        ),
        num(m.rss_per_session_kib),
        num(c.rss_per_session_kib),
        ratio(c.rss_per_session_kib, m.rss_per_session_kib),
        "",
        None,
    );
    row(
        &format!(
            "offline: broker RSS per queued QoS 1 message, bytes ({} per session, {} B payload)",
            c.messages_per_device, c.payload_bytes
        ),
        num(m.rss_per_message_bytes),
        num(c.rss_per_message_bytes),
        ratio(c.rss_per_message_bytes, m.rss_per_message_bytes),
        "",
        None,
    );
    row(
        "offline: broker RSS at start / with empty sessions / all queued, MiB",
        rss(m),
        rss(c),
        ratio(
            c.rss_after_kib.map(|k| k as f64),
            m.rss_after_kib.map(|k| k as f64),
        ),
        "",
        None,
    );
    let queue = |o: &OfflineResult| {
        format!(
            "{} s ({} msgs/s)",
            num(Some(o.queue_s)),
            num(Some(o.queue_rate_per_s))
        )
    };
    row(
        &format!(
            "offline: time to queue {} commands (one application, inflight {}; first PUBLISH → last PUBACK)",
            c.queued, c.inflight
        ),
        queue(m),
        queue(c),
        ratio(Some(c.queue_rate_per_s), Some(m.queue_rate_per_s)),
        "",
        None,
    );
    let sample = |o: &OfflineResult| {
        format!(
            "{} of {} ({} duplicates, {} foreign; {}/{} session present)",
            o.sample_received,
            o.sample_expected,
            o.duplicates,
            o.foreign,
            o.sessions_present,
            o.sample
        )
    };
    row(
        &format!(
            "offline: {} devices reconnect (clean session 0): commands received of queued",
            c.sample
        ),
        sample(m),
        sample(c),
        String::new(),
        "all, once",
        Some(
            c.shortfall == 0
                && c.duplicates == 0
                && c.foreign == 0
                && c.sessions_present == c.sample,
        ),
    );
    row(
        "offline: reconnect → all of a device's commands, p50 / p99 / p99.9, ms",
        pct_cell(m.drain.as_ref()),
        pct_cell(c.drain.as_ref()),
        ratio(
            c.drain.as_ref().map(|l| l.p99_ms),
            m.drain.as_ref().map(|l| l.p99_ms),
        ),
        "",
        None,
    );
}

/// The `bridge` run of `broker`: unpaced, paced, or with the upstream down.
fn find_bridge<'a>(
    reports: &'a [BenchReport],
    broker: &str,
    which: fn(&BridgeResult) -> bool,
) -> Option<&'a BridgeResult> {
    reports.iter().rev().find_map(|r| match &r.results {
        Results::Bridge(b) if r.broker == broker && which(b) => Some(b),
        _ => None,
    })
}

/// The delivered-rate row (`label`) and the latency row of one pair of `bridge` runs
/// (`kind`: unpaced, paced).
fn bridge_rate_rows(
    row: &mut Row<'_>,
    label: &str,
    kind: &str,
    m: Option<&BridgeResult>,
    c: Option<&BridgeResult>,
) {
    let rate = |b: Option<&BridgeResult>| b.map(|b| b.delivered_per_s);
    let p99 = |b: Option<&BridgeResult>| b.and_then(|b| b.latency.as_ref()).map(|l| l.p99_ms);
    row(
        label,
        num(rate(m)),
        num(rate(c)),
        ratio(rate(c), rate(m)),
        "",
        None,
    );
    row(
        &format!("bridge, {kind}: end-to-end p50 / p99 / p99.9, ms"),
        pct_cell(m.and_then(|b| b.latency.as_ref())),
        pct_cell(c.and_then(|b| b.latency.as_ref())),
        ratio(p99(c), p99(m)),
        "",
        None,
    );
}

/// Rows of `bridge`: what reached the upstream unpaced and paced, and what the edge held
/// while the upstream was down.
fn bridge_rows(reports: &[BenchReport], row: &mut Row<'_>) {
    let unpaced: fn(&BridgeResult) -> bool = |b| b.rate == 0 && b.outage.is_none();
    let paced: fn(&BridgeResult) -> bool = |b| b.rate > 0 && b.outage.is_none();
    let down: fn(&BridgeResult) -> bool = |b| b.outage.is_some();
    let losses = |b: Option<&BridgeResult>| {
        b.map_or_else(
            || "–".to_owned(),
            |b| {
                let dropped = b
                    .edge_dropped
                    .map_or_else(String::new, |d| format!(" (dropped: {d})"));
                format!("{} / {} of {}{dropped}", b.missing, b.duplicates, b.acked)
            },
        )
    };
    let (m, c) = (
        find_bridge(reports, "mosquitto", unpaced),
        find_bridge(reports, "certmq", unpaced),
    );
    if let Some(any) = c.or(m) {
        let label = format!(
            "bridge: delivered msgs/s at an upstream mosquitto ({} PUBACK-driven QoS 1 publishers, inflight {}, unpaced, {} B → the edge → its bridge, QoS 1 → upstream → 1 subscriber)",
            any.publishers, any.inflight, any.payload_bytes
        );
        bridge_rate_rows(row, &label, "unpaced", m, c);
        row(
            "bridge, unpaced: acknowledged by the edge, msgs/s",
            num(m.map(|b| b.acked_per_s)),
            num(c.map(|b| b.acked_per_s)),
            ratio(c.map(|b| b.acked_per_s), m.map(|b| b.acked_per_s)),
            "",
            None,
        );
        row(
            "bridge, unpaced: missing upstream / duplicates, of acknowledged by the edge",
            losses(m),
            losses(c),
            String::new(),
            "",
            None,
        );
        let cpu = |b: Option<&BridgeResult>| {
            b.map_or_else(
                || "–".to_owned(),
                |b| format!("{} / {}", num(b.edge_cpu_pct), num(b.upstream_cpu_pct)),
            )
        };
        row(
            "bridge, unpaced: CPU of the edge / of the upstream in the window, % of one core",
            cpu(m),
            cpu(c),
            String::new(),
            "",
            None,
        );
    }
    let (mp, cp) = (
        find_bridge(reports, "mosquitto", paced),
        find_bridge(reports, "certmq", paced),
    );
    if let Some(any) = cp.or(mp) {
        let share = c.map_or_else(String::new, |c| {
            format!(
                "{:.0} % of certmq's unpaced rate, ",
                any.rate as f64 * 100.0 / c.delivered_per_s.max(1e-9)
            )
        });
        let label = format!(
            "bridge, paced at {share}{} msgs/s offered to both: delivered msgs/s",
            num(Some(any.rate as f64))
        );
        bridge_rate_rows(row, &label, "paced", mp, cp);
        row(
            "bridge, paced: missing upstream / duplicates, of acknowledged by the edge",
            losses(mp),
            losses(cp),
            String::new(),
            "0 missing",
            cp.map(|b| b.missing == 0),
        );
    }
    let (md, cd) = (
        find_bridge(reports, "mosquitto", down),
        find_bridge(reports, "certmq", down),
    );
    if let Some((any, o)) = cd.or(md).and_then(|b| Some((b, b.outage.as_ref()?))) {
        let after = |b: Option<&BridgeResult>| {
            b.and_then(|b| Some((b, b.outage.as_ref()?))).map_or_else(
                || "–".to_owned(),
                |(b, o)| {
                    format!(
                        "{} / {} / {} (backlog {})",
                        o.delivered_after_restart, b.missing, b.duplicates, o.backlog
                    )
                },
            )
        };
        row(
            &format!(
                "bridge, upstream stopped {} s while the devices publish {} msgs/s (QoS 1, queue limits raised to hold it): delivered after the restart / lost / duplicates",
                num(Some(o.down_s)),
                num(Some(any.rate as f64))
            ),
            after(md),
            after(cd),
            String::new(),
            "0 lost",
            cd.map(|b| b.missing == 0),
        );
        let times = |b: Option<&BridgeResult>| {
            b.and_then(|b| b.outage.as_ref()).map_or_else(
                || "–".to_owned(),
                |o| {
                    format!(
                        "{} / {}",
                        num(o.first_after_restart_s),
                        o.drain_s
                            .map_or_else(|| "never".to_owned(), |d| num(Some(d)))
                    )
                },
            )
        };
        row(
            "bridge, upstream back: restart → first message / → backlog delivered, s",
            times(md),
            times(cd),
            String::new(),
            "",
            None,
        );
    }
}

/// Replaces the generated section of `doc` (between [`BEGIN_MARK`] and [`END_MARK`]) with
/// `section`, or appends it when the document has none (creating the document if needed).
pub fn update_doc(doc: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(doc).unwrap_or_default();
    std::fs::write(doc, splice(&old, section)).with_context(|| format!("write {}", doc.display()))
}

fn splice(old: &str, section: &str) -> String {
    match (old.find(BEGIN_MARK), old.find(END_MARK)) {
        (Some(b), Some(e)) if b < e => {
            let mut after = &old[e + END_MARK.len()..];
            after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{section}{after}", &old[..b])
        }
        _ if old.is_empty() => format!("# Benchmarks\n\n{section}"),
        _ => format!("{}\n\n{section}", old.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{ConnectResult, LatencySummary};

    fn lat(p99: f64) -> Option<LatencySummary> {
        Some(LatencySummary {
            count: 100,
            min_ms: 0.5,
            mean_ms: 1.0,
            p50_ms: 1.0,
            p99_ms: p99,
            p999_ms: p99 * 2.0,
            max_ms: p99 * 3.0,
        })
    }

    fn connect(broker: &str, rate: f64, p99: f64) -> BenchReport {
        BenchReport {
            broker: broker.into(),
            started_at: String::new(),
            elapsed_s: 1.0,
            broker_cpu_s: None,
            sim_cpu_s: None,
            config: serde_json::Value::Null,
            results: Results::Connect(ConnectResult {
                connections: 1000,
                concurrency: 16,
                ok: 1000,
                failed: 0,
                rate_per_s: rate,
                connect: lat(p99),
                handshake: lat(p99),
                connack: lat(1.0),
                connect_curve: vec![],
            }),
            errors: vec![],
            error_count: 0,
        }
    }

    #[test]
    fn headline_names_rate_and_percentiles() {
        assert_eq!(
            headline(&connect("certmq", 3150.0, 12.5)),
            "certmq connect: 3150 connects/s, p50 1.00 p99 12.5 p99.9 25.0 ms, 0 failed"
        );
    }

    #[test]
    fn table_has_ratio_and_verdict() {
        let reports = vec![
            connect("mosquitto", 900.0, 30.0),
            connect("certmq", 3150.0, 12.5),
        ];
        let md = markdown(&reports, &[], &Environment::default(), "certmq-sim compare");
        assert!(
            md.starts_with(BEGIN_MARK) && md.trim_end().ends_with(END_MARK),
            "{md}"
        );
        let line = md
            .lines()
            .find(|l| l.contains("mTLS connects/s"))
            .expect("row");
        assert!(line.contains("| 900 | 3,150 | 3.50× |"), "{line}");
        assert!(line.ends_with("| met |"), "{line}");
        let line = md
            .lines()
            .find(|l| l.contains("connect latency"))
            .expect("row");
        assert!(line.contains("1.00 / 12.5 / 25.0"), "{line}");
        assert!(line.ends_with("| met |"), "{line}");

        let reports = vec![
            connect("mosquitto", 2500.0, 30.0),
            connect("certmq", 3100.0, 25.0),
        ];
        let md = markdown(&reports, &[], &Environment::default(), "x");
        let missed = md.lines().filter(|l| l.ends_with("| **missed** |")).count();
        assert_eq!(
            missed, 2,
            "1.24× is under 1.5× and p99 25 ms is over 20 ms: {md}"
        );
    }

    fn report(broker: &str, results: Results) -> BenchReport {
        BenchReport {
            results,
            ..connect(broker, 1.0, 1.0)
        }
    }

    fn puback(durable: bool, rate: u64, delivered: f64, p99: f64) -> Results {
        Results::Puback(PubackResult {
            publishers: 8,
            payload_bytes: 64,
            inflight: 100,
            rate,
            persistent_subscriber: durable,
            measure_s: 4.0,
            sent: 1000,
            acked: 1000,
            received: 1000,
            lost: 0,
            duplicates: 0,
            missing: 0,
            offered_per_s: delivered,
            acked_per_s: delivered,
            delivered_per_s: delivered,
            latency: lat(p99),
            latency_curve: vec![],
            rss_before_kib: None,
            peak_rss_kib: None,
            acked_series: vec![],
            delivered_series: vec![],
        })
    }

    #[test]
    fn durable_rows_compare_unpaced_and_paced() {
        let reports = vec![
            report("mosquitto", puback(false, 0, 9_000.0, 15.0)),
            report("mosquitto", puback(true, 0, 8_000.0, 20.0)),
            report("certmq", puback(false, 0, 80_000.0, 30.0)),
            report("certmq", puback(true, 0, 40_000.0, 25.0)),
            report("mosquitto", puback(true, 32_000, 7_900.0, 900.0)),
            report("certmq", puback(true, 32_000, 32_000.0, 6.5)),
            report("mosquitto", puback(false, 32_000, 8_800.0, 800.0)),
            report("certmq", puback(false, 32_000, 32_000.0, 2.5)),
        ];
        assert_eq!(reports[3].results.name(), "durable-w100");
        assert_eq!(reports[5].results.name(), "durable-w100-r32000");
        let md = markdown(&reports, &[], &Environment::default(), "x");
        let line = |needle: &str| {
            md.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no row {needle:?} in {md}"))
                .to_owned()
        };
        let l = line("durable QoS 1 fan-in");
        assert!(
            l.contains("| 8,000 | 40,000 | 5.00× | ≥ mosquitto | met |"),
            "{l}"
        );
        let l = line("clean-session application (nothing written");
        assert!(l.contains("| 9,000 | 80,000 | 8.89× |"), "{l}");
        let l = line("durable at 80 % of certmq's unpaced durable rate (32,000 msgs/s");
        assert!(l.contains("| 7,900 | 32,000 |"), "{l}");
        let l = line("durable at 80 %: end-to-end");
        assert!(l.contains("1.00 / 6.50 / 13.0"), "{l}");
        assert!(l.ends_with("| p99 < 10 ms | met |"), "{l}");
        let l = line("durable at 80 %: lost");
        assert!(l.contains("| 0 / 0 / 0 of 1000 |"), "{l}");
        let l = line("clean-session application at the same rate");
        assert!(l.contains("1.00 / 2.50 / 5.00"), "{l}");
        // The durable runs stay out of the inflight table.
        let inflight_rows = md.lines().filter(|l| l.starts_with("| 100 |")).count();
        assert_eq!(inflight_rows, 1, "{md}");
    }

    fn offline(rss_after_kib: u64, shortfall: u64) -> Results {
        Results::Offline(OfflineResult {
            devices: 10_000,
            messages_per_device: 100,
            payload_bytes: 64,
            inflight: 500,
            sessions: 10_000,
            session_failed: 0,
            sessions_per_s: 1_000.0,
            queued: 1_000_000,
            queue_s: 20.0,
            queue_rate_per_s: 50_000.0,
            rss_start_kib: Some(10_240),
            rss_before_kib: Some(20_480),
            rss_after_kib: Some(rss_after_kib),
            rss_per_session_kib: Some(1.024),
            rss_per_message_bytes: Some((rss_after_kib - 20_480) as f64 * 1024.0 / 1e6),
            sample: 100,
            sample_connected: 100,
            sessions_present: 100,
            sample_expected: 10_000,
            sample_received: 10_000 - shortfall,
            complete: 100 - usize::from(shortfall > 0),
            shortfall,
            duplicates: 0,
            foreign: 0,
            drain: lat(4.0),
            rss_series: vec![],
        })
    }

    #[test]
    fn offline_rows_and_headline() {
        let reports = vec![
            report("mosquitto", offline(20_480 + 195_313, 0)),
            report("certmq", offline(20_480 + 390_625, 3)),
        ];
        let md = markdown(&reports, &[], &Environment::default(), "x");
        let l = md
            .lines()
            .find(|l| l.contains("RSS per queued QoS 1 message"))
            .expect("row");
        assert!(l.contains("| 200 | 400 | 2.00× |"), "{l}");
        let l = md
            .lines()
            .find(|l| l.contains("devices reconnect"))
            .expect("row");
        assert!(l.contains("9997 of 10000"), "{l}");
        assert!(l.ends_with("| all, once | **missed** |"), "{l}");
        let h = headline(&reports[1]);
        assert!(
            h.starts_with("certmq offline: 10000 sessions (0 failed)"),
            "{h}"
        );
        assert!(h.contains("sample 99/100 complete"), "{h}");
    }

    fn fan_in(orgs: usize, rate: f64, cpu: f64) -> Results {
        Results::Throughput(ThroughputResult {
            qos: 1,
            publishers: 10,
            payload_bytes: 64,
            window: 10,
            measure_s: 10.0,
            sent: 1000,
            received: 1000,
            missing: 0,
            rate_per_s: rate,
            latency: lat(4.0),
            latency_curve: vec![],
            rate_series: vec![],
            orgs,
            foreign: 0,
            per_org: (0..orgs)
                .filter(|_| orgs > 1)
                .map(|k| crate::bench::OrgThroughput {
                    org: format!("org{}", k + 1),
                    publishers: 10 / orgs,
                    sent: 1000 / orgs as u64,
                    received: 1000 / orgs as u64,
                    missing: 0,
                    rate_per_s: rate / orgs as f64 + k as f64 * 10.0,
                    p99_ms: Some(4.0),
                })
                .collect(),
            broker_cpu_pct: Some(cpu),
            sim_cpu_pct: Some(90.0),
        })
    }

    #[test]
    fn multi_org_rows_sit_beside_the_single_org_fan_in() {
        let reports = vec![
            report("mosquitto", fan_in(1, 10_000.0, 99.0)),
            report("certmq", fan_in(1, 40_000.0, 98.0)),
            report("mosquitto", fan_in(4, 10_000.0, 99.0)),
            report("certmq", fan_in(4, 72_000.0, 185.0)),
        ];
        assert_eq!(reports[3].results.name(), "throughput-qos1-orgs4");
        let env = Environment::default();
        let md = markdown(&reports, &[], &env, "x");
        let lines: Vec<&str> = md.lines().collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no row {needle:?} in {md}"))
        };
        let single = at("QoS 1 fan-in msgs/s (10 publishers");
        let multi = at("QoS 1 fan-in, 4 orgs, msgs/s over all orgs");
        assert!(single < multi, "{md}");
        assert!(
            lines[single].contains("| 10,000 | 40,000 | 4.00× |"),
            "the single-org row is unchanged: {}",
            lines[single]
        );
        let l = lines[multi];
        assert!(
            l.contains("10 publishers → 4 apps, one per org, 2–3 each"),
            "{l}"
        );
        assert!(l.contains("| 10,000 | 72,000 | 7.20× |"), "{l}");
        assert!(lines[at("4 orgs ÷ 1 org")].contains("| 1.00× | 1.80× |"));
        let l = lines[at("slowest / fastest org")];
        assert!(l.contains("| 18,000 / 18,030 |"), "{l}");
        let l = lines[at("4 orgs: missing / from another org")];
        assert!(l.ends_with("| 0 / 0 of 1000 |  | 0 / 0 | met |"), "{l}");
        let l = lines[at("broker CPU in the measured window")];
        assert!(l.contains("| 99.0 / 99.0 | 98.0 / 185 |"), "{l}");
        assert!(!l.contains("pinned"), "{l}");
        let pinned = Environment {
            pinned: true,
            ..Environment::default()
        };
        let md = markdown(&reports, &[], &pinned, "x");
        assert!(md.contains("pinned to one CPU, so at most 100 %"), "{md}");
        // Without a multi-org run the table keeps its shape.
        let md = markdown(&reports[..2], &[], &env, "x");
        assert!(!md.contains("orgs"), "{md}");
        assert!(headline(&reports[3]).contains("4 orgs: org1 18000, org2 18010"));
    }

    #[test]
    fn throughput_runs_add_the_multi_org_run_only_when_asked() {
        let base = ThroughputConfig::default();
        let one = throughput_runs(&base, 1);
        assert_eq!(
            one.iter().map(|t| (t.qos, t.orgs)).collect::<Vec<_>>(),
            vec![(0, 1), (1, 1)]
        );
        let eight = throughput_runs(&base, 8);
        assert_eq!(
            eight.iter().map(|t| (t.qos, t.orgs)).collect::<Vec<_>>(),
            vec![(0, 1), (1, 1), (1, 8)]
        );
        assert_eq!(scenario_orgs(&Scenario::Throughput(eight[2].clone())), 8);
        assert_eq!(scenario_orgs(&Scenario::Flood(FloodConfig::default())), 1);
    }

    #[test]
    fn persistence_only_for_persistent_sessions() {
        let dir = Path::new("/tmp/m");
        assert_eq!(mosquitto_persistence(false, dir), "persistence false\n");
        assert_eq!(
            mosquitto_persistence(true, dir),
            "persistence true\npersistence_location /tmp/m/\n"
        );
        let durable = PubackConfig {
            persistent_subscriber: true,
            ..Default::default()
        };
        assert!(wants_persistence(&Scenario::Puback(durable)));
        assert!(!wants_persistence(&Scenario::Puback(
            PubackConfig::default()
        )));
        assert!(wants_persistence(&Scenario::Offline(
            OfflineConfig::default()
        )));
        assert!(ALL_SCENARIOS.contains(&"durable") && ALL_SCENARIOS.contains(&"offline"));
    }

    fn bridge(rate: u64, delivered: f64, missing: u64, outage: bool) -> Results {
        Results::Bridge(BridgeResult {
            publishers: 8,
            payload_bytes: 64,
            inflight: 100,
            rate,
            measure_s: 4.0,
            sent: 1000,
            acked: 1000,
            received: 1000 - missing,
            duplicates: 2,
            missing,
            missing_ranges: vec![],
            offered_per_s: delivered,
            acked_per_s: delivered,
            delivered_per_s: delivered,
            latency: lat(8.0),
            latency_curve: vec![],
            edge_cpu_pct: Some(90.0),
            upstream_cpu_pct: Some(40.0),
            edge_dropped: None,
            bridge_status: None,
            outage: outage.then_some(crate::bench::OutageResult {
                down_s: 5.0,
                sent_while_down: 10_000,
                backlog: 10_050,
                delivered_after_restart: 14_000,
                backlog_missing: 0,
                first_after_restart_s: Some(2.5),
                drain_s: Some(2.7),
            }),
            acked_series: vec![],
            delivered_series: vec![],
        })
    }

    #[test]
    fn bridge_rows_put_both_edges_side_by_side() {
        let mut certmq = report("certmq", bridge(0, 40_000.0, 3, false));
        if let Results::Bridge(b) = &mut certmq.results {
            b.edge_dropped = Some(3);
        }
        let reports = vec![
            certmq,
            report("mosquitto", bridge(0, 10_000.0, 500, false)),
            report("certmq", bridge(20_000, 20_000.0, 0, false)),
            report("mosquitto", bridge(20_000, 9_000.0, 11, false)),
            report("certmq", bridge(2_000, 2_000.0, 0, true)),
            report("mosquitto", bridge(2_000, 2_000.0, 7, true)),
        ];
        assert_eq!(reports[2].results.name(), "bridge-r20000");
        assert_eq!(reports[4].results.name(), "bridge-outage");
        let md = markdown(&reports, &[], &Environment::default(), "x");
        let line = |needle: &str| {
            md.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no row {needle:?} in {md}"))
                .to_owned()
        };
        let l = line("bridge: delivered msgs/s at an upstream mosquitto");
        assert!(l.contains("| 10,000 | 40,000 | 4.00× |"), "{l}");
        let l = line("bridge, unpaced: missing upstream");
        assert!(
            l.contains("| 500 / 2 of 1000 | 3 / 2 of 1000 (dropped: 3) |"),
            "{l}"
        );
        let l = line("bridge, paced at 50 % of certmq's unpaced rate, 20,000 msgs/s");
        assert!(l.contains("| 9,000 | 20,000 | 2.22× |"), "{l}");
        let l = line("bridge, paced: missing");
        assert!(l.ends_with("| 0 missing | met |"), "{l}");
        let l = line("bridge, upstream stopped 5.00 s while the devices publish 2,000 msgs/s");
        assert!(
            l.contains("| 14000 / 7 / 2 (backlog 10050) | 14000 / 0 / 2 (backlog 10050) |"),
            "{l}"
        );
        assert!(l.ends_with("| 0 lost | met |"), "{l}");
        let l = line("restart → first message");
        assert!(l.contains("| 2.50 / 2.70 | 2.50 / 2.70 |"), "{l}");
        assert!(headline(&reports[4]).contains("first after 2.50 s, drained after 2.70 s"));
        // Without bridge runs, no bridge rows.
        let md = markdown(&reports[..0], &[], &Environment::default(), "x");
        assert!(!md.contains("bridge"), "{md}");
    }

    #[test]
    fn bridge_configs_for_mosquitto() {
        let dir = tempfile::tempdir().expect("tmp");
        let up = UpstreamMaterial::new(dir.path()).expect("material");
        let conf = upstream_conf(18883, Path::new("/tmp/up"), &up);
        for line in [
            "listener 18883 127.0.0.1",
            "require_certificate true",
            "persistence true",
            "persistence_location /tmp/up/",
        ] {
            assert!(conf.lines().any(|l| l == line), "{line:?} in {conf}");
        }
        let addr: SocketAddr = ([127, 0, 0, 1], 18883).into();
        let edge = edge_bridge_conf(addr, Some(50_000), &up);
        for line in [
            "max_queued_messages 50000",
            "connection upstream",
            "address 127.0.0.1:18883",
            "bridge_insecure false",
            "cleansession false",
            "topic sensor/# out 1 edge/ fleet/",
        ] {
            assert!(edge.lines().any(|l| l == line), "{line:?} in {edge}");
        }
        assert!(edge.find("max_queued").expect("queue") < edge.find("connection").expect("c"));
        assert!(!edge_bridge_conf(addr, None, &up).contains("max_queued_messages"));
        assert!(ALL_SCENARIOS.contains(&"bridge"));
    }

    #[test]
    fn dropped_messages_of_one_org() {
        let text = "# TYPE certmq_dropped_total counter\n\
            certmq_dropped_total{org=\"acme\",reason=\"queue_full\"} 36380\n\
            certmq_dropped_total{org=\"acme\",reason=\"other\"} 2\n\
            certmq_dropped_total{org=\"org2\",reason=\"queue_full\"} 9\n";
        assert_eq!(dropped_total(text, "acme"), 36_382);
        assert_eq!(dropped_total(text, "org3"), 0);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(count_cpu_list("0-1\n"), Some(2));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("x"), None);
        assert!(online_cpus() >= 1);
    }

    #[test]
    fn numbers() {
        assert_eq!(num(None), "–");
        assert_eq!(num(Some(1234567.4)), "1,234,567");
        assert_eq!(num(Some(123.4)), "123");
        assert_eq!(num(Some(12.34)), "12.3");
        assert_eq!(num(Some(1.234)), "1.23");
        assert_eq!(ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(ratio(Some(3.0), Some(0.0)), "–");
    }

    #[test]
    fn splicing_keeps_the_prose() {
        let s1 = format!("{BEGIN_MARK}\nA\n{END_MARK}\n");
        let s2 = format!("{BEGIN_MARK}\nB\n{END_MARK}\n");
        let created = splice("", &s1);
        assert!(created.starts_with("# Benchmarks\n"));
        let doc = format!("# Title\n\nintro\n\n{s1}\n## After\n");
        let replaced = splice(&doc, &s2);
        assert_eq!(replaced, format!("# Title\n\nintro\n\n{s2}\n## After\n"));
        let appended = splice("# Title\n", &s2);
        assert_eq!(appended, format!("# Title\n\n{s2}"));
    }
}
