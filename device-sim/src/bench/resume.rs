//! `resume`: a reconnect storm. Every device reconnects several times; each keeps its
//! own TLS session store (sessions are bound to the client certificate), so after the
//! first full handshake it offers a session ticket and the broker may resume.

use std::sync::Arc;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::latency::Latency;
use super::net::{self, SourceAddrs};
use super::report::{ErrorLog, ResumeResult};
use super::{join_workers, mint_devices, BenchTarget};
use crate::certs::TestCa;

/// Parameters of `resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeConfig {
    /// Distinct devices (certificates, session stores).
    pub devices: usize,
    /// Connections per device, the first one included (a full handshake).
    pub connections_per_device: usize,
    /// Connections in progress at once.
    pub concurrency: usize,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        Self {
            devices: 500,
            connections_per_device: 10,
            concurrency: 16,
        }
    }
}

impl ResumeConfig {
    pub fn validate(&self) -> Result<()> {
        if self.devices == 0 || self.connections_per_device < 2 {
            bail!("resume: needs at least 1 device and 2 connections per device");
        }
        if !(1..=1_000).contains(&self.concurrency) {
            bail!("resume: concurrency must be in 1..=1000");
        }
        Ok(())
    }
}

#[derive(Default)]
struct Outcome {
    ok: usize,
    resumed: Latency,
    full: Latency,
    errors: ErrorLog,
}

pub(crate) async fn run(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &ResumeConfig,
    errors: &mut ErrorLog,
) -> Result<ResumeResult> {
    let devices = Arc::new(mint_devices(target, ca, "resume", cfg.devices, true)?);
    let dialer = Arc::new(target.dialer(SourceAddrs::kernel())?);
    let workers = cfg.concurrency.min(cfg.devices);
    let rounds = cfg.connections_per_device;
    let started = Instant::now();
    let mut set = JoinSet::new();
    for w in 0..workers {
        let (devices, dialer) = (devices.clone(), dialer.clone());
        set.spawn(async move {
            let mut out = Outcome::default();
            // Worker w owns devices w, w + workers, …; round by round, so a device's
            // reconnects are spread over the run like a storm after an outage.
            for round in 0..rounds {
                for (i, device) in devices.iter().enumerate().skip(w).step_by(workers) {
                    let t0 = Instant::now();
                    match device.open(&dialer, round * devices.len() + i).await {
                        Ok(opened) => {
                            out.ok += 1;
                            if opened.resumed {
                                out.resumed.record(t0.elapsed());
                            } else {
                                out.full.record(t0.elapsed());
                            }
                            net::close(opened.reader.into_inner()).await;
                        }
                        Err(e) => out.errors.push(format!("{}: {e:#}", device.client_id)),
                    }
                }
            }
            out
        });
    }
    let mut all = Outcome::default();
    join_workers(set, "resume", errors, |out, _| {
        all.ok += out.ok;
        all.resumed.merge(&out.resumed);
        all.full.merge(&out.full);
        all.errors.merge(out.errors);
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let failed = all.errors.count();
    errors.merge(all.errors);
    let resumed = all.resumed.count() as usize;
    let could_resume = all.ok.saturating_sub(cfg.devices);
    Ok(ResumeResult {
        devices: cfg.devices,
        connections_per_device: rounds,
        concurrency: workers,
        ok: all.ok,
        failed,
        resumed,
        full: all.full.count() as usize,
        resumed_fraction: if could_resume == 0 {
            0.0
        } else {
            resumed as f64 / could_resume as f64
        },
        rate_per_s: all.ok as f64 / elapsed.max(1e-9),
        resumed_latency: all.resumed.summary(),
        full_latency: all.full.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(ResumeConfig::default().validate().is_ok());
        for bad in [
            ResumeConfig {
                devices: 0,
                ..Default::default()
            },
            ResumeConfig {
                connections_per_device: 1,
                ..Default::default()
            },
            ResumeConfig {
                concurrency: 0,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
