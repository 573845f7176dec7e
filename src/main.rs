//! `certmq`: the broker binary. `serve` runs the broker and admin API; `demo` runs a
//! self-contained tour (broker, admin API, a simulated fleet and an application).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod app;
mod demo;

#[derive(Parser)]
#[command(
    name = "certmq",
    version,
    about = "MQTT broker for X.509-authenticated IoT fleets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker and the admin API.
    Serve {
        /// Where the embedded store, master key and admin token live.
        #[arg(long, default_value = "./certmq-data")]
        data_dir: PathBuf,
        /// MQTT over TLS listen address.
        #[arg(long, default_value = "0.0.0.0:8883")]
        mqtt: SocketAddr,
        /// Admin REST API listen address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        admin: SocketAddr,
        /// Plain MQTT listen address, for orgs whose security level is `tls_optional`
        /// (token authentication only). Off unless given: an unauthenticated port is
        /// opt-in (e.g. `--mqtt-plain 0.0.0.0:1883`).
        #[arg(long, default_value = "off")]
        mqtt_plain: OptionalAddr,
        /// Base messaging domain: org hosts are `<org>.<domain>`.
        #[arg(long, default_value = "messaging.localhost")]
        domain: String,
        /// Days audit log entries are kept (1-36500). Retention is by age only: no
        /// number of requests pushes a younger entry out.
        #[arg(long, default_value_t = registry::audit::DEFAULT_AUDIT_RETENTION_DAYS,
              value_parser = clap::value_parser!(u32).range(1..=36500))]
        audit_retention_days: u32,
        /// Connections one source address may have handshaking or waiting for their
        /// CONNECT to be decided at once; 0 = no limit (e.g. behind an L4 balancer that
        /// hides client addresses).
        #[arg(long, default_value_t = 256)]
        max_pending_per_ip: u32,
        /// TLS handshakes one source address may start per second (bursts of twice as
        /// many); 0 = no limit.
        #[arg(long, default_value_t = 500)]
        handshakes_per_ip: u32,
    },
    /// Start everything on free ports in a temp dir, run a small fleet, print a summary.
    Demo {
        /// Simulated devices.
        #[arg(long, default_value_t = 5)]
        devices: usize,
        /// Events each device publishes.
        #[arg(long, default_value_t = 5)]
        events: usize,
        /// Keep the broker and the console running after the summary (until Ctrl-C).
        #[arg(long)]
        keep_running: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Serve { .. } => "info",
        Command::Demo { .. } => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in a journal or a log file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve {
            data_dir,
            mqtt,
            admin,
            mqtt_plain,
            domain,
            audit_retention_days,
            max_pending_per_ip,
            handshakes_per_ip,
        } => {
            serve(app::Options {
                data_dir,
                mqtt,
                admin,
                mqtt_plain: mqtt_plain.0,
                domain,
                audit_retention_days,
                guard: broker::GuardConfig {
                    max_pending_per_ip,
                    handshakes_per_sec: f64::from(handshakes_per_ip),
                    handshake_burst: 2.0 * f64::from(handshakes_per_ip),
                    ..Default::default()
                },
            })
            .await
        }
        Command::Demo {
            devices,
            events,
            keep_running,
        } => demo::run(devices, events, keep_running).await,
    }
}

async fn serve(opts: app::Options) -> anyhow::Result<()> {
    let running = app::start(&opts).await?;
    if running.token_generated {
        println!(
            "admin token (shown once, also in {}): {}",
            opts.data_dir.join("admin-token").display(),
            running.admin_token
        );
    }
    // One machine-readable line: tests and scripts wait for it.
    let plain = running
        .mqtt_plain_addr
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    println!(
        "certmq ready mqtt={} admin={} mqtt_plain={plain} domain={}",
        running.mqtt_addr, running.admin_addr, opts.domain
    );
    println!("console: http://{}/console", running.admin_addr);
    tracing::info!(mqtt = %running.mqtt_addr, admin = %running.admin_addr, "certmq serving");
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// A listen address, or `off`.
#[derive(Clone, Debug)]
struct OptionalAddr(Option<SocketAddr>);

impl std::str::FromStr for OptionalAddr {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            Ok(OptionalAddr(None))
        } else {
            s.parse().map(|a| OptionalAddr(Some(a)))
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
