//! `throughput` (fan-in) and `flood`: N devices publish to one application.
//!
//! Every payload starts with the publisher's index, its sequence number and the send
//! time (µs since the run's start, one clock: publishers and application live in this
//! process), so the application measures end-to-end latency and finds gaps.
//!
//! * **fan-in** is a closed loop: each publisher may have `window` messages on the way
//!   to the application; a permit comes back when the application receives one. So the
//!   broker runs at its saturation throughput with a bounded queue, and the latency is
//!   that of a saturated broker, not of an ever-growing backlog.
//! * **flood** is open towards the subscriber: publishers only wait for the broker's
//!   PUBACKs (`inflight` each), while the application reads at a fixed, slow pace. A
//!   broker then has to slow publishers down, buffer, or drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, WriteHalf};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::latency::Latency;
use super::mqtt::{self, Packet};
use super::net::{self, PacketReader, SourceAddrs, Tls};
use super::proc::rss_kib;
use super::report::{ErrorLog, FloodResult, ThroughputResult};
use super::{mint_app, mint_devices, BenchTarget};
use crate::certs::TestCa;

/// Topic the devices publish on (certmq shows it to applications as
/// `iot-2/type/<t>/id/<d>/evt/bench/fmt/bin`).
pub const EVENT_TOPIC: &str = "iot-2/evt/bench/fmt/bin";
/// Publisher index (u32), sequence number (u64), send time in µs (u64).
const HEADER: usize = 20;
/// PUBLISH packets a publisher writes in one go when its window allows.
const BATCH: usize = 32;
/// Rates are sampled this often.
const SAMPLE: Duration = Duration::from_millis(250);
/// The drain ends when nothing arrived for this long.
const QUIET: Duration = Duration::from_secs(3);

/// Parameters of `throughput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputConfig {
    /// Publishing devices.
    pub publishers: usize,
    /// QoS of the publishes and of the application's subscription (0 or 1).
    pub qos: u8,
    /// Payload size, bytes (at least 20).
    pub payload_bytes: usize,
    /// Messages each publisher may have on the way to the application.
    pub window: usize,
    /// Unmeasured start, ms.
    pub warmup_ms: u64,
    /// Measurement window, ms.
    pub measure_ms: u64,
}

impl Default for ThroughputConfig {
    fn default() -> Self {
        Self {
            publishers: 10,
            qos: 1,
            payload_bytes: 64,
            window: 10,
            warmup_ms: 1_000,
            measure_ms: 10_000,
        }
    }
}

impl ThroughputConfig {
    pub fn validate(&self) -> Result<()> {
        check_common(self.publishers, self.payload_bytes)?;
        if self.qos > 1 {
            bail!("throughput: qos must be 0 or 1");
        }
        if !(1..=10_000).contains(&self.window) {
            bail!("throughput: window must be in 1..=10000");
        }
        if self.measure_ms == 0 {
            bail!("throughput: measure_ms must be above 0");
        }
        Ok(())
    }
}

/// Parameters of `flood`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FloodConfig {
    /// Publishing devices (QoS 1).
    pub publishers: usize,
    /// Payload size, bytes (at least 20).
    pub payload_bytes: usize,
    /// Unacknowledged PUBLISHes each publisher may have.
    pub inflight: usize,
    /// Messages per second the subscriber reads at most.
    pub subscriber_rate: u64,
    /// How long the publishers flood, ms.
    pub flood_ms: u64,
    /// Longest wait for the subscriber to catch up afterwards, ms.
    pub drain_ms: u64,
}

impl Default for FloodConfig {
    fn default() -> Self {
        Self {
            publishers: 4,
            payload_bytes: 64,
            inflight: 100,
            subscriber_rate: 2_000,
            flood_ms: 10_000,
            drain_ms: 60_000,
        }
    }
}

impl FloodConfig {
    pub fn validate(&self) -> Result<()> {
        check_common(self.publishers, self.payload_bytes)?;
        if !(1..=65_000).contains(&self.inflight) {
            bail!("flood: inflight must be in 1..=65000");
        }
        if self.subscriber_rate == 0 || self.flood_ms == 0 {
            bail!("flood: subscriber_rate and flood_ms must be above 0");
        }
        Ok(())
    }
}

fn check_common(publishers: usize, payload_bytes: usize) -> Result<()> {
    if !(1..=10_000).contains(&publishers) {
        bail!("publishers must be in 1..=10000");
    }
    if !(HEADER..=256 * 1024).contains(&payload_bytes) {
        bail!("payload_bytes must be in {HEADER}..=262144");
    }
    Ok(())
}

