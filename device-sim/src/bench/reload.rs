//! `reload` (certmq only): how long after an admin API call returns the next handshake
//! sees the change. Three kinds, `iterations` times each:
//!
//! * `PATCH /orgs/{org}/ca-certs/{id} {"active":false}` → a device of that CA is refused;
//! * `PATCH … {"active":true}` → it is admitted again;
//! * `POST /orgs/{org}/server-certs/{id}/activate` → the new certificate is presented
//!   (switching back and forth between the active one and a second, self-signed one).
//!
//! The clock starts when the API call returns and stops when the first handshake (+
//! CONNECT → CONNACK for the CA cases) that shows the change ends; handshakes that end
//! in between and still show the old state are counted as stale.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::net::{self, SourceAddrs};
use super::report::{ErrorLog, ReloadResult, ReloadStat};
use super::{mint_devices, BenchTarget, SimClient};
use crate::admin::AdminClient;
use crate::certs::{parse_certs, ClientCertOptions, TestCa};

/// Parameters of `reload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadConfig {
    /// Changes of each kind.
    pub iterations: usize,
    /// certmq admin API, e.g. `http://127.0.0.1:8080`.
    pub admin_url: String,
    /// Platform or org admin token (never written to reports).
    #[serde(skip_serializing, default)]
    pub token: String,
    /// Give up on one change after this long, ms.
    pub timeout_ms: u64,
}

impl ReloadConfig {
    /// `iterations` changes of each kind through the API at `admin_url`.
    pub fn new(admin_url: &str, token: &str, iterations: usize) -> Self {
        Self {
            iterations,
            admin_url: admin_url.to_owned(),
            token: token.to_owned(),
            timeout_ms: 5_000,
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.iterations) {
            bail!("reload: iterations must be in 1..=10000");
        }
        if !(self.admin_url.starts_with("http://") || self.admin_url.starts_with("https://")) {
            bail!("reload: --admin must be an http(s) URL");
        }
        if self.token.is_empty() {
            bail!("reload: an admin token is needed");
        }
        Ok(())
    }
}

/// Collects the delays of one kind of change.
#[derive(Default)]
struct Stat {
    samples: Vec<f64>,
    api: Vec<f64>,
    stale: usize,
}

impl Stat {
    fn finish(self) -> ReloadStat {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            crate::report::percentile(&v, 50.0)
        };
        ReloadStat {
            p50_ms: median(self.samples.clone()),
            max_ms: self.samples.iter().copied().reduce(f64::max),
            api_p50_ms: median(self.api),
            samples_ms: self.samples,
            stale_handshakes: self.stale,
        }
    }
}

