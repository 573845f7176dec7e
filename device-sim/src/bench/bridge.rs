//! `bridge` (run by [`compare`](super::compare)): forwarding over an edge broker's
//! outgoing bridge.
//!
//! PUBACK-driven QoS 1 publishers (as in `inflight`) publish to the **edge** broker under
//! test; its bridge forwards every event to an **upstream** mosquitto (TLS, client
//! certificates required, its own CA), where one subscriber takes `fleet/#` and measures
//! end-to-end latency from the send time in the payload, as the other scenarios do.
//! Every message a publisher wrote is tracked by its sequence number, so the subscriber
//! counts distinct messages and duplicates, and a run finds what the edge acknowledged
//! and never forwarded.
//!
//! With an outage (`outage_ms` > 0) the upstream is stopped (SIGTERM, by its pid) at the
//! end of the warm-up and started again on the same port `outage_ms` later, while the
//! publishers go on at their pace: the edge must hold what it acknowledged meanwhile and
//! deliver it once the upstream is back. The upstream keeps the subscriber's persistent
//! session across its restart (`persistence true`), so what the bridge delivers before
//! the subscriber is back is kept for it: a message missing upstream was lost by the
//! edge, not by the upstream.
//!
//! This module measures, and stops and starts the upstream process ([`Upstream`]);
//! [`compare`](super::compare) writes the brokers' configs, starts the edge and sets
//! its bridge up.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::latency::Latency;
use super::mqtt::{self, Packet};
use super::net::{self, PacketReader, SourceAddrs, Tls};
use super::proc::cpu_seconds;
use super::report::{BridgeResult, ErrorLog, OutageResult};
use super::throughput::{
    close_publishers, decode_header, drain_within, per_second, start_publisher, start_sampler,
    Pacer, PublisherHandle, PublisherParams, EVENT_TOPIC,
};
use super::{mint_app, mint_devices, BenchReport, BenchTarget, Results, SimClient};
use crate::certs::TestCa;

/// What the upstream subscriber takes: every topic the bridges forward to.
pub(super) const SINK_FILTER: &str = "fleet/#";
/// The topic template of certmq's forward rule: `fleet/sensor/pub1/bench`.
pub(super) const FORWARD_TOPIC: &str = "fleet/{type}/{id}/{event}";
/// On a broker without Watson topics (mosquitto) a device publishes on
/// `edge/<type>/<id>/bench`, and the bridge maps `edge/` to `fleet/` (mosquitto remaps
/// prefixes only), so the upstream sees the topics certmq's rule produces.
pub(super) const LOCAL_PREFIX: &str = "edge/";
/// The upstream's server name (its certificate also carries 127.0.0.1).
pub(super) const UPSTREAM_NAME: &str = "upstream.localhost";
/// Sequence numbers above this are not a publisher's (a garbled payload): ignored,
/// so that no input can make the arrival table grow without bound.
const MAX_SEQ: u64 = 50_000_000;
/// Not yet arrived, in the arrival table.
const NEVER: u64 = u64::MAX;

/// Parameters of one `bridge` run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BridgeConfig {
    /// Publishing devices (QoS 1, driven by the edge's PUBACKs).
    pub publishers: usize,
    /// PUBLISHes each publisher may have unacknowledged by the edge.
    pub inflight: usize,
    /// Payload size, bytes (at least 20).
    pub payload_bytes: usize,
    /// Total offered msgs/s, paced evenly; 0: as fast as the edge acknowledges.
    pub rate: u64,
    /// Unmeasured start, ms; with an outage, the upstream stops at its end.
    pub warmup_ms: u64,
    /// Measurement window, ms; the publishers stop at its end.
    pub measure_ms: u64,
    /// The upstream is down this long from the end of the warm-up (0: never).
    pub outage_ms: u64,
    /// The org's / mosquitto's queue limit for the run (`None`: the broker's default).
    pub queue_limit: Option<u64>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            publishers: 8,
            inflight: 100,
            payload_bytes: 64,
            rate: 0,
            warmup_ms: 1_000,
            measure_ms: 4_000,
            outage_ms: 0,
            queue_limit: None,
        }
    }
}

