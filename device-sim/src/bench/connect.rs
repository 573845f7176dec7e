//! `connect`: full mTLS handshakes (no resumption) + CONNECT → CONNACK, then
//! DISCONNECT, by a fixed number of concurrent workers until a fixed count is done.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::latency::Latency;
use super::net::{self, SourceAddrs};
use super::report::{ConnectResult, ErrorLog};
use super::{join_workers, mint_devices, BenchTarget};
use crate::certs::TestCa;

/// Distinct device identities per worker: a worker cycles through its own, so two
/// connections in flight never share a client id (which would be a session takeover).
const DEVICES_PER_WORKER: usize = 4;

/// Parameters of `connect`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectConfig {
    /// Connections to make in all.
    pub connections: usize,
    /// Connections in progress at once (closed loop: each worker connects, gets its
    /// CONNACK, disconnects, and starts the next).
    pub concurrency: usize,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            connections: 5_000,
            concurrency: 16,
        }
    }
}

impl ConnectConfig {
    pub fn validate(&self) -> Result<()> {
        if self.connections == 0 {
            bail!("connect: connections must be at least 1");
        }
        if !(1..=1_000).contains(&self.concurrency) {
            bail!("connect: concurrency must be in 1..=1000");
        }
        Ok(())
    }
}

#[derive(Default)]
struct WorkerOutcome {
    ok: usize,
    connect: Latency,
    handshake: Latency,
    connack: Latency,
    errors: ErrorLog,
}

pub(crate) async fn run(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &ConnectConfig,
    errors: &mut ErrorLog,
) -> Result<ConnectResult> {
    let workers = cfg.concurrency.min(cfg.connections);
    let devices = Arc::new(mint_devices(
        target,
        ca,
        "conn",
        workers * DEVICES_PER_WORKER,
        false,
    )?);
    let dialer = Arc::new(target.dialer(SourceAddrs::kernel())?);
    let next = Arc::new(AtomicUsize::new(0));
    let total = cfg.connections;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for w in 0..workers {
        let (devices, dialer, next) = (devices.clone(), dialer.clone(), next.clone());
        set.spawn(async move {
            let mut out = WorkerOutcome::default();
            let mut k = 0;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    break;
                }
                let device = &devices[w * DEVICES_PER_WORKER + k % DEVICES_PER_WORKER];
                k += 1;
                let t0 = Instant::now();
                match device.open(&dialer, index).await {
                    Ok(opened) => {
                        out.connect.record(t0.elapsed());
                        out.handshake.record(opened.handshake);
                        out.connack.record(opened.connack);
                        out.ok += 1;
                        net::close(opened.reader.into_inner()).await;
                    }
                    Err(e) => out.errors.push(format!("{}: {e:#}", device.client_id)),
                }
            }
            out
        });
    }
    let mut all = WorkerOutcome::default();
    join_workers(set, "connect", errors, |out, _| {
        all.ok += out.ok;
        all.connect.merge(&out.connect);
        all.handshake.merge(&out.handshake);
        all.connack.merge(&out.connack);
        all.errors.merge(out.errors);
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let failed = all.errors.count();
    errors.merge(all.errors);
    Ok(ConnectResult {
        connections: cfg.connections,
        concurrency: workers,
        ok: all.ok,
        failed,
        rate_per_s: all.ok as f64 / elapsed.max(1e-9),
        connect: all.connect.summary(),
        handshake: all.handshake.summary(),
        connack: all.connack.summary(),
        connect_curve: all.connect.curve(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(ConnectConfig::default().validate().is_ok());
        let bad = ConnectConfig {
            connections: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = ConnectConfig {
            concurrency: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = ConnectConfig {
            concurrency: 5_000,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
