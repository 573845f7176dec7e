//! `certmq-sim`: device fleet simulator for certmq.
//!
//! * `provision` mints (or loads) a CA and writes device and application certificates as
//!   PEM files (private keys with mode 0600);
//! * `fleet` runs N devices and an application against a broker and prints what flows and
//!   a summary (exit status 2 when something did not arrive);
//! * `bench <scenario>` runs one benchmark scenario against a broker on this machine and
//!   writes a JSON report and SVG charts;
//! * `compare` runs the scenarios against mosquitto and certmq side by side and writes
//!   the table into docs/benchmarks.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use certmq_device_sim::bench::compare::{self, CompareOptions};
use certmq_device_sim::bench::{self, BenchTarget, Scenario};
use certmq_device_sim::provision::{self, read};
use certmq_device_sim::{run_fleet, BrokerTarget, FleetConfig, TestCa};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "certmq-sim",
    version,
    about = "Simulate X.509-authenticated MQTT devices against a certmq broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a CA (or reuse one) and device/application certificates into a directory.
    Provision(ProvisionArgs),
    /// Run a fleet of devices and one application against a broker.
    Fleet(FleetArgs),
    /// Run one benchmark scenario against a broker on this machine.
    Bench {
        #[command(subcommand)]
        scenario: BenchCommand,
    },
    /// Run the benchmarks against mosquitto and certmq side by side; update the table
    /// in docs/benchmarks.md.
    Compare(CompareArgs),
}

/// An existing CA to sign with.
#[derive(Args)]
struct CaArgs {
    /// CA certificate (PEM). With --ca-key: sign with this CA instead of minting one.
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// CA private key (PEM).
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
}

#[derive(Args)]
struct ProvisionArgs {
    /// Output directory (created if missing).
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    ca: CaArgs,
    /// Common name of a newly minted CA.
    #[arg(long, default_value = "certmq-sim device CA")]
    ca_cn: String,
    /// Device type of the devices.
    #[arg(long, default_value = "sensor")]
    device_type: String,
    /// Number of devices (dev1 … devN).
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// Also issue an application certificate `a:<app-id>` (empty: none).
    #[arg(long, default_value = "sim-app")]
    app_id: String,
    /// Validity of the issued client certificates, days.
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// Org id: needed by --server-cert and --admin.
    #[arg(long)]
    org: Option<String>,
    /// Base messaging domain (server certificate name `<org>.<domain>`).
    #[arg(long, default_value = "messaging.localhost")]
    domain: String,
    /// Also issue a server certificate + key for `<org>.<domain>` signed by the CA
    /// (server.pem, server-key.pem), e.g. for mosquitto; with --admin it is uploaded to
    /// certmq and activated.
    #[arg(long, requires = "org")]
    server_cert: bool,
    /// certmq admin API (e.g. http://127.0.0.1:8080): create the org, register the CA,
    /// and (without --server-cert) have certmq generate a self-signed server
    /// certificate, written to server.pem.
    #[arg(long, requires = "org")]
    admin: Option<String>,
    /// Admin API bearer token.
    #[arg(long, env = "CERTMQ_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Mint a new CA even when the output directory already has one (its ca.pem and
    /// ca-key.pem are replaced: certificates it issued stop being trusted where the
    /// new CA replaces it).
    #[arg(long)]
    force: bool,
}

/// The broker port and the org a client addresses (`--port`, `--org`, `--domain`,
/// `--sni`): the same for `fleet` and every `bench` scenario, so they are declared once.
/// `--host` stays with each command: `bench` dials an IP address only (it binds loopback
/// source addresses), `fleet` any host name.
#[derive(Args)]
struct OrgTargetArgs {
    /// Broker MQTT-over-TLS port.
    #[arg(long, default_value_t = 8883)]
    port: u16,
    /// Org id: client ids are `d:<org>:<type>:<id>`, and the SNI name selects the org.
    #[arg(long)]
    org: String,
    /// Base messaging domain; the SNI name is `<org>.<domain>` unless --sni is given.
    #[arg(long, default_value = "messaging.localhost")]
    domain: String,
    /// TLS server name to send (overrides `<org>.<domain>`).
    #[arg(long)]
    sni: Option<String>,
}

