//! `certmq-sim`: device fleet simulator for certmq.
//!
//! * `provision` mints (or loads) a CA and writes device and application certificates as
//!   PEM files (private keys with mode 0600);
//! * `fleet` runs N devices and an application against a broker and prints what flows and
//!   a summary (exit status 2 when something did not arrive).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use certmq_device_sim::{run_fleet, BrokerTarget, ClientCertOptions, FleetConfig, TestCa};
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
}

#[derive(Args)]
struct FleetArgs {
    /// Broker address to dial.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker MQTT-over-TLS port.
    #[arg(long, default_value_t = 8883)]
    port: u16,
    /// Org id (selects the org together with the SNI name).
    #[arg(long)]
    org: String,
    /// Base messaging domain; the SNI name is `<org>.<domain>` unless --sni is given.
    #[arg(long, default_value = "messaging.localhost")]
    domain: String,
    /// TLS server name to send (overrides `<org>.<domain>`).
    #[arg(long)]
    sni: Option<String>,
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
        Command::Provision(args) => provision(args),
        Command::Fleet(args) => fleet(args).await,
    };
    if let Err(e) = result {
        eprintln!("certmq-sim: {e:#}");
        std::process::exit(1);
    }
}

/// Loads the CA given by `--ca-cert/--ca-key`, if any.
fn load_ca(args: &CaArgs) -> Result<Option<TestCa>> {
    match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => {
            let cert_pem = read(cert)?;
            let key_pem = read(key)?;
            Ok(Some(TestCa::from_pem(&cert_pem, &key_pem).with_context(
                || format!("load CA from {} / {}", cert.display(), key.display()),
            )?))
        }
        _ => Ok(None),
    }
}

fn provision(args: ProvisionArgs) -> Result<()> {
    std::fs::create_dir_all(args.out.join("devices"))
        .with_context(|| format!("create {}", args.out.display()))?;
    let ca = match load_ca(&args.ca)? {
        Some(ca) => ca,
        None => {
            let ca = TestCa::new(&args.ca_cn)?;
            write_file(&args.out.join("ca.pem"), &ca.pem(), false)?;
            write_file(&args.out.join("ca-key.pem"), &ca.key_pem(), true)?;
            println!(
                "minted CA {:?} -> {}",
                ca.common_name(),
                args.out.join("ca.pem").display()
            );
            ca
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let opts = ClientCertOptions {
        not_after: now + time::Duration::days(args.days),
        ..Default::default()
    };
    for n in 1..=args.devices {
        let identity = format!("d:{}:dev{n}", args.device_type);
        let cert = ca.issue_client(&identity, opts.clone())?;
        let dir = args.out.join("devices");
        let base = format!("{}-dev{n}", args.device_type);
        write_file(&dir.join(format!("{base}.pem")), &cert.chain_pem, false)?;
        write_file(&dir.join(format!("{base}.key.pem")), &cert.key_pem, true)?;
    }
    println!(
        "issued {} device certificates (d:{}:dev1 …) -> {}",
        args.devices,
        args.device_type,
        args.out.join("devices").display()
    );
    if !args.app_id.is_empty() {
        let identity = format!("a:{}", args.app_id);
        let cert = ca.issue_client(&identity, opts)?;
        let cert_path = args.out.join(format!("app-{}.pem", args.app_id));
        write_file(&cert_path, &cert.chain_pem, false)?;
        write_file(
            &args.out.join(format!("app-{}.key.pem", args.app_id)),
            &cert.key_pem,
            true,
        )?;
        println!(
            "issued application certificate {identity} -> {}",
            cert_path.display()
        );
    }
    Ok(())
}

async fn fleet(args: FleetArgs) -> Result<()> {
    let ca = match load_ca(&args.ca)? {
        Some(ca) => ca,
        None => anyhow::bail!("fleet needs --ca-cert and --ca-key (a CA the org trusts)"),
    };
    let target = BrokerTarget {
        host: args.host.clone(),
        port: args.port,
        sni: args
            .sni
            .clone()
            .unwrap_or_else(|| format!("{}.{}", args.org, args.domain)),
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
        org: args.org,
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

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

/// Writes `contents` to `path`; `private` files get mode 0600 (before any byte is written).
fn write_file(path: &Path, contents: &str, private: bool) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    #[cfg(unix)]
    if private {
        // The file may have existed with a wider mode.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", path.display()))?;
    }
    file.write_all(contents.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}
