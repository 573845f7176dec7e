//! `certmq`: the broker binary. `serve` runs the broker and admin API; `demo` runs a
//! self-contained tour (broker, admin API, a simulated fleet and an application).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod admin_tls;
mod app;
mod config;
mod demo;
mod offline;

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
    /// Run the broker and the admin API. Every setting may also come from a
    /// `CERTMQ_*` variable or the `--config` file (flag > variable > file > default).
    Serve(Box<config::ServeArgs>),
    /// Re-seal every private key under a new master key (the broker must be stopped).
    RotateMasterKey {
        /// The stopped broker's data directory.
        #[arg(long, default_value = "./certmq-data")]
        data_dir: PathBuf,
        /// A file holding the new key (64 hex characters, e.g. `openssl rand -hex 32`);
        /// else `CERTMQ_NEW_MASTER_KEY`; else, when the current key is
        /// `<data-dir>/master.key`, a generated one.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
    /// Copy a stopped broker's data directory (store, master key, admin token) into a
    /// new directory.
    Backup {
        /// The stopped broker's data directory.
        #[arg(long, default_value = "./certmq-data")]
        data_dir: PathBuf,
        /// The backup directory to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into a data directory that holds no store yet.
    Restore {
        /// A directory written by `certmq backup`.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to fill.
        #[arg(long, default_value = "./certmq-data")]
        data_dir: PathBuf,
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
    match cli.command {
        Command::Serve(args) => {
            // The file first: it may choose the log format.
            let file = config::load_file(&args)?;
            let format = args
                .log_format
                .or(file.as_ref().and_then(|f| f.log_format()))
                .unwrap_or_default();
            init_logs("info", format);
            let opts = config::resolve(*args, file.as_ref())?;
            config::log_effective(&opts, file.as_ref(), format);
            serve(opts).await
        }
        Command::RotateMasterKey {
            data_dir,
            new_key_file,
        } => offline::rotate_master_key(&data_dir, new_key_file.as_deref()),
        Command::Backup { data_dir, out } => offline::backup(&data_dir, &out),
        Command::Restore { from, data_dir } => offline::restore(&from, &data_dir),
        Command::Demo {
            devices,
            events,
            keep_running,
        } => {
            init_logs("warn", config::LogFormat::Text);
            demo::run(devices, events, keep_running).await
        }
    }
}

/// Installs the log subscriber: `RUST_LOG` when set, else `default_filter`.
fn init_logs(default_filter: &str, format: config::LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colours only for a person at a terminal, not in a journal or a log file.
        config::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        config::LogFormat::Json => builder.json().with_ansi(false).init(),
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
    let ws = running
        .ws_addr
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    println!(
        "certmq ready mqtt={} admin={} mqtt_plain={plain} domain={} admin_tls={} ws={ws}",
        running.mqtt_addr,
        running.admin_addr,
        opts.domain,
        if running.admin_https { "on" } else { "off" }
    );
    let scheme = if running.admin_https { "https" } else { "http" };
    println!("console: {scheme}://{}/console", running.admin_addr);
    tracing::info!(mqtt = %running.mqtt_addr, admin = %running.admin_addr, "certmq serving");
    shutdown_signal().await;
    tracing::info!(
        drain_timeout = %config::Dur(opts.drain_timeout),
        "shutting down: no new connections; draining sessions"
    );
    // The broker keeps to the drain timeout; the margin covers the admin API's last
    // requests.
    let limit = opts.drain_timeout + std::time::Duration::from_secs(1);
    if tokio::time::timeout(limit, running.stop()).await.is_err() {
        tracing::warn!("drain timeout reached; exiting");
    } else {
        tracing::info!("drained; exiting");
    }
    Ok(())
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