impl OrgTargetArgs {
    /// The TLS server name to send: --sni, or `<org>.<domain>`.
    fn sni(&self) -> String {
        self.sni
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.org, self.domain))
    }
}

/// The broker a benchmark runs against.
#[derive(Args)]
struct BenchTargetArgs {
    /// Broker IP address (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    #[command(flatten)]
    org: OrgTargetArgs,
    /// PEM the broker's certificate is checked against (with --verify-server).
    #[arg(long)]
    server_ca: Option<PathBuf>,
    /// Verify the broker's certificate (off: the load generator spends no CPU on it).
    #[arg(long, requires = "server_ca")]
    verify_server: bool,
    /// CA certificate (PEM) the org trusts: client certificates are issued from it.
    #[arg(long)]
    ca_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long)]
    ca_key: PathBuf,
    /// Device type of the simulated devices.
    #[arg(long, default_value = "sensor")]
    device_type: String,
    /// Topic filter of the application (e.g. `iot-2/#` on brokers without Watson rules).
    #[arg(long, default_value = certmq_device_sim::fleet::APP_EVENT_FILTER)]
    app_filter: String,
    /// offline: devices subscribe to `iot-2/type/<t>/id/<d>/cmd/+/fmt/+` (brokers without
    /// Watson topic rewriting) instead of `iot-2/cmd/+/fmt/+`.
    #[arg(long)]
    plain_command_topics: bool,
    /// Broker process id, for RSS figures (idle, flood, offline).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Broker label in reports and file names.
    #[arg(long, default_value = "broker")]
    broker_name: String,
    /// Directory for the JSON report and SVG charts.
    #[arg(long, default_value = "bench-out")]
    out: PathBuf,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Full mTLS handshakes + CONNECT → CONNACK: rate and latency.
    Connect {
        #[command(flatten)]
        target: BenchTargetArgs,
        #[arg(long, default_value_t = 5_000)]
        connections: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Fan-in: N devices publish to one application; msgs/s and end-to-end latency.
    Throughput {
        #[command(flatten)]
        target: BenchTargetArgs,
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        #[arg(long, default_value_t = 1)]
        qos: u8,
        #[arg(long, default_value_t = 64)]
        payload_bytes: usize,
        /// What lets a publisher send: `e2e`, the application's receipt (closed loop,
        /// `--window`); `puback`, the broker's PUBACK (QoS 1, `--inflight`, `--rate`),
        /// as device SDKs do.
        #[arg(long, value_enum, default_value_t = Driver::E2e)]
        driver: Driver,
        /// e2e: messages each publisher may have on the way to the application.
        #[arg(long, default_value_t = 10)]
        window: usize,
        /// puback: PUBLISHes each publisher may have unacknowledged by the broker.
        #[arg(long, default_value_t = 100)]
        inflight: usize,
        /// puback: total offered msgs/s over all publishers, paced evenly (0: as fast as
        /// PUBACKs allow).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// puback: the application connects with clean session 0 (a persistent session:
        /// certmq fsyncs each message before its PUBACK), the `durable` scenario.
        #[arg(long)]
        persistent_subscriber: bool,
        /// e2e: split the publishers over this many orgs, one application each: --org,
        /// then org2, …, orgN (each must exist on the broker and trust --ca-cert; the SNI
        /// name is `<org>.<domain>`).
        #[arg(long, default_value_t = 1)]
        orgs: usize,
        /// With --orgs above 1, on a broker without org namespaces (mosquitto): publish
        /// under `<org>/iot-2/…` and subscribe each application to `<org>/<app-filter>`.
        #[arg(long)]
        prefix_org_topics: bool,
        #[arg(long, default_value_t = 1_000)]
        warmup_ms: u64,
        #[arg(long, default_value_t = 10_000)]
        measure_ms: u64,
    },
    /// N idle mTLS connections; broker RSS per connection (needs --broker-pid).
    Idle {
        #[command(flatten)]
        target: BenchTargetArgs,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 2_000)]
        settle_ms: u64,
    },
    /// Reconnect storm with TLS session resumption.
    Resume {
        #[command(flatten)]
        target: BenchTargetArgs,
        #[arg(long, default_value_t = 500)]
        devices: usize,
        #[arg(long, default_value_t = 10)]
        connections_per_device: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// QoS 1 publishers flooding one slow subscriber; peak broker RSS (--broker-pid).
    Flood {
        #[command(flatten)]
        target: BenchTargetArgs,
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        #[arg(long, default_value_t = 64)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 100)]
        inflight: usize,
        /// Messages per second the subscriber reads.
        #[arg(long, default_value_t = 2_000)]
        subscriber_rate: u64,
        #[arg(long, default_value_t = 10_000)]
        flood_ms: u64,
        #[arg(long, default_value_t = 60_000)]
        drain_ms: u64,
    },
    /// Offline persistent sessions with queued QoS 1 messages: broker RSS per session and
    /// per message (--broker-pid); a sample reconnects and counts its messages.
    Offline {
        #[command(flatten)]
        target: BenchTargetArgs,
        /// Devices with a persistent session (clean session 0), offline while queued to.
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// QoS 1 commands queued per device (at most 1,000, the brokers' queue bound).
        #[arg(long, default_value_t = 100)]
        messages_per_device: usize,
        #[arg(long, default_value_t = 64)]
        payload_bytes: usize,
        /// PUBLISHes the application may have unacknowledged (certmq allows 1,000).
        #[arg(long, default_value_t = 500)]
        inflight: usize,
        /// Devices that reconnect afterwards and count their messages.
        #[arg(long, default_value_t = 100)]
        sample: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 2_000)]
        settle_ms: u64,
        #[arg(long, default_value_t = 10_000)]
        receive_timeout_ms: u64,
    },
    /// certmq only: admin API change → first handshake that sees it.
    Reload {
        #[command(flatten)]
        target: BenchTargetArgs,
        /// certmq admin API, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        admin: String,
        #[arg(long, env = "CERTMQ_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long, default_value_t = 20)]
        iterations: usize,
    },
}