impl BridgeConfig {
    /// The queue-while-down run: 2,000 msgs/s paced, the upstream down for 5 s after
    /// 2 s, publishing on for 2 s after its restart; queues raised to 50,000 so that
    /// they hold the outage (10,000 messages).
    pub fn outage() -> Self {
        Self {
            rate: 2_000,
            warmup_ms: 2_000,
            measure_ms: 7_000,
            outage_ms: 5_000,
            queue_limit: Some(50_000),
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        super::PubackConfig {
            publishers: self.publishers,
            payload_bytes: self.payload_bytes,
            inflight: self.inflight,
            rate: self.rate,
            warmup_ms: self.warmup_ms,
            measure_ms: self.measure_ms,
            persistent_subscriber: false,
        }
        .validate()
        .context("bridge")?;
        if self.outage_ms > 0 && (self.rate == 0 || self.outage_ms >= self.measure_ms) {
            bail!("bridge: an outage needs a paced rate and must end within measure_ms");
        }
        Ok(())
    }
}

/// The topic publisher `device_id` publishes on at `edge`: certmq's Watson topic, or
/// `edge/<type>/<id>/bench` on a broker without Watson topics.
pub(super) fn device_topic(edge: &BenchTarget, device_id: &str) -> String {
    if edge.watson_topics {
        EVENT_TOPIC.to_owned()
    } else {
        format!("{LOCAL_PREFIX}{}/{device_id}/bench", edge.device_type)
    }
}

/// The upstream mosquitto: its config, port and process, stopped and started again on
/// the same port by the outage. Dropping it kills the process it started (by its pid).
pub(super) struct Upstream {
    mosquitto: PathBuf,
    conf: PathBuf,
    log: PathBuf,
    /// Run it under `taskset -c <cpu>`.
    cpu: Option<usize>,
    pub(super) addr: SocketAddr,
    child: Option<Child>,
}

impl Upstream {
    /// Starts `mosquitto -c conf` (stderr appended to `log`) and waits until it listens
    /// on `addr`.
    pub(super) async fn start(
        mosquitto: PathBuf,
        conf: PathBuf,
        log: PathBuf,
        cpu: Option<usize>,
        addr: SocketAddr,
    ) -> Result<Self> {
        let mut up = Self {
            mosquitto,
            conf,
            log,
            cpu,
            addr,
            child: None,
        };
        up.restart().await?;
        Ok(up)
    }