/// Writes the payload header; the rest of `payload` stays as it is.
fn encode_header(payload: &mut [u8], publisher: u32, seq: u64, sent_us: u64) {
    payload[0..4].copy_from_slice(&publisher.to_le_bytes());
    payload[4..12].copy_from_slice(&seq.to_le_bytes());
    payload[12..20].copy_from_slice(&sent_us.to_le_bytes());
}

/// `(publisher, seq, sent_us)` of a payload written by [`encode_header`].
fn decode_header(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let publisher = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(payload.get(4..12)?.try_into().ok()?);
    let sent_us = u64::from_le_bytes(payload.get(12..20)?.try_into().ok()?);
    Some((publisher, seq, sent_us))
}

/// Per-publisher sequence tracking at the receiver: counts new messages, gaps (lost)
/// and duplicates (QoS 1 redelivery).
#[derive(Debug, Default, Clone, PartialEq)]
struct SeqTracker {
    next: Vec<u64>,
    received: u64,
    lost: u64,
    duplicates: u64,
}

impl SeqTracker {
    fn new(publishers: usize) -> Self {
        Self {
            next: vec![0; publishers],
            ..Default::default()
        }
    }

    /// Records `seq` of `publisher`; returns how many window permits it frees: 1 for
    /// the message plus one per message skipped (lost), 0 for a duplicate or an unknown
    /// publisher.
    fn record(&mut self, publisher: usize, seq: u64) -> u64 {
        let Some(next) = self.next.get_mut(publisher) else {
            return 0;
        };
        if seq < *next {
            self.duplicates += 1;
            return 0;
        }
        let skipped = seq - *next;
        *next = seq + 1;
        self.received += 1;
        self.lost += skipped;
        1 + skipped
    }
}

/// What the application task saw.
struct SubOutcome {
    seqs: SeqTracker,
    latency: Latency,
    in_window: u64,
}

/// How the application task behaves.
struct SubParams {
    epoch: Instant,
    /// Only messages received between these offsets are counted for rate and latency.
    window: (Duration, Duration),
    /// Permits to give back per publisher (fan-in's closed loop).
    release: Option<Vec<Arc<Semaphore>>>,
    /// Messages per second at most (flood's slow subscriber).
    rate_limit: Option<u64>,
}