/// What lets a throughput publisher send its next message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Driver {
    /// The application received one (closed loop through the broker).
    E2e,
    /// The broker acknowledged one (PUBACK), as device SDKs do.
    Puback,
}

#[derive(Args)]
struct CompareArgs {
    /// The certmq binary (default: `certmq` next to this binary).
    #[arg(long)]
    certmq: Option<PathBuf>,
    /// The mosquitto binary.
    #[arg(long, default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// Reports, charts, certificates and broker logs.
    #[arg(long, default_value = "bench-out/compare")]
    out: PathBuf,
    /// Markdown document whose generated section gets the table.
    #[arg(long, default_value = "docs/benchmarks.md")]
    doc: PathBuf,
    /// Do not touch the document.
    #[arg(long)]
    no_doc: bool,
    #[arg(long, default_value = "acme")]
    org: String,
    /// Do not pin the brokers to CPU 0.
    #[arg(long)]
    no_pin: bool,
    /// Scenarios to run (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "connect,throughput,idle,resume,flood,reload,inflight,durable,overload,offline,bridge"
    )]
    scenarios: Vec<String>,
    #[arg(long, default_value_t = 5_000)]
    connections: usize,
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    #[arg(long, default_value_t = 10)]
    window: usize,
    #[arg(long, default_value_t = 10_000)]
    measure_ms: u64,
    /// throughput: also run QoS 1 fan-in with the publishers split over this many orgs
    /// (--org, then org2, …), one application each (1: single-org fan-in only).
    #[arg(long, default_value_t = 1)]
    orgs: usize,
    /// Idle connections (capped by the open-file limit).
    #[arg(long, default_value_t = 50_000)]
    idle_connections: usize,
    #[arg(long, default_value_t = 500)]
    resume_devices: usize,
    #[arg(long, default_value_t = 2_000)]
    flood_subscriber_rate: u64,
    #[arg(long, default_value_t = 20)]
    reload_iterations: usize,
    /// inflight, overload: QoS 1 publishers driven by PUBACKs.
    #[arg(long, default_value_t = 8)]
    puback_publishers: usize,
    /// inflight, overload: unmeasured start of every run, ms.
    #[arg(long, default_value_t = 1_000)]
    puback_warmup_ms: u64,
    /// inflight, overload: measurement window of every run, ms.
    #[arg(long, default_value_t = 4_000)]
    puback_measure_ms: u64,
    /// inflight: the windows (unacknowledged PUBLISHes per publisher) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    inflight_windows: Vec<usize>,
    /// overload: window of the capacity run and of every load level.
    #[arg(long, default_value_t = 100)]
    overload_inflight: usize,
    /// overload: offered rates in % of each broker's unpaced delivered rate.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100,150,200,400")]
    overload_percents: Vec<u32>,
    /// durable: window of the PUBACK-driven publishers (persistent-session application,
    /// and the clean-session run beside it).
    #[arg(long, default_value_t = 100)]
    durable_inflight: usize,
    /// durable: the paced runs offer this % of certmq's unpaced durable delivered rate.
    #[arg(long, default_value_t = 80)]
    durable_percent: u32,
    /// offline: devices with an offline persistent session.
    #[arg(long, default_value_t = 10_000)]
    devices: usize,
    /// offline: QoS 1 commands queued per device (at most 1,000).
    #[arg(long, default_value_t = 100)]
    offline_messages: usize,
    /// offline: PUBLISHes the application may have unacknowledged.
    #[arg(long, default_value_t = 500)]
    offline_inflight: usize,
    /// offline: devices that reconnect and count their messages.
    #[arg(long, default_value_t = 100)]
    offline_sample: usize,
}