    /// The running process's id.
    pub(super) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process (again) and waits until it listens, at most 5 s.
    async fn restart(&mut self) -> Result<()> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut cmd = match self.cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(&self.mosquitto);
                c
            }
            None => Command::new(&self.mosquitto),
        };
        let child = cmd
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.mosquitto.display()))?;
        self.child = Some(child);
        for _ in 0..100 {
            if TcpStream::connect(self.addr).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "upstream mosquitto exited ({status}); see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "upstream mosquitto did not listen on {} within 5 s",
            self.addr
        )
    }

    /// Stops the process with SIGTERM (mosquitto then writes its persistence file) and
    /// waits for it to exit, at most 10 s (then SIGKILL).
    async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("kill -TERM the upstream")?;
        if !status.success() {
            bail!("kill -TERM {} failed: {status}", child.id());
        }
        for _ in 0..200 {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("the upstream mosquitto did not exit within 10 s of SIGTERM")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// First arrival of every message, per publisher and sequence number (µs since the run's
/// start, [`NEVER`] for not yet), and what else the subscriber saw.
#[derive(Debug, Default)]
struct Arrivals {
    first_us: Vec<Vec<u64>>,
    distinct: u64,
    duplicates: u64,
    /// Payloads that were not one of this run's publishers'.
    foreign: u64,
    latency: Latency,
    in_window: u64,
    /// Connections the subscriber opened after its first.
    reconnects: u64,
}

impl Arrivals {
    fn new(publishers: usize) -> Self {
        Self {
            first_us: vec![Vec::new(); publishers],
            ..Self::default()
        }
    }

    /// Records message `seq` of `publisher` arriving at `now_us`; true when it is new.
    fn record(&mut self, publisher: usize, seq: u64, now_us: u64) -> bool {
        let Some(table) = self.first_us.get_mut(publisher) else {
            self.foreign += 1;
            return false;
        };
        let Ok(at) = usize::try_from(seq) else {
            self.foreign += 1;
            return false;
        };
        if seq > MAX_SEQ {
            self.foreign += 1;
            return false;
        }
        if table.len() <= at {
            table.resize(at + 1, NEVER);
        }
        if table[at] != NEVER {
            self.duplicates += 1;
            return false;
        }
        table[at] = now_us;
        self.distinct += 1;
        true
    }
}

/// The sequence numbers below `written[i]` that never arrived, as `(publisher, first,
/// last)` ranges, at most `keep` of them.
fn missing_ranges(first_us: &[Vec<u64>], written: &[u64], keep: usize) -> Vec<(usize, u64, u64)> {
    let mut out: Vec<(usize, u64, u64)> = Vec::new();
    for (i, table) in first_us.iter().enumerate() {
        for seq in 0..written.get(i).copied().unwrap_or(0) {
            let arrived = usize::try_from(seq)
                .ok()
                .and_then(|s| table.get(s))
                .is_some_and(|&at| at != NEVER);
            if arrived {
                continue;
            }
            let full = out.len() >= keep;
            match out.last_mut() {
                Some((p, _, last)) if *p == i && *last + 1 == seq => *last = seq,
                _ if full => return out,
                _ => out.push((i, seq, seq)),
            }
        }
    }
    out
}

/// What the arrivals say about an outage that ended at `restart_us`: `written[i]` is how
/// many messages publisher `i` had written by then.
fn outage_figures(
    first_us: &[Vec<u64>],
    written: &[u64],
    restart_us: u64,
) -> (u64, u64, u64, Option<u64>, Option<u64>) {
    let (mut backlog, mut backlog_missing, mut after) = (0u64, 0u64, 0u64);
    let (mut first, mut last_of_backlog): (Option<u64>, Option<u64>) = (None, None);
    for (i, table) in first_us.iter().enumerate() {
        let before = written.get(i).copied().unwrap_or(0);
        for seq in 0..before {
            let at = usize::try_from(seq)
                .ok()
                .and_then(|s| table.get(s))
                .copied()
                .unwrap_or(NEVER);
            if at == NEVER {
                backlog += 1;
                backlog_missing += 1;
            } else if at >= restart_us {
                backlog += 1;
                last_of_backlog = Some(last_of_backlog.map_or(at, |l| l.max(at)));
            }
        }
        for &at in table.iter().filter(|&&at| at != NEVER && at >= restart_us) {
            after += 1;
            first = Some(first.map_or(at, |f| f.min(at)));
        }
    }
    let drain = if backlog_missing > 0 {
        None
    } else {
        Some(last_of_backlog.map_or(0, |l| l - restart_us))
    };
    (
        backlog,
        backlog_missing,
        after,
        first.map(|f| f - restart_us),
        drain,
    )
}

/// How the subscriber counts.
struct SinkParams {
    epoch: Instant,
    /// Only messages received between these offsets count for rate and latency.
    window: (Duration, Duration),
    received: Arc<AtomicU64>,
}

/// The upstream subscriber: reads, acknowledges and records until `stop`; when the
/// upstream goes away it connects again (every 100 ms) with its persistent session and
/// subscribes again.
async fn sink(
    client: SimClient,
    dialer: net::Dialer,
    first: PacketReader<Tls>,
    mut out: Arrivals,
    params: SinkParams,
    mut stop: watch::Receiver<bool>,
) -> Arrivals {
    let mut conn = Some(first);
    let mut acks = Vec::with_capacity(4096);
    loop {
        if *stop.borrow() {
            break;
        }
        let Some(reader) = conn.as_mut() else {
            let opened = async {
                let mut r = client
                    .open_within(&dialer, 0, Duration::from_secs(2))
                    .await?
                    .reader;
                net::mqtt_subscribe(&mut r, SINK_FILTER, 1).await?;
                anyhow::Ok(r)
            };
            tokio::select! {
                r = opened => match r {
                    Ok(r) => {
                        out.reconnects += 1;
                        conn = Some(r);
                    }
                    Err(_) => {
                        // The upstream is down: expected during the outage.
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = stop.changed() => break,
                        }
                    }
                },
                _ = stop.changed() => break,
            }
            continue;
        };
        tokio::select! {
            r = reader.fill() => if r.is_err() {
                conn = None;
                continue;
            },
            _ = stop.changed() => break,
        }
        let now = params.epoch.elapsed();
        let now_us = u64::try_from(now.as_micros()).unwrap_or(u64::MAX - 1);
        let counted = params.window.0 <= now && now < params.window.1;
        let before = out.distinct;
        loop {
            let packet = match reader.next_packet() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => {
                    conn = None;
                    break;
                }
            };
            let Packet::Publish { pkid, payload, .. } = packet else {
                continue;
            };
            if let Some(id) = pkid {
                mqtt::puback(&mut acks, id);
            }
            let Some((publisher, seq, sent_us)) = decode_header(payload) else {
                out.foreign += 1;
                continue;
            };
            let Ok(publisher) = usize::try_from(publisher) else {
                out.foreign += 1;
                continue;
            };
            if out.record(publisher, seq, now_us) && counted {
                out.in_window += 1;
                out.latency.record_us(now_us.saturating_sub(sent_us));
            }
        }
        params
            .received
            .fetch_add(out.distinct - before, Ordering::Relaxed);
        if let Some(reader) = conn.as_mut() {
            if !acks.is_empty() {
                let io = reader.get_mut();
                let written = async {
                    io.write_all(&acks).await?;
                    io.flush().await
                };
                if written.await.is_err() {
                    conn = None;
                }
            }
        }
        acks.clear();
    }
    if let Some(r) = conn {
        net::close(r.into_inner()).await;
    }
    out
}