/// The application's receive loop: counts, measures, acknowledges QoS 1, until `stop`.
async fn subscriber(
    mut reader: PacketReader<Tls>,
    params: SubParams,
    publishers: usize,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> Result<SubOutcome> {
    let mut out = SubOutcome {
        seqs: SeqTracker::new(publishers),
        latency: Latency::new(),
        in_window: 0,
    };
    let mut acks = Vec::with_capacity(4096);
    let started = Instant::now();
    loop {
        tokio::select! {
            r = reader.fill() => r.context("application connection")?,
            _ = stop.changed() => break,
        }
        let now = params.epoch.elapsed();
        let now_us = u64::try_from(now.as_micros()).unwrap_or(u64::MAX);
        let counted = params.window.0 <= now && now < params.window.1;
        while let Some(packet) = reader.next_packet()? {
            let Packet::Publish { pkid, payload, .. } = packet else {
                continue;
            };
            if let Some(id) = pkid {
                mqtt::puback(&mut acks, id);
            }
            let Some((publisher, seq, sent_us)) = decode_header(payload) else {
                continue;
            };
            let freed = out.seqs.record(publisher as usize, seq);
            if freed == 0 {
                continue;
            }
            if let Some(sems) = &params.release {
                if let Some(sem) = sems.get(publisher as usize) {
                    sem.add_permits(freed as usize);
                }
            }
            if counted {
                out.in_window += 1;
                out.latency.record_us(now_us.saturating_sub(sent_us));
            }
        }
        received.store(out.seqs.received, Ordering::Relaxed);
        if !acks.is_empty() {
            let io = reader.get_mut();
            io.write_all(&acks).await?;
            io.flush().await?;
            acks.clear();
        }
        if let Some(rate) = params.rate_limit {
            let due = Duration::from_secs_f64(out.seqs.received as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed {
                tokio::select! {
                    _ = tokio::time::sleep(due - elapsed) => {}
                    _ = stop.changed() => break,
                }
            }
        }
    }
    Ok(out)
}

/// A publisher's connection, kept open until the run ends.
struct PublisherHandle {
    writer: JoinHandle<Result<WriteHalf<Tls>>>,
    acks: JoinHandle<Result<()>>,
}

/// Starts a publisher: writes PUBLISH packets while `window` has permits, until `stop`.
/// PUBACKs are counted in `acked`; with `release_on_puback` each gives a permit back.
#[allow(clippy::too_many_arguments)]
fn start_publisher(
    index: u32,
    reader: PacketReader<Tls>,
    qos: u8,
    payload_bytes: usize,
    window: Arc<Semaphore>,
    release_on_puback: bool,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
) -> PublisherHandle {
    let (rh, mut wh) = tokio::io::split(reader.into_inner());
    let ack_window = window.clone();
    let acks = tokio::spawn(async move {
        let mut r = PacketReader::new(rh, 4096);
        loop {
            r.fill().await?;
            let mut n = 0;
            while let Some(p) = r.next_packet()? {
                if let Packet::PubAck { .. } = p {
                    n += 1;
                }
            }
            if n > 0 {
                acked.fetch_add(n, Ordering::Relaxed);
                if release_on_puback {
                    ack_window.add_permits(n as usize);
                }
            }
        }
    });
    let writer = tokio::spawn(async move {
        let mut payload = vec![0u8; payload_bytes];
        let mut buf = Vec::with_capacity(BATCH * (payload_bytes + 40));
        let (mut seq, mut pkid) = (0u64, 0u16);
        loop {
            let permit = tokio::select! {
                p = window.acquire() => p?,
                _ = stop.changed() => break,
            };
            permit.forget();
            let mut n = 1;
            while n < BATCH {
                match window.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            buf.clear();
            let sent_us = u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            for _ in 0..n {
                encode_header(&mut payload, index, seq, sent_us);
                pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
                mqtt::publish(&mut buf, EVENT_TOPIC, qos, pkid, &payload);
                seq += 1;
            }
            let write = async {
                wh.write_all(&buf).await?;
                wh.flush().await
            };
            tokio::select! {
                r = write => r.context("publisher connection")?,
                _ = stop.changed() => break,
            }
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        Ok(wh)
    });
    PublisherHandle { writer, acks }
}

/// Counters sampled over time.
#[derive(Default)]
struct Samples {
    received: Vec<(f64, f64)>,
    acked: Vec<(f64, f64)>,
    rss_mib: Vec<(f64, f64)>,
    peak_rss_kib: Option<u64>,
}

/// Samples the rates of `acked`/`received` every [`SAMPLE`] and the broker's RSS every
/// 50 ms, until `stop`.
fn start_sampler(
    epoch: Instant,
    acked: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    pid: Option<u32>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Samples> {
    tokio::spawn(async move {
        let mut s = Samples::default();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let (mut last_acked, mut last_received, mut n) = (0u64, 0u64, 0u64);
        let per_sec = 1.0 / SAMPLE.as_secs_f64();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let t = epoch.elapsed().as_secs_f64();
            if let Some(kib) = pid.and_then(rss_kib) {
                s.peak_rss_kib = Some(s.peak_rss_kib.unwrap_or(0).max(kib));
                s.rss_mib.push((t, kib as f64 / 1024.0));
            }
            n += 1;
            if n.is_multiple_of(5) {
                let (a, r) = (
                    acked.load(Ordering::Relaxed),
                    received.load(Ordering::Relaxed),
                );
                s.acked.push((t, (a - last_acked) as f64 * per_sec));
                s.received.push((t, (r - last_received) as f64 * per_sec));
                (last_acked, last_received) = (a, r);
            }
        }
        s
    })
}

/// Waits until `received` reaches `target()` or stops moving for [`QUIET`], at most
/// `limit`.
async fn drain(received: &AtomicU64, target: impl Fn() -> u64, limit: Duration) {
    let end = Instant::now() + limit;
    let mut last = received.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    while Instant::now() < end {
        let now = received.load(Ordering::Relaxed);
        if now >= target() {
            return;
        }
        if now != last {
            (last, last_change) = (now, Instant::now());
        } else if last_change.elapsed() >= QUIET {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The application and the publishers, connected and subscribed.
struct Clients {
    app: PacketReader<Tls>,
    publishers: Vec<PacketReader<Tls>>,
}

async fn connect_clients(
    target: &BenchTarget,
    ca: &TestCa,
    publishers: usize,
    qos: u8,
) -> Result<Clients> {
    let app = mint_app(target, ca, "bench-app")?;
    let devices = mint_devices(target, ca, "pub", publishers, false)?;
    let dialer = target.dialer(SourceAddrs::kernel())?;
    let mut app_conn = app
        .open(&dialer, 0)
        .await
        .with_context(|| format!("application {}", app.client_id))?
        .reader;
    net::mqtt_subscribe(&mut app_conn, &target.app_filter, qos)
        .await
        .with_context(|| format!("application {}", app.client_id))?;
    let mut conns = Vec::with_capacity(publishers);
    for (i, d) in devices.iter().enumerate() {
        let opened = d
            .open(&dialer, i + 1)
            .await
            .with_context(|| format!("publisher {}", d.client_id))?;
        conns.push(opened.reader);
    }
    Ok(Clients {
        app: app_conn,
        publishers: conns,
    })
}

/// Stops the publishers' tasks and closes their connections.
async fn close_publishers(handles: Vec<PublisherHandle>, errors: &mut ErrorLog) {
    for h in handles {
        h.acks.abort();
        match h.writer.await {
            Ok(Ok(mut wh)) => {
                let _ = wh.write_all(&mqtt::DISCONNECT).await;
                let _ = wh.shutdown().await;
            }
            Ok(Err(e)) => errors.push(format!("publisher: {e:#}")),
            Err(e) => errors.push(format!("publisher task: {e}")),
        }
    }
}

/// Fan-in: see the [module docs](self).
pub(crate) async fn run_fan_in(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &ThroughputConfig,
    errors: &mut ErrorLog,
) -> Result<ThroughputResult> {
    let clients = connect_clients(target, ca, cfg.publishers, cfg.qos).await?;
    let windows: Vec<Arc<Semaphore>> = (0..cfg.publishers)
        .map(|_| Arc::new(Semaphore::new(cfg.window)))
        .collect();
    let (acked, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sent: Vec<Arc<AtomicU64>> = (0..cfg.publishers).map(|_| Arc::default()).collect();
    let (stop_pub_tx, stop_pub) = watch::channel(false);
    let (stop_sub_tx, stop_sub) = watch::channel(false);
    let epoch = Instant::now();
    let warmup = Duration::from_millis(cfg.warmup_ms);
    let measure = Duration::from_millis(cfg.measure_ms);
    let sub = tokio::spawn(subscriber(
        clients.app,
        SubParams {
            epoch,
            window: (warmup, warmup + measure),
            release: Some(windows.clone()),
            rate_limit: None,
        },
        cfg.publishers,
        received.clone(),
        stop_sub.clone(),
    ));
    let sampler = start_sampler(epoch, acked.clone(), received.clone(), None, stop_sub);
    let handles: Vec<PublisherHandle> = clients
        .publishers
        .into_iter()
        .enumerate()
        .map(|(i, reader)| {
            start_publisher(
                i as u32,
                reader,
                cfg.qos,
                cfg.payload_bytes,
                windows[i].clone(),
                false,
                epoch,
                stop_pub.clone(),
                sent[i].clone(),
                acked.clone(),
            )
        })
        .collect();
    tokio::time::sleep_until(epoch + warmup + measure).await;
    let _ = stop_pub_tx.send(true);
    let total_sent = || sent.iter().map(|s| s.load(Ordering::Relaxed)).sum::<u64>();
    drain(&received, total_sent, Duration::from_secs(10)).await;
    let _ = stop_sub_tx.send(true);
    let outcome = sub.await.context("application task")?;
    let samples = sampler.await.unwrap_or_default();
    close_publishers(handles, errors).await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => bail!("application: {e:#}"),
    };
    let sent_total = total_sent();
    Ok(ThroughputResult {
        qos: cfg.qos,
        publishers: cfg.publishers,
        payload_bytes: cfg.payload_bytes,
        window: cfg.window,
        measure_s: measure.as_secs_f64(),
        sent: sent_total,
        received: outcome.seqs.received,
        missing: sent_total.saturating_sub(outcome.seqs.received),
        rate_per_s: outcome.in_window as f64 / measure.as_secs_f64(),
        latency: outcome.latency.summary(),
        latency_curve: outcome.latency.curve(),
        rate_series: samples.received,
    })
}

/// Flood: see the [module docs](self).
pub(crate) async fn run_flood(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &FloodConfig,
    errors: &mut ErrorLog,
) -> Result<FloodResult> {
    let clients = connect_clients(target, ca, cfg.publishers, 1).await?;
    let pid = target.broker_pid;
    let rss_before = pid.and_then(rss_kib);
    let (acked, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (stop_pub_tx, stop_pub) = watch::channel(false);
    let (stop_sub_tx, stop_sub) = watch::channel(false);
    let epoch = Instant::now();
    let flood = Duration::from_millis(cfg.flood_ms);
    let sub = tokio::spawn(subscriber(
        clients.app,
        SubParams {
            epoch,
            window: (Duration::ZERO, flood),
            release: None,
            rate_limit: Some(cfg.subscriber_rate),
        },
        cfg.publishers,
        received.clone(),
        stop_sub.clone(),
    ));
    let sampler = start_sampler(epoch, acked.clone(), received.clone(), pid, stop_sub);
    let sent = Arc::new(AtomicU64::new(0));
    let handles: Vec<PublisherHandle> = clients
        .publishers
        .into_iter()
        .enumerate()
        .map(|(i, reader)| {
            start_publisher(
                i as u32,
                reader,
                1,
                cfg.payload_bytes,
                Arc::new(Semaphore::new(cfg.inflight)),
                true,
                epoch,
                stop_pub.clone(),
                sent.clone(),
                acked.clone(),
            )
        })
        .collect();
    tokio::time::sleep_until(epoch + flood).await;
    let published_in_flood = acked.load(Ordering::Relaxed);
    let received_in_flood = received.load(Ordering::Relaxed);
    let _ = stop_pub_tx.send(true);
    // PUBACKs of what was in flight at the stop still count as published.
    let acked_now = acked.clone();
    drain(
        &received,
        move || acked_now.load(Ordering::Relaxed),
        Duration::from_millis(cfg.drain_ms),
    )
    .await;
    let _ = stop_sub_tx.send(true);
    let outcome = sub.await.context("application task")?;
    let samples = sampler.await.unwrap_or_default();
    let published = acked.load(Ordering::Relaxed);
    close_publishers(handles, errors).await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => bail!("application: {e:#}"),
    };
    let secs = flood.as_secs_f64();
    Ok(FloodResult {
        publishers: cfg.publishers,
        payload_bytes: cfg.payload_bytes,
        subscriber_rate: cfg.subscriber_rate,
        flood_s: secs,
        published,
        received: outcome.seqs.received,
        missing: published.saturating_sub(outcome.seqs.received),
        lost: outcome.seqs.lost,
        undelivered: published.saturating_sub(outcome.seqs.received + outcome.seqs.lost),
        in_per_s: published_in_flood as f64 / secs,
        out_per_s: received_in_flood as f64 / secs,
        rss_before_kib: rss_before,
        peak_rss_kib: samples.peak_rss_kib,
        in_series: samples.acked,
        out_series: samples.received,
        rss_series: samples.rss_mib,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let mut p = vec![0xAAu8; 64];
        encode_header(&mut p, 7, 123_456_789, 42);
        assert_eq!(decode_header(&p), Some((7, 123_456_789, 42)));
        assert_eq!(p[20], 0xAA, "padding untouched");
        assert_eq!(decode_header(&p[..19]), None);
    }

    #[test]
    fn sequence_tracking_counts_gaps_and_duplicates() {
        let mut t = SeqTracker::new(2);
        assert_eq!(t.record(0, 0), 1);
        assert_eq!(t.record(0, 1), 1);
        assert_eq!(
            t.record(0, 4),
            3,
            "2 and 3 skipped: their permits come back too"
        );
        assert_eq!(t.record(0, 3), 0, "late or duplicate");
        assert_eq!(t.record(1, 0), 1);
        assert_eq!(t.record(5, 0), 0, "unknown publisher");
        assert_eq!((t.received, t.lost, t.duplicates), (4, 2, 1));
    }

    #[test]
    fn validation() {
        assert!(ThroughputConfig::default().validate().is_ok());
        assert!(FloodConfig::default().validate().is_ok());
        let t = ThroughputConfig::default();
        for bad in [
            ThroughputConfig {
                qos: 2,
                ..t.clone()
            },
            ThroughputConfig {
                publishers: 0,
                ..t.clone()
            },
            ThroughputConfig {
                payload_bytes: 19,
                ..t.clone()
            },
            ThroughputConfig {
                window: 0,
                ..t.clone()
            },
            ThroughputConfig {
                measure_ms: 0,
                ..t.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let f = FloodConfig::default();
        for bad in [
            FloodConfig {
                inflight: 0,
                ..f.clone()
            },
            FloodConfig {
                subscriber_rate: 0,
                ..f.clone()
            },
            FloodConfig {
                publishers: 0,
                ..f.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
