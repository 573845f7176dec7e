//! `idle`: open N mTLS connections (CONNECT → CONNACK each), hold them without traffic,
//! and read the broker's RSS per connection from `/proc/<pid>/status`.
//!
//! Every connection is a file descriptor on both sides: the simulator raises its own
//! `RLIMIT_NOFILE` to the hard limit, and the broker needs `ulimit -n` above N too.
//! Beyond [`SourceAddrs::PER_ADDR`] connections, sources spread over 127.0.0.x.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::mqtt::{self, Packet};
use super::net::{self, PacketReader, SourceAddrs, Tls};
use super::proc::rss_kib;
use super::report::{ErrorLog, IdleResult};
use super::{join_workers, mint_devices, nofile_limit, BenchTarget};
use crate::certs::TestCa;

/// File descriptors kept free for everything else in the simulator.
const SPARE_FDS: u64 = 64;
/// RSS is sampled every this many connections for the chart.
const SAMPLE_EVERY: usize = 500;

/// Parameters of `idle`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IdleConfig {
    /// Connections to open and hold.
    pub connections: usize,
    /// Connections being opened at once.
    pub concurrency: usize,
    /// Wait after the last CONNACK before reading the broker's RSS, ms.
    pub settle_ms: u64,
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            connections: 10_000,
            concurrency: 32,
            settle_ms: 2_000,
        }
    }
}

impl IdleConfig {
    pub fn validate(&self) -> Result<()> {
        if self.connections == 0 {
            bail!("idle: connections must be at least 1");
        }
        if !(1..=1_000).contains(&self.concurrency) {
            bail!("idle: concurrency must be in 1..=1000");
        }
        SourceAddrs::for_connections(self.connections)?;
        Ok(())
    }
}

pub(crate) async fn run(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &IdleConfig,
    errors: &mut ErrorLog,
) -> Result<IdleResult> {
    let limit = nofile_limit();
    if cfg.connections as u64 + SPARE_FDS > limit {
        bail!(
            "idle: {} connections need an open-file limit of at least {} here (it is {limit}; \
             raise `ulimit -n` — the broker needs as many)",
            cfg.connections,
            cfg.connections as u64 + SPARE_FDS
        );
    }
    let source = SourceAddrs::for_connections(cfg.connections)?;
    let devices = Arc::new(mint_devices(target, ca, "idle", cfg.connections, false)?);
    let dialer = Arc::new(target.dialer(source)?);
    let pid = target.broker_pid;
    let rss_before = pid.and_then(rss_kib);
    let held: Arc<Mutex<Vec<Tls>>> = Arc::new(Mutex::new(Vec::with_capacity(cfg.connections)));
    let samples = Arc::new(Mutex::new(vec![(
        0.0,
        rss_before.map_or(0.0, |k| k as f64 / 1024.0),
    )]));
    let next = Arc::new(AtomicUsize::new(0));
    let connected = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..cfg.concurrency.min(cfg.connections) {
        let (devices, dialer, next, connected, held, samples) = (
            devices.clone(),
            dialer.clone(),
            next.clone(),
            connected.clone(),
            held.clone(),
            samples.clone(),
        );
        set.spawn(async move {
            let mut errors = ErrorLog::default();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(device) = devices.get(index) else {
                    break;
                };
                match device.open(&dialer, index).await {
                    Ok(opened) => {
                        if let Ok(mut h) = held.lock() {
                            h.push(opened.reader.into_inner());
                        }
                        let n = connected.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(SAMPLE_EVERY) {
                            if let (Some(kib), Ok(mut s)) = (pid.and_then(rss_kib), samples.lock())
                            {
                                s.push((n as f64, kib as f64 / 1024.0));
                            }
                        }
                    }
                    Err(e) => errors.push(format!("{}: {e:#}", device.client_id)),
                }
            }
            errors
        });
    }
    let mut failed = 0;
    join_workers(set, "idle", errors, |e, errors| {
        failed += e.count();
        errors.merge(e);
    })
    .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let conns: Vec<Tls> = held
        .lock()
        .map(|mut h| h.drain(..).collect())
        .unwrap_or_default();
    let n = conns.len();
    tokio::time::sleep(Duration::from_millis(cfg.settle_ms)).await;
    let rss_after = pid.and_then(rss_kib);
    let mut series = samples.lock().map(|s| s.clone()).unwrap_or_default();
    if let Some(kib) = rss_after {
        series.push((n as f64, kib as f64 / 1024.0));
    }
    let alive = ping_all(conns, cfg.concurrency, errors).await;
    let rss_per_connection_kib = match (rss_before, rss_after) {
        (Some(before), Some(after)) if n > 0 => {
            Some(after.saturating_sub(before) as f64 / n as f64)
        }
        _ => None,
    };
    Ok(IdleResult {
        connections: cfg.connections,
        connected: n,
        failed,
        alive,
        source_addrs: source.count(),
        connect_rate_per_s: n as f64 / connect_secs.max(1e-9),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_connection_kib,
        rss_series: series,
    })
}

/// Sends PINGREQ on every connection and counts PINGRESPs (10 s each at most), then
/// closes them all.
async fn ping_all(conns: Vec<Tls>, concurrency: usize, errors: &mut ErrorLog) -> usize {
    let per_worker = conns.len().div_ceil(concurrency.max(1)).max(1);
    let mut chunks: Vec<Vec<Tls>> = Vec::new();
    let mut it = conns.into_iter().peekable();
    while it.peek().is_some() {
        chunks.push(it.by_ref().take(per_worker).collect());
    }
    let mut set = JoinSet::new();
    for chunk in chunks {
        set.spawn(async move {
            let mut alive = 0;
            for tls in chunk {
                let mut reader = PacketReader::new(tls, 64);
                let ping = async {
                    reader.get_mut().write_all(&mqtt::PINGREQ).await?;
                    reader.get_mut().flush().await?;
                    loop {
                        while let Some(p) = reader.next_packet()? {
                            if p == Packet::PingResp {
                                return Ok::<_, std::io::Error>(());
                            }
                        }
                        reader.fill().await?;
                    }
                };
                if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(10), ping).await {
                    alive += 1;
                }
                net::close(reader.into_inner()).await;
            }
            alive
        });
    }
    let mut alive = 0;
    join_workers(set, "ping", errors, |n, _| alive += n).await;
    alive
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(IdleConfig::default().validate().is_ok());
        let big = IdleConfig {
            connections: 50_000,
            ..Default::default()
        };
        assert!(big.validate().is_ok(), "50k spread over 127.0.0.1-3");
        for bad in [
            IdleConfig {
                connections: 0,
                ..Default::default()
            },
            IdleConfig {
                concurrency: 0,
                ..Default::default()
            },
            IdleConfig {
                connections: 254 * SourceAddrs::PER_ADDR + 1,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