pub(crate) async fn run(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &ReloadConfig,
    errors: &mut ErrorLog,
) -> Result<ReloadResult> {
    let admin = AdminClient::new(&cfg.admin_url, &cfg.token);
    let org = target.org.as_str();
    let dialer = target.dialer(SourceAddrs::kernel())?;
    let timeout = Duration::from_millis(cfg.timeout_ms);

    // A CA of its own, so deactivating it never disturbs the org's real devices.
    let reload_ca = TestCa::new("certmq-sim reload CA")?;
    let ca_id = admin.ensure_ca(org, &reload_ca.pem()).await?;
    let cert = reload_ca.issue_client(
        &format!("d:{}:reload-ca", target.device_type),
        ClientCertOptions::default(),
    )?;
    let ca_device = SimClient {
        client_id: format!("d:{org}:{}:reload-ca", target.device_type),
        tls: net::client_config(&cert, &target.server_ca_pem, false, false)?,
        clean_session: true,
    };
    let (mut off, mut on) = (Stat::default(), Stat::default());
    let admitted = |index: usize| {
        let (dialer, device) = (&dialer, &ca_device);
        async move {
            device
                .open_within(dialer, index, timeout)
                .await
                .map(|o| tokio::spawn(net::close(o.reader.into_inner())))
                .is_ok()
        }
    };
    let mut index = 0;
    for _ in 0..cfg.iterations {
        for (active, stat) in [(false, &mut off), (true, &mut on)] {
            let call = Instant::now();
            admin.set_ca_active(org, &ca_id, active).await?;
            let t0 = Instant::now();
            stat.api.push(ms(call.elapsed()));
            loop {
                index += 1;
                if admitted(index).await == active {
                    stat.samples.push(ms(t0.elapsed()));
                    break;
                }
                stat.stale += 1;
                if t0.elapsed() > timeout {
                    errors.push(format!("CA active={active}: not seen within {timeout:?}"));
                    break;
                }
            }
        }
    }
    if let Err(e) = admin.delete_ca(org, &ca_id).await {
        errors.push(format!("cleanup: {e:#}"));
    }

    // Server certificates: the active one (A) and a second, self-signed one (B).
    // This probe only reads which certificate is presented; it must not verify it
    // against the one it trusted before the switch.
    let probe_target = BenchTarget {
        verify_server: false,
        ..target.clone()
    };
    let device = mint_devices(&probe_target, ca, "reload", 1, false)?
        .pop()
        .context("reload device")?;
    let a = admin
        .active_server_cert(org)
        .await?
        .context("the org has no active server certificate")?;
    let b = admin.self_signed_server_cert(org).await?;
    let (a_id, a_pem, b_id, b_pem) = (a.id, a.pem, b.id, b.pem);
    let leaf = |pem: &str| -> Result<Vec<u8>> {
        Ok(parse_certs(pem)?.first().context("empty PEM")?.to_vec())
    };
    let (a_der, b_der) = (leaf(&a_pem)?, leaf(&b_pem)?);
    let presented = |index: usize| {
        let (dialer, device) = (&dialer, &device);
        async move {
            let tls = tokio::time::timeout(timeout, dialer.tls(index, device.tls.clone()))
                .await
                .ok()?
                .ok()?;
            let der = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
            tokio::spawn(net::close(tls));
            Some(der)
        }
    };
    let mut server = Stat::default();
    for _ in 0..cfg.iterations {
        for (id, der) in [(&b_id, &b_der), (&a_id, &a_der)] {
            let call = Instant::now();
            admin.activate_server_cert(org, id).await?;
            let t0 = Instant::now();
            server.api.push(ms(call.elapsed()));
            loop {
                index += 1;
                if presented(index).await.as_ref() == Some(der) {
                    server.samples.push(ms(t0.elapsed()));
                    break;
                }
                server.stale += 1;
                if t0.elapsed() > timeout {
                    errors.push(format!(
                        "server cert {id}: not presented within {timeout:?}"
                    ));
                    break;
                }
            }
        }
    }
    if let Err(e) = admin.delete_server_cert(org, &b_id).await {
        errors.push(format!("cleanup: {e:#}"));
    }
    Ok(ReloadResult {
        iterations: cfg.iterations,
        ca_deactivate: off.finish(),
        ca_activate: on.finish(),
        server_cert_activate: server.finish(),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_token_never_serialized() {
        let c = ReloadConfig::new("http://127.0.0.1:8080", "secret", 20);
        assert!(c.validate().is_ok());
        let json = serde_json::to_string(&c).expect("json");
        assert!(!json.contains("secret"), "{json}");
        assert!(ReloadConfig::new("127.0.0.1:8080", "t", 1)
            .validate()
            .is_err());
        assert!(ReloadConfig::new("http://x", "", 1).validate().is_err());
        assert!(ReloadConfig::new("http://x", "t", 0).validate().is_err());
    }

    #[test]
    fn stat_summary() {
        let s = Stat {
            samples: vec![3.0, 1.0, 2.0],
            api: vec![5.0],
            stale: 1,
        }
        .finish();
        assert_eq!(s.p50_ms, Some(2.0));
        assert_eq!(s.max_ms, Some(3.0));
        assert_eq!(s.api_p50_ms, Some(5.0));
        assert_eq!(s.stale_handshakes, 1);
        assert_eq!(Stat::default().finish().p50_ms, None);
    }
}