#[derive(Args)]
struct FleetArgs {
    /// Broker address to dial.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[command(flatten)]
    org: OrgTargetArgs,
    /// PEM the client trusts for the server certificate (CA or the server's own leaf).
    #[arg(long)]
    server_ca: PathBuf,
    #[command(flatten)]
    ca: CaArgs,
    /// Device type of the simulated devices.
    #[arg(long, default_value = "sensor")]
    device_type: String,
    /// Number of devices.
    #[arg(long, default_value_t = 3)]
    devices: usize,
    /// Events per device.
    #[arg(long, default_value_t = 5)]
    events: usize,
    /// Milliseconds between two events of a device.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// MQTT QoS (0, 1, 2).
    #[arg(long, default_value_t = 1)]
    qos: u8,
    /// Application id of the simulated application.
    #[arg(long, default_value = "sim-app")]
    app_id: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Do not print every message, only the summary.
    #[arg(long, short)]
    quiet: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Provision(args) => provision_cmd(args).await,
        Command::Fleet(args) => fleet(args).await,
        Command::Bench { scenario } => bench_cmd(scenario).await,
        Command::Compare(args) => compare_cmd(args).await,
    };
    if let Err(e) = result {
        eprintln!("certmq-sim: {e:#}");
        std::process::exit(1);
    }
}

/// Loads the CA given by `--ca-cert/--ca-key`, if any.
fn load_ca(args: &CaArgs) -> Result<Option<TestCa>> {
    match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => Ok(Some(provision::load_ca(cert, key)?)),
        _ => Ok(None),
    }
}

async fn provision_cmd(args: ProvisionArgs) -> Result<()> {
    let admin = match (&args.admin, &args.token) {
        (Some(url), Some(token)) => Some((url.clone(), token.clone())),
        (Some(_), None) => bail!("--admin needs --token (or CERTMQ_ADMIN_TOKEN)"),
        _ => None,
    };
    let opts = provision::Options {
        out: args.out,
        ca: match (args.ca.ca_cert, args.ca.ca_key) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        },
        ca_cn: args.ca_cn,
        device_type: args.device_type,
        devices: args.devices,
        app_id: args.app_id,
        days: args.days,
        org: args.org,
        domain: args.domain,
        server_cert: args.server_cert,
        admin,
        force: args.force,
    };
    for line in provision::run(&opts).await? {
        println!("{line}");
    }
    Ok(())
}