/// The two ends of a run: the edge broker under test (devices connect there, with
/// certificates from `edge_ca`) and the upstream (the subscriber's certificate from
/// `sink_ca`).
pub(super) struct Ends<'a> {
    pub(super) edge: &'a BenchTarget,
    pub(super) edge_ca: &'a TestCa,
    pub(super) sink: &'a BenchTarget,
    pub(super) sink_ca: &'a TestCa,
}

/// Runs `cfg` over `ends`; `upstream` is stopped and started again for an outage. The
/// report's `bridge_status` and `edge_dropped` are left for the caller (certmq only).
pub(super) async fn run(
    ends: &Ends<'_>,
    cfg: &BridgeConfig,
    upstream: &mut Upstream,
) -> Result<BenchReport> {
    cfg.validate()?;
    ends.edge.validate()?;
    ends.sink.validate()?;
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let started = Instant::now();
    let mut errors = ErrorLog::default();

    // The subscriber first, with a persistent session, so that nothing forwarded before
    // it is there is lost upstream.
    let mut app = mint_app(ends.sink, ends.sink_ca, "bench-app")?;
    app.clean_session = false;
    let sink_dialer = ends.sink.dialer(SourceAddrs::kernel())?;
    let mut first = app
        .open(&sink_dialer, 0)
        .await
        .context("upstream subscriber")?
        .reader;
    net::mqtt_subscribe(&mut first, SINK_FILTER, 1)
        .await
        .context("upstream subscriber")?;
    let devices = mint_devices(ends.edge, ends.edge_ca, "pub", cfg.publishers, false)?;
    let edge_dialer = ends.edge.dialer(SourceAddrs::kernel())?;
    let mut conns = Vec::with_capacity(devices.len());
    for (i, d) in devices.iter().enumerate() {
        let opened = d
            .open(&edge_dialer, i + 1)
            .await
            .with_context(|| format!("publisher {}", d.client_id))?;
        conns.push((
            opened.reader,
            device_topic(ends.edge, &format!("pub{}", i + 1)),
        ));
    }

    let warmup = Duration::from_millis(cfg.warmup_ms);
    let end = warmup + Duration::from_millis(cfg.measure_ms);
    let epoch = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let sent: Vec<Arc<AtomicU64>> = (0..cfg.publishers).map(|_| Arc::default()).collect();
    let written = || -> Vec<u64> { sent.iter().map(|s| s.load(Ordering::Relaxed)).collect() };
    let (stop_pub_tx, stop_pub) = watch::channel(false);
    let (stop_sub_tx, stop_sub) = watch::channel(false);
    let sink_task = tokio::spawn(sink(
        app,
        sink_dialer,
        first,
        Arrivals::new(cfg.publishers),
        SinkParams {
            epoch,
            window: (warmup, end),
            received: received.clone(),
        },
        stop_sub.clone(),
    ));
    let sampler = start_sampler(
        epoch,
        acked.clone(),
        received.clone(),
        ends.edge.broker_pid,
        stop_sub,
    );
    let handles: Vec<PublisherHandle> = conns
        .into_iter()
        .enumerate()
        .map(|(i, (reader, topic))| {
            let params = PublisherParams {
                index: i as u32,
                topic,
                qos: 1,
                payload_bytes: cfg.payload_bytes,
                window: Arc::new(Semaphore::new(cfg.inflight)),
                release_on_puback: true,
                pace: Pacer::new(cfg.rate, cfg.publishers, i),
                epoch,
                sent: sent[i].clone(),
                acked: acked.clone(),
            };
            start_publisher(reader, params, stop_pub.clone())
        })
        .collect();

    let cpu = |up: &Upstream| {
        (
            ends.edge.broker_pid.and_then(cpu_seconds),
            up.pid().and_then(cpu_seconds),
        )
    };
    tokio::time::sleep_until(epoch + warmup).await;
    let (sent_before, acked_before) =
        (written().iter().sum::<u64>(), acked.load(Ordering::Relaxed));
    let cpu_before = cpu(upstream);
    let mut outage = None;
    if cfg.outage_ms > 0 {
        let stop_written = written().iter().sum::<u64>();
        upstream.stop().await.context("stop the upstream")?;
        let stopped = epoch.elapsed();
        tokio::time::sleep_until(epoch + warmup + Duration::from_millis(cfg.outage_ms)).await;
        upstream.restart().await.context("restart the upstream")?;
        let restarted = epoch.elapsed();
        let at_restart = written();
        outage = Some((stopped, restarted, stop_written, at_restart));
    }
    tokio::time::sleep_until(epoch + end).await;
    let (sent_after, acked_after) = (written().iter().sum::<u64>(), acked.load(Ordering::Relaxed));
    let cpu_after = cpu(upstream);
    let _ = stop_pub_tx.send(true);
    // PUBACKs of what was in flight at the stop still come: wait for them (at most
    // 5 s), so that the drain below waits for everything the edge acknowledged.
    let settle = Instant::now() + Duration::from_secs(5);
    while acked.load(Ordering::Relaxed) < written().iter().sum::<u64>() && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What the edge acknowledged is owed upstream. After an outage the bridge may still
    // be in its reconnect backoff (certmq: up to 30 s): wait longer before giving up.
    let (limit, quiet) = if outage.is_some() {
        (Duration::from_secs(90), Duration::from_secs(40))
    } else {
        (Duration::from_secs(30), Duration::from_secs(5))
    };
    let owed = acked.clone();
    drain_within(
        &received,
        move || owed.load(Ordering::Relaxed),
        limit,
        quiet,
    )
    .await;
    let acked_total = acked.load(Ordering::Relaxed);
    let stuck = acked_total.saturating_sub(received.load(Ordering::Relaxed));
    close_publishers(handles, &mut errors).await;
    if stuck > 0 {
        // Nothing moved for `quiet`: does something the edge still holds move once the
        // devices disconnect (their status events reach the org's message state)? A
        // bridge that only sends when another message arrives would show here.
        let before = received.load(Ordering::Relaxed);
        let owed = acked.clone();
        drain_within(
            &received,
            move || owed.load(Ordering::Relaxed),
            Duration::from_secs(10),
            Duration::from_secs(3),
        )
        .await;
        let late = received.load(Ordering::Relaxed) - before;
        if late > 0 {
            errors.push(format!(
                "{late} of {stuck} acknowledged messages missing after {} s without progress \
                 arrived only after the devices disconnected ({:.1} s after the publishers stopped)",
                quiet.as_secs(),
                (epoch.elapsed() - end).as_secs_f64(),
            ));
        }
    }
    let _ = stop_sub_tx.send(true);
    let arrivals = sink_task.await.context("upstream subscriber task")?;
    let samples = sampler.await.unwrap_or_default();
    let gaps: Vec<String> = missing_ranges(&arrivals.first_us, &written(), 10)
        .iter()
        .map(|(p, a, b)| format!("pub{} {a}–{b}", p + 1))
        .collect();
    if arrivals.reconnects > 0 && cfg.outage_ms == 0 {
        errors.push(format!(
            "the upstream subscriber lost its connection {} times",
            arrivals.reconnects
        ));
    }
    if arrivals.foreign > 0 {
        errors.push(format!(
            "the upstream subscriber got {} messages that were none of this run's",
            arrivals.foreign
        ));
    }

    let measure = end - warmup;
    let pct = |before: Option<f64>, after: Option<f64>| {
        Some((after? - before?) * 100.0 / measure.as_secs_f64().max(1e-9))
    };
    let outage = outage.map(|(stopped, restarted, stop_written, at_restart)| {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let (backlog, backlog_missing, after, first, drain) =
            outage_figures(&arrivals.first_us, &at_restart, us(restarted));
        OutageResult {
            down_s: (restarted - stopped).as_secs_f64(),
            sent_while_down: at_restart.iter().sum::<u64>().saturating_sub(stop_written),
            backlog,
            delivered_after_restart: after,
            backlog_missing,
            first_after_restart_s: first.map(|us| us as f64 / 1e6),
            drain_s: drain.map(|us| us as f64 / 1e6),
        }
    });
    let result = BridgeResult {
        publishers: cfg.publishers,
        payload_bytes: cfg.payload_bytes,
        inflight: cfg.inflight,
        rate: cfg.rate,
        measure_s: measure.as_secs_f64(),
        sent: written().iter().sum(),
        acked: acked_total,
        received: arrivals.distinct,
        duplicates: arrivals.duplicates,
        missing: acked_total.saturating_sub(arrivals.distinct),
        missing_ranges: gaps,
        offered_per_s: per_second(sent_after.saturating_sub(sent_before), measure),
        acked_per_s: per_second(acked_after.saturating_sub(acked_before), measure),
        delivered_per_s: per_second(arrivals.in_window, measure),
        latency: arrivals.latency.summary(),
        latency_curve: arrivals.latency.curve(),
        edge_cpu_pct: pct(cpu_before.0, cpu_after.0),
        upstream_cpu_pct: if outage.is_some() {
            None
        } else {
            pct(cpu_before.1, cpu_after.1)
        },
        edge_dropped: None,
        bridge_status: None,
        outage,
        acked_series: samples.acked,
        delivered_series: samples.received,
    };
    let (errors, error_count) = errors.into_parts();
    Ok(BenchReport {
        broker: ends.edge.broker.clone(),
        started_at,
        elapsed_s: started.elapsed().as_secs_f64(),
        broker_cpu_s: None,
        sim_cpu_s: None,
        config: serde_json::to_value(cfg).unwrap_or_default(),
        results: Results::Bridge(result),
        errors,
        error_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_count_distinct_and_duplicates_and_ignore_strangers() {
        let mut a = Arrivals::new(2);
        assert!(a.record(0, 0, 10));
        assert!(a.record(0, 2, 12), "a gap is filled in later");
        assert!(a.record(0, 1, 13));
        assert!(!a.record(0, 1, 14), "again: a duplicate");
        assert!(!a.record(5, 0, 15), "no such publisher");
        assert!(!a.record(1, MAX_SEQ + 1, 16), "no table that large");
        assert_eq!((a.distinct, a.duplicates, a.foreign), (3, 1, 2));
        assert_eq!(a.first_us[0], vec![10, 13, 12]);
        assert!(a.first_us[1].is_empty());
    }

    #[test]
    fn missing_ranges_are_runs_of_sequence_numbers() {
        let t = vec![vec![1, NEVER, NEVER, 4, NEVER], vec![1]];
        assert_eq!(
            missing_ranges(&t, &[6, 3], 10),
            vec![(0, 1, 2), (0, 4, 5), (1, 1, 2)]
        );
        assert_eq!(missing_ranges(&t, &[6, 3], 1), vec![(0, 1, 2)]);
        assert!(missing_ranges(&t, &[1, 1], 10).is_empty());
    }

    #[test]
    fn outage_figures_find_the_backlog_and_when_it_drained() {
        // Publisher 0 wrote 4 before the restart at t = 100: 0 and 1 arrived before it,
        // 2 and 3 after (the backlog), 4 was written later. Publisher 1 wrote 2: one
        // arrived after the restart, one never.
        let first_us = vec![vec![10, 20, 150, 130, 160], vec![120, NEVER]];
        let (backlog, missing, after, first, drain) = outage_figures(&first_us, &[4, 2], 100);
        assert_eq!((backlog, missing, after), (4, 1, 4));
        assert_eq!(first, Some(20));
        assert_eq!(drain, None, "one never arrived");
        let first_us = vec![vec![10, 20, 150, 130, 160], vec![120, 140]];
        let (backlog, missing, after, first, drain) = outage_figures(&first_us, &[4, 2], 100);
        assert_eq!((backlog, missing, after, first), (4, 0, 5, Some(20)));
        assert_eq!(drain, Some(50), "the backlog's last arrived at 150");
        let (backlog, _, after, first, drain) = outage_figures(&[vec![10]], &[1], 100);
        assert_eq!((backlog, after, first, drain), (0, 0, None, Some(0)));
    }

    #[test]
    fn topics_match_the_forward_rule_on_both_brokers() {
        let addr: SocketAddr = ([127, 0, 0, 1], 8883).into();
        let mut edge = BenchTarget::new("certmq", addr, "acme", "acme.messaging.localhost", "");
        assert_eq!(device_topic(&edge, "pub1"), EVENT_TOPIC);
        edge.watson_topics = false;
        // mosquitto's `topic sensor/# out 1 edge/ fleet/` makes it fleet/sensor/pub1/bench,
        // what certmq's fleet/{type}/{id}/{event} makes of pub1's bench event.
        assert_eq!(device_topic(&edge, "pub1"), "edge/sensor/pub1/bench");
    }

    #[test]
    fn validation() {
        assert!(BridgeConfig::default().validate().is_ok());
        assert!(BridgeConfig::outage().validate().is_ok());
        for bad in [
            BridgeConfig {
                rate: 0,
                ..BridgeConfig::outage()
            },
            BridgeConfig {
                outage_ms: 8_000,
                ..BridgeConfig::outage()
            },
            BridgeConfig {
                inflight: 0,
                ..BridgeConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