/// Builds the benchmark target and loads the CA from the common arguments.
fn bench_target(args: &BenchTargetArgs) -> Result<(BenchTarget, TestCa, PathBuf)> {
    let ca = TestCa::from_pem(&read(&args.ca_cert)?, &read(&args.ca_key)?)
        .context("load --ca-cert/--ca-key")?;
    let server_ca = match &args.server_ca {
        Some(p) => read(p)?,
        None => String::new(),
    };
    let mut target = BenchTarget::new(
        &args.broker_name,
        std::net::SocketAddr::new(args.host, args.org.port),
        &args.org.org,
        &args.org.sni(),
        &server_ca,
    );
    target.verify_server = args.verify_server;
    target.device_type = args.device_type.clone();
    target.app_filter = args.app_filter.clone();
    target.broker_pid = args.broker_pid;
    target.watson_topics = !args.plain_command_topics;
    Ok((target, ca, args.out.clone()))
}

async fn bench_cmd(cmd: BenchCommand) -> Result<()> {
    let limit = bench::raise_nofile_limit()?;
    let mut prefix_org_topics = false;
    let (args, scenario) = match cmd {
        BenchCommand::Connect {
            target,
            connections,
            concurrency,
        } => (
            target,
            Scenario::Connect(bench::ConnectConfig {
                connections,
                concurrency,
            }),
        ),
        BenchCommand::Throughput {
            target,
            publishers,
            qos,
            payload_bytes,
            driver: Driver::E2e,
            window,
            orgs,
            prefix_org_topics: prefix,
            warmup_ms,
            measure_ms,
            ..
        } => {
            prefix_org_topics = prefix;
            (
                target,
                Scenario::Throughput(bench::ThroughputConfig {
                    publishers,
                    qos,
                    payload_bytes,
                    window,
                    warmup_ms,
                    measure_ms,
                    orgs,
                }),
            )
        }
        BenchCommand::Throughput {
            target,
            publishers,
            qos,
            payload_bytes,
            driver: Driver::Puback,
            inflight,
            rate,
            persistent_subscriber,
            orgs,
            warmup_ms,
            measure_ms,
            ..
        } => {
            if qos != 1 {
                bail!("--driver puback publishes QoS 1 (PUBACKs drive it); drop --qos {qos}");
            }
            if orgs != 1 {
                bail!("--orgs is for the e2e driver only");
            }
            (
                target,
                Scenario::Puback(bench::PubackConfig {
                    publishers,
                    payload_bytes,
                    inflight,
                    rate,
                    warmup_ms,
                    measure_ms,
                    persistent_subscriber,
                }),
            )
        }
        BenchCommand::Idle {
            target,
            connections,
            concurrency,
            settle_ms,
        } => (
            target,
            Scenario::Idle(bench::IdleConfig {
                connections,
                concurrency,
                settle_ms,
            }),
        ),
        BenchCommand::Resume {
            target,
            devices,
            connections_per_device,
            concurrency,
        } => (
            target,
            Scenario::Resume(bench::ResumeConfig {
                devices,
                connections_per_device,
                concurrency,
            }),
        ),
        BenchCommand::Flood {
            target,
            publishers,
            payload_bytes,
            inflight,
            subscriber_rate,
            flood_ms,
            drain_ms,
        } => (
            target,
            Scenario::Flood(bench::FloodConfig {
                publishers,
                payload_bytes,
                inflight,
                subscriber_rate,
                flood_ms,
                drain_ms,
            }),
        ),
        BenchCommand::Offline {
            target,
            devices,
            messages_per_device,
            payload_bytes,
            inflight,
            sample,
            concurrency,
            settle_ms,
            receive_timeout_ms,
        } => (
            target,
            Scenario::Offline(bench::OfflineConfig {
                devices,
                messages_per_device,
                payload_bytes,
                inflight,
                sample,
                concurrency,
                settle_ms,
                receive_timeout_ms,
            }),
        ),
        BenchCommand::Reload {
            target,
            admin,
            token,
            iterations,
        } => (
            target,
            Scenario::Reload(bench::ReloadConfig::new(&admin, &token, iterations)),
        ),
    };
    let (mut target, ca, out) = bench_target(&args)?;
    target.prefix_org_topics = prefix_org_topics;
    tracing::debug!(open_file_limit = limit, "benchmark starting");
    let report = bench::run(&target, &ca, &scenario).await?;
    for path in report.write(&out)? {
        println!("wrote {}", path.display());
    }
    println!("{}", compare::headline(&report));
    Ok(())
}

async fn compare_cmd(args: CompareArgs) -> Result<()> {
    bench::raise_nofile_limit()?;
    let certmq_bin = match args.certmq {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("directory of certmq-sim")?
            .join("certmq"),
    };
    // All CPUs of the machine, not just those this process may run on (it is usually
    // started under `taskset -c 1` itself).
    let pin = !args.no_pin
        && compare::online_cpus() >= 2
        && std::process::Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok();
    let opts = CompareOptions {
        certmq_bin,
        mosquitto_bin: args.mosquitto,
        out: args.out,
        doc: (!args.no_doc).then_some(args.doc),
        org: args.org,
        orgs: args.orgs,
        pin,
        scenarios: args.scenarios,
        connect: bench::ConnectConfig {
            connections: args.connections,
            concurrency: args.concurrency,
        },
        throughput: bench::ThroughputConfig {
            publishers: args.publishers,
            window: args.window,
            measure_ms: args.measure_ms,
            ..Default::default()
        },
        idle: bench::IdleConfig {
            connections: args.idle_connections,
            ..Default::default()
        },
        resume: bench::ResumeConfig {
            devices: args.resume_devices,
            ..Default::default()
        },
        flood: bench::FloodConfig {
            subscriber_rate: args.flood_subscriber_rate,
            ..Default::default()
        },
        puback: bench::PubackConfig {
            publishers: args.puback_publishers,
            warmup_ms: args.puback_warmup_ms,
            measure_ms: args.puback_measure_ms,
            ..Default::default()
        },
        inflight_windows: args.inflight_windows,
        overload_inflight: args.overload_inflight,
        overload_percents: args.overload_percents,
        durable_inflight: args.durable_inflight,
        durable_percent: args.durable_percent,
        offline: bench::OfflineConfig {
            devices: args.devices,
            messages_per_device: args.offline_messages,
            inflight: args.offline_inflight,
            sample: args.offline_sample,
            ..Default::default()
        },
        reload_iterations: args.reload_iterations,
        command_line: std::env::args()
            .map(|a| a.rsplit('/').next().unwrap_or(&a).to_owned())
            .take(1)
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    };
    compare::run(&opts).await.map(drop)
}

async fn fleet(args: FleetArgs) -> Result<()> {
    let ca = match load_ca(&args.ca)? {
        Some(ca) => ca,
        None => anyhow::bail!("fleet needs --ca-cert and --ca-key (a CA the org trusts)"),
    };
    let target = BrokerTarget {
        host: args.host.clone(),
        port: args.org.port,
        sni: args.org.sni(),
        server_ca_pem: read(&args.server_ca)?,
    };
    let (log_tx, mut log_rx) = tokio::sync::mpsc::channel::<String>(4096);
    let printer = tokio::spawn(async move {
        while let Some(line) = log_rx.recv().await {
            println!("{line}");
        }
    });
    let cfg = FleetConfig {
        target,
        org: args.org.org,
        device_type: args.device_type,
        devices: args.devices,
        events_per_device: args.events,
        interval: Duration::from_millis(args.interval_ms),
        qos: args.qos,
        app_id: args.app_id,
        timeout: Duration::from_secs(args.timeout_secs),
        log: (!args.quiet).then_some(log_tx),
    };
    let result = run_fleet(cfg, &ca).await;
    // The sender was moved into the config, which run_fleet dropped: the printer ends
    // once the last line is out (bounded wait in case a straggler still holds a clone).
    let _ = tokio::time::timeout(Duration::from_secs(2), printer).await;
    let report = result?;
    println!("{report}");
    if !report.is_complete() {
        std::process::exit(2);
    }
    Ok(())
}
