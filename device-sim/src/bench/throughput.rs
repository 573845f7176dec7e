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

use std::ops::Range;
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
use super::proc::{cpu_seconds, rss_kib};
use super::report::{ErrorLog, FloodResult, OrgThroughput, PubackResult, ThroughputResult};
use super::{mint_app, mint_devices, org_ids, BenchTarget};
use crate::certs::TestCa;

/// Topic the devices publish on (certmq shows it to applications as
/// `iot-2/type/<t>/id/<d>/evt/bench/fmt/bin`).
pub const EVENT_TOPIC: &str = "iot-2/evt/bench/fmt/bin";
/// Publisher index (u32), sequence number (u64), send time in µs (u64).
pub(super) const HEADER: usize = 20;
/// PUBLISH packets a publisher writes in one go when its window allows.
const BATCH: usize = 32;
/// Rates are sampled this often.
const SAMPLE: Duration = Duration::from_millis(250);
/// The drain ends when nothing arrived for this long.
const QUIET: Duration = Duration::from_secs(3);
/// Most orgs a fan-in run spreads over.
pub const MAX_ORGS: usize = 100;

/// Publishers `0..publishers` split over `orgs` orgs in contiguous, equal shares; the
/// first `publishers % orgs` orgs get one more.
pub(super) fn org_shares(publishers: usize, orgs: usize) -> Vec<Range<usize>> {
    let orgs = orgs.max(1);
    let (each, extra) = (publishers / orgs, publishers % orgs);
    let mut start = 0;
    (0..orgs)
        .map(|k| {
            let end = start + each + usize::from(k < extra);
            let r = start..end;
            start = end;
            r
        })
        .collect()
}

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
    /// Orgs the publishers are split over (the target's org, then `org2`, …): each org
    /// has its own application and an equal share of the publishers (see
    /// [`org_shares`]). 1: the single-org fan-in.
    #[serde(default = "one")]
    pub orgs: usize,
}

fn one() -> usize {
    1
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
            orgs: 1,
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
        if !(1..=MAX_ORGS).contains(&self.orgs) || self.orgs > self.publishers {
            bail!("throughput: orgs must be in 1..={MAX_ORGS} and at most the publishers");
        }
        Ok(())
    }
}

/// Parameters of the PUBACK-driven fan-in (`throughput --driver puback`), QoS 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PubackConfig {
    /// Publishing devices.
    pub publishers: usize,
    /// Payload size, bytes (at least 20).
    pub payload_bytes: usize,
    /// PUBLISHes each publisher may have unacknowledged by the broker (rumqttc's default
    /// is 100, paho's 20).
    pub inflight: usize,
    /// Total offered msgs/s over all publishers, paced evenly; 0: as fast as PUBACKs
    /// allow.
    pub rate: u64,
    /// Unmeasured start, ms.
    pub warmup_ms: u64,
    /// Measurement window, ms.
    pub measure_ms: u64,
    /// The application connects with clean session 0 (`durable`): a persistent session,
    /// so a broker that keeps sessions durable writes every message to disk before its
    /// PUBACK.
    #[serde(default)]
    pub persistent_subscriber: bool,
}

impl Default for PubackConfig {
    fn default() -> Self {
        Self {
            publishers: 8,
            payload_bytes: 64,
            inflight: 100,
            rate: 0,
            warmup_ms: 1_000,
            measure_ms: 4_000,
            persistent_subscriber: false,
        }
    }
}

impl PubackConfig {
    pub fn validate(&self) -> Result<()> {
        check_common(self.publishers, self.payload_bytes)?;
        check_inflight(self.inflight)?;
        if self.measure_ms == 0 {
            bail!("puback: measure_ms must be above 0");
        }
        if self.rate > 10_000_000 {
            bail!("puback: rate must be at most 10,000,000 msgs/s");
        }
        Ok(())
    }
}

/// Even pacing of one publisher's share of a total rate. Message `k` is due at
/// `offset + k × interval`; the publishers' offsets are spread over one interval so that
/// the broker sees an even stream rather than all publishers sending at the same instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Pacer {
    interval_s: f64,
    offset_s: f64,
}

impl Pacer {
    /// Publisher `index`'s pacer for `total_rate` msgs/s over `publishers`; `None` when
    /// unpaced (rate 0).
    pub(super) fn new(total_rate: u64, publishers: usize, index: usize) -> Option<Self> {
        if total_rate == 0 || publishers == 0 {
            return None;
        }
        let interval_s = publishers as f64 / total_rate as f64;
        Some(Self {
            interval_s,
            offset_s: interval_s * index as f64 / publishers as f64,
        })
    }

    /// When message `k` (from 0) is due, from the run's start.
    fn due_at(&self, k: u64) -> Duration {
        Duration::from_secs_f64(self.offset_s + k as f64 * self.interval_s)
    }

    /// How many messages are due `elapsed` after the run's start: the `k` with
    /// `due_at(k) <= elapsed`.
    fn due_by(&self, elapsed: Duration) -> u64 {
        let t = elapsed.as_secs_f64() - self.offset_s;
        let mut n = if t < 0.0 {
            0
        } else {
            (t / self.interval_s).floor() as u64 + 1
        };
        // The estimate may be off by one either way after float rounding; `due_at` is
        // the definition.
        while n > 0 && self.due_at(n - 1) > elapsed {
            n -= 1;
        }
        while self.due_at(n) <= elapsed {
            n += 1;
        }
        n
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
        check_inflight(self.inflight)?;
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

/// PUBACK-driven publishers number their PUBLISHes with 16-bit packet ids: the
/// unacknowledged ones must stay distinct.
pub(super) fn check_inflight(inflight: usize) -> Result<()> {
    if !(1..=65_000).contains(&inflight) {
        bail!("inflight must be in 1..=65000");
    }
    Ok(())
}

/// Writes the payload header; the rest of `payload` stays as it is.
pub(super) fn encode_header(payload: &mut [u8], publisher: u32, seq: u64, sent_us: u64) {
    payload[0..4].copy_from_slice(&publisher.to_le_bytes());
    payload[4..12].copy_from_slice(&seq.to_le_bytes());
    payload[12..20].copy_from_slice(&sent_us.to_le_bytes());
}

/// `(publisher, seq, sent_us)` of a payload written by [`encode_header`].
pub(super) fn decode_header(payload: &[u8]) -> Option<(u32, u64, u64)> {
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
    /// Messages from publishers of another org (a broker that mixes orgs' topics).
    foreign: u64,
}

impl SubOutcome {
    /// The outcomes of several applications as one: counts added, latencies merged.
    fn merge(outcomes: &[SubOutcome]) -> SubOutcome {
        let mut all = SubOutcome {
            seqs: SeqTracker::default(),
            latency: Latency::new(),
            in_window: 0,
            foreign: 0,
        };
        for o in outcomes {
            all.seqs.received += o.seqs.received;
            all.seqs.lost += o.seqs.lost;
            all.seqs.duplicates += o.seqs.duplicates;
            all.latency.merge(&o.latency);
            all.in_window += o.in_window;
            all.foreign += o.foreign;
        }
        all
    }
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
    /// The publishers (indices) of this application's org; others' messages are foreign.
    expected: Range<usize>,
}

/// The application's receive loop: counts, measures, acknowledges QoS 1, until `stop`.
/// `received` is shared by every application of a run: each adds its new messages.
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
        foreign: 0,
    };
    let mut reported = 0u64;
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
            if !params.expected.contains(&(publisher as usize)) {
                out.foreign += 1;
                continue;
            }
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
        received.fetch_add(out.seqs.received - reported, Ordering::Relaxed);
        reported = out.seqs.received;
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
pub(super) struct PublisherHandle {
    writer: JoinHandle<Result<WriteHalf<Tls>>>,
    acks: JoinHandle<Result<()>>,
}

/// How one publisher sends.
pub(super) struct PublisherParams {
    pub(super) index: u32,
    /// Topic of every PUBLISH (the org's prefix + [`EVENT_TOPIC`]).
    pub(super) topic: String,
    pub(super) qos: u8,
    pub(super) payload_bytes: usize,
    /// Permits to send: the messages this publisher may have on the way.
    pub(super) window: Arc<Semaphore>,
    /// Each PUBACK gives a permit back (PUBACK-driven, like a device SDK); otherwise the
    /// application does (fan-in's closed loop).
    pub(super) release_on_puback: bool,
    /// Send no message before it is due.
    pub(super) pace: Option<Pacer>,
    pub(super) epoch: Instant,
    pub(super) sent: Arc<AtomicU64>,
    pub(super) acked: Arc<AtomicU64>,
}

/// Starts a publisher: writes PUBLISH packets while its window has permits (and, when
/// paced, messages are due), until `stop`. PUBACKs are counted in `acked`.
pub(super) fn start_publisher(
    reader: PacketReader<Tls>,
    p: PublisherParams,
    mut stop: watch::Receiver<bool>,
) -> PublisherHandle {
    let (rh, mut wh) = tokio::io::split(reader.into_inner());
    let (ack_window, acked, release_on_puback) =
        (p.window.clone(), p.acked.clone(), p.release_on_puback);
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
        let mut payload = vec![0u8; p.payload_bytes];
        let mut buf = Vec::with_capacity(BATCH * (p.payload_bytes + 40));
        let (mut seq, mut pkid) = (0u64, 0u16);
        loop {
            let mut batch = BATCH as u64;
            if let Some(pace) = &p.pace {
                let due = pace.due_by(p.epoch.elapsed());
                if due <= seq {
                    tokio::select! {
                        _ = tokio::time::sleep_until(p.epoch + pace.due_at(seq)) => continue,
                        _ = stop.changed() => break,
                    }
                }
                batch = batch.min(due - seq);
            }
            let permit = tokio::select! {
                permit = p.window.acquire() => permit?,
                _ = stop.changed() => break,
            };
            permit.forget();
            let mut n = 1;
            while n < batch {
                match p.window.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            buf.clear();
            let sent_us = u64::try_from(p.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
            for _ in 0..n {
                encode_header(&mut payload, p.index, seq, sent_us);
                pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
                mqtt::publish(&mut buf, &p.topic, p.qos, pkid, &payload);
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
            p.sent.fetch_add(n, Ordering::Relaxed);
        }
        Ok(wh)
    });
    PublisherHandle { writer, acks }
}

/// Counters sampled over time.
#[derive(Default)]
pub(super) struct Samples {
    pub(super) received: Vec<(f64, f64)>,
    pub(super) acked: Vec<(f64, f64)>,
    pub(super) rss_mib: Vec<(f64, f64)>,
    pub(super) peak_rss_kib: Option<u64>,
}

/// Samples the rates of `acked`/`received` every [`SAMPLE`] and the broker's RSS every
/// 50 ms, until `stop`.
pub(super) fn start_sampler(
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
    drain_within(received, target, limit, QUIET).await;
}

/// [`drain`] with another quiet time: waits until `received` reaches `target()` or stops
/// moving for `quiet`, at most `limit`.
pub(super) async fn drain_within(
    received: &AtomicU64,
    target: impl Fn() -> u64,
    limit: Duration,
    quiet: Duration,
) {
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
        } else if last_change.elapsed() >= quiet {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One org of a run: its application and its publishers' indices.
struct OrgClients {
    org: String,
    app: PacketReader<Tls>,
    publishers: Range<usize>,
}

/// The applications (one per org) and the publishers, connected and subscribed.
struct Clients {
    orgs: Vec<OrgClients>,
    /// Every org's publishers in index order, each with the topic it publishes on.
    publishers: Vec<(PacketReader<Tls>, String)>,
}

/// Connects one application per org (subscribed to its org's events at `qos`), then the
/// publishers, split over the orgs by [`org_shares`]. One org: the target as it is.
async fn connect_clients(target: &BenchTarget, ca: &TestCa, spec: &RunSpec) -> Result<Clients> {
    let orgs = org_ids(&target.org, spec.orgs)?;
    let targets: Vec<BenchTarget> = if orgs.len() == 1 {
        vec![target.clone()]
    } else {
        orgs.iter().map(|o| target.for_org(o)).collect()
    };
    let shares = org_shares(spec.publishers, targets.len());
    let mut out = Clients {
        orgs: Vec::with_capacity(targets.len()),
        publishers: Vec::with_capacity(spec.publishers),
    };
    for (t, share) in targets.iter().zip(&shares) {
        let mut app = mint_app(t, ca, "bench-app")?;
        app.clean_session = !spec.persistent_app;
        let dialer = t.dialer(SourceAddrs::kernel())?;
        let mut app_conn = app
            .open(&dialer, 0)
            .await
            .with_context(|| format!("application {}", app.client_id))?
            .reader;
        net::mqtt_subscribe(&mut app_conn, &t.app_filter, spec.qos)
            .await
            .with_context(|| format!("application {}", app.client_id))?;
        out.orgs.push(OrgClients {
            org: t.org.clone(),
            app: app_conn,
            publishers: share.clone(),
        });
    }
    for (t, share) in targets.iter().zip(&shares) {
        let devices = mint_devices(t, ca, "pub", share.len(), false)?;
        let dialer = t.dialer(SourceAddrs::kernel())?;
        let topic = format!("{}{EVENT_TOPIC}", t.topic_prefix);
        for (d, i) in devices.iter().zip(share.clone()) {
            let opened = d
                .open(&dialer, i + 1)
                .await
                .with_context(|| format!("publisher {}", d.client_id))?;
            out.publishers.push((opened.reader, topic.clone()));
        }
    }
    Ok(out)
}

/// Stops the publishers' tasks and closes their connections.
pub(super) async fn close_publishers(handles: Vec<PublisherHandle>, errors: &mut ErrorLog) {
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

/// One run of publishers → application; every driver is a set of these parameters.
struct RunSpec {
    publishers: usize,
    qos: u8,
    payload_bytes: usize,
    /// Messages each publisher may have on the way.
    window: usize,
    /// PUBACKs give the window back (device SDKs); otherwise the application's receipt
    /// does (fan-in's closed loop).
    release_on_puback: bool,
    /// Total msgs/s over all publishers (0: unpaced).
    rate: u64,
    /// Unmeasured start.
    warmup: Duration,
    /// Measured part; the publishers stop at its end.
    measure: Duration,
    /// The application reads at most this many msgs/s (flood's slow subscriber).
    subscriber_rate: Option<u64>,
    /// Longest wait for the application to catch up after the publishers stopped.
    drain: Duration,
    /// The application has a persistent session (clean session 0).
    persistent_app: bool,
    /// Orgs the publishers are split over, one application each.
    orgs: usize,
}

/// What a [`RunSpec`] measured.
struct RunOutcome {
    sub: SubOutcome,
    /// PUBLISHes written / acknowledged in the whole run (drain included).
    sent: u64,
    acked: u64,
    /// PUBLISHes written / acknowledged during the measured part.
    sent_measured: u64,
    acked_measured: u64,
    rss_before_kib: Option<u64>,
    samples: Samples,
    /// Per org: its id, its publishers, what they wrote, what its application saw.
    per_org: Vec<OrgOutcome>,
    /// CPU time of the broker / of this process during the measured part, % of one core.
    broker_cpu_pct: Option<f64>,
    sim_cpu_pct: Option<f64>,
}

/// One org's part of a [`RunOutcome`].
struct OrgOutcome {
    org: String,
    publishers: usize,
    sent: u64,
    sub: SubOutcome,
}

/// `count` events over `window`, per second.
pub(super) fn per_second(count: u64, window: Duration) -> f64 {
    count as f64 / window.as_secs_f64().max(1e-9)
}

/// Connects the clients, runs `spec` and closes them again. The broker's RSS is sampled
/// when the target has a pid.
async fn run_publishers(
    target: &BenchTarget,
    ca: &TestCa,
    spec: &RunSpec,
    errors: &mut ErrorLog,
) -> Result<RunOutcome> {
    let clients = connect_clients(target, ca, spec).await?;
    let pid = target.broker_pid;
    let rss_before_kib = pid.and_then(rss_kib);
    let windows: Vec<Arc<Semaphore>> = (0..spec.publishers)
        .map(|_| Arc::new(Semaphore::new(spec.window)))
        .collect();
    let (acked, received) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let sent: Vec<Arc<AtomicU64>> = (0..spec.publishers).map(|_| Arc::default()).collect();
    let sent_by = |r: Range<usize>| {
        sent[r]
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let total_sent = || sent_by(0..spec.publishers);
    let (stop_pub_tx, stop_pub) = watch::channel(false);
    let (stop_sub_tx, stop_sub) = watch::channel(false);
    let epoch = Instant::now();
    let end = spec.warmup + spec.measure;
    let mut orgs = Vec::with_capacity(clients.orgs.len());
    let mut subs = Vec::with_capacity(clients.orgs.len());
    for o in clients.orgs {
        subs.push(tokio::spawn(subscriber(
            o.app,
            SubParams {
                epoch,
                window: (spec.warmup, end),
                release: (!spec.release_on_puback).then(|| windows.clone()),
                rate_limit: spec.subscriber_rate,
                expected: o.publishers.clone(),
            },
            spec.publishers,
            received.clone(),
            stop_sub.clone(),
        )));
        orgs.push((o.org, o.publishers));
    }
    let sampler = start_sampler(epoch, acked.clone(), received.clone(), pid, stop_sub);
    let handles: Vec<PublisherHandle> = clients
        .publishers
        .into_iter()
        .enumerate()
        .map(|(i, (reader, topic))| {
            let params = PublisherParams {
                index: i as u32,
                topic,
                qos: spec.qos,
                payload_bytes: spec.payload_bytes,
                window: windows[i].clone(),
                release_on_puback: spec.release_on_puback,
                pace: Pacer::new(spec.rate, spec.publishers, i),
                epoch,
                sent: sent[i].clone(),
                acked: acked.clone(),
            };
            start_publisher(reader, params, stop_pub.clone())
        })
        .collect();
    let cpu = || (pid.and_then(cpu_seconds), cpu_seconds(std::process::id()));
    tokio::time::sleep_until(epoch + spec.warmup).await;
    let (sent_before, acked_before) = (total_sent(), acked.load(Ordering::Relaxed));
    let cpu_before = cpu();
    tokio::time::sleep_until(epoch + end).await;
    let (sent_after, acked_after) = (total_sent(), acked.load(Ordering::Relaxed));
    let cpu_after = cpu();
    let _ = stop_pub_tx.send(true);
    if spec.release_on_puback {
        // Only what the broker acknowledged is owed to the application; PUBACKs of what
        // was in flight at the stop still count.
        let acked = acked.clone();
        drain(&received, move || acked.load(Ordering::Relaxed), spec.drain).await;
    } else {
        drain(&received, total_sent, spec.drain).await;
    }
    let _ = stop_sub_tx.send(true);
    let mut outcomes = Vec::with_capacity(subs.len());
    let mut failed = None;
    for sub in subs {
        match sub.await.context("application task")? {
            Ok(o) => outcomes.push(o),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    let samples = sampler.await.unwrap_or_default();
    let acked_total = acked.load(Ordering::Relaxed);
    close_publishers(handles, errors).await;
    if let Some(e) = failed {
        bail!("application: {e:#}");
    }
    let pct = |before: Option<f64>, after: Option<f64>| {
        Some((after? - before?) * 100.0 / spec.measure.as_secs_f64().max(1e-9))
    };
    let sub = SubOutcome::merge(&outcomes);
    let per_org = orgs
        .into_iter()
        .zip(outcomes)
        .map(|((org, publishers), sub)| OrgOutcome {
            org,
            publishers: publishers.len(),
            sent: sent_by(publishers),
            sub,
        })
        .collect();
    Ok(RunOutcome {
        sub,
        sent: total_sent(),
        acked: acked_total,
        sent_measured: sent_after.saturating_sub(sent_before),
        acked_measured: acked_after.saturating_sub(acked_before),
        rss_before_kib,
        samples,
        per_org,
        broker_cpu_pct: pct(cpu_before.0, cpu_after.0),
        sim_cpu_pct: pct(cpu_before.1, cpu_after.1),
    })
}

/// Fan-in: see the [module docs](self).
pub(crate) async fn run_fan_in(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &ThroughputConfig,
    errors: &mut ErrorLog,
) -> Result<ThroughputResult> {
    let spec = RunSpec {
        publishers: cfg.publishers,
        qos: cfg.qos,
        payload_bytes: cfg.payload_bytes,
        window: cfg.window,
        release_on_puback: false,
        rate: 0,
        warmup: Duration::from_millis(cfg.warmup_ms),
        measure: Duration::from_millis(cfg.measure_ms),
        subscriber_rate: None,
        drain: Duration::from_secs(10),
        persistent_app: false,
        orgs: cfg.orgs,
    };
    let run = run_publishers(target, ca, &spec, errors).await?;
    let per_org = if cfg.orgs > 1 {
        run.per_org
            .iter()
            .map(|o| OrgThroughput {
                org: o.org.clone(),
                publishers: o.publishers,
                sent: o.sent,
                received: o.sub.seqs.received,
                missing: o.sent.saturating_sub(o.sub.seqs.received),
                rate_per_s: per_second(o.sub.in_window, spec.measure),
                p99_ms: o.sub.latency.summary().map(|l| l.p99_ms),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(ThroughputResult {
        qos: cfg.qos,
        publishers: cfg.publishers,
        payload_bytes: cfg.payload_bytes,
        window: cfg.window,
        measure_s: spec.measure.as_secs_f64(),
        sent: run.sent,
        received: run.sub.seqs.received,
        missing: run.sent.saturating_sub(run.sub.seqs.received),
        rate_per_s: per_second(run.sub.in_window, spec.measure),
        latency: run.sub.latency.summary(),
        latency_curve: run.sub.latency.curve(),
        rate_series: run.samples.received,
        orgs: cfg.orgs,
        foreign: run.sub.foreign,
        per_org,
        broker_cpu_pct: run.broker_cpu_pct,
        sim_cpu_pct: run.sim_cpu_pct,
    })
}

/// PUBACK-driven fan-in: see the [module docs](self).
pub(crate) async fn run_puback(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &PubackConfig,
    errors: &mut ErrorLog,
) -> Result<PubackResult> {
    let spec = RunSpec {
        publishers: cfg.publishers,
        qos: 1,
        payload_bytes: cfg.payload_bytes,
        window: cfg.inflight,
        release_on_puback: true,
        rate: cfg.rate,
        warmup: Duration::from_millis(cfg.warmup_ms),
        measure: Duration::from_millis(cfg.measure_ms),
        subscriber_rate: None,
        drain: Duration::from_secs(10),
        persistent_app: cfg.persistent_subscriber,
        orgs: 1,
    };
    let run = run_publishers(target, ca, &spec, errors).await?;
    let seqs = &run.sub.seqs;
    Ok(PubackResult {
        publishers: cfg.publishers,
        payload_bytes: cfg.payload_bytes,
        inflight: cfg.inflight,
        rate: cfg.rate,
        persistent_subscriber: cfg.persistent_subscriber,
        measure_s: spec.measure.as_secs_f64(),
        sent: run.sent,
        acked: run.acked,
        received: seqs.received,
        lost: seqs.lost,
        duplicates: seqs.duplicates,
        missing: run.acked.saturating_sub(seqs.received),
        offered_per_s: per_second(run.sent_measured, spec.measure),
        acked_per_s: per_second(run.acked_measured, spec.measure),
        delivered_per_s: per_second(run.sub.in_window, spec.measure),
        latency: run.sub.latency.summary(),
        latency_curve: run.sub.latency.curve(),
        rss_before_kib: run.rss_before_kib,
        peak_rss_kib: run.samples.peak_rss_kib,
        acked_series: run.samples.acked,
        delivered_series: run.samples.received,
    })
}

/// Flood: see the [module docs](self).
pub(crate) async fn run_flood(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &FloodConfig,
    errors: &mut ErrorLog,
) -> Result<FloodResult> {
    let spec = RunSpec {
        publishers: cfg.publishers,
        qos: 1,
        payload_bytes: cfg.payload_bytes,
        window: cfg.inflight,
        release_on_puback: true,
        rate: 0,
        warmup: Duration::ZERO,
        measure: Duration::from_millis(cfg.flood_ms),
        subscriber_rate: Some(cfg.subscriber_rate),
        drain: Duration::from_millis(cfg.drain_ms),
        persistent_app: false,
        orgs: 1,
    };
    let run = run_publishers(target, ca, &spec, errors).await?;
    let seqs = &run.sub.seqs;
    Ok(FloodResult {
        publishers: cfg.publishers,
        payload_bytes: cfg.payload_bytes,
        subscriber_rate: cfg.subscriber_rate,
        flood_s: spec.measure.as_secs_f64(),
        published: run.acked,
        received: seqs.received,
        missing: run.acked.saturating_sub(seqs.received),
        lost: seqs.lost,
        undelivered: run.acked.saturating_sub(seqs.received + seqs.lost),
        in_per_s: per_second(run.acked_measured, spec.measure),
        out_per_s: per_second(run.sub.in_window, spec.measure),
        rss_before_kib: run.rss_before_kib,
        peak_rss_kib: run.samples.peak_rss_kib,
        in_series: run.samples.acked,
        out_series: run.samples.received,
        rss_series: run.samples.rss_mib,
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
    fn pacer_spreads_the_total_rate_evenly() {
        assert_eq!(Pacer::new(0, 8, 0), None, "rate 0 is unpaced");
        // 8,000 msgs/s over 8 publishers: 1 ms apart each, phases 125 µs apart.
        let pacers: Vec<Pacer> = (0..8)
            .map(|i| Pacer::new(8_000, 8, i).expect("paced"))
            .collect();
        assert_eq!(pacers[0].due_at(0), Duration::ZERO);
        assert_eq!(pacers[0].due_at(3), Duration::from_millis(3));
        assert_eq!(pacers[1].due_at(0), Duration::from_micros(125));
        assert_eq!(pacers[7].due_at(1), Duration::from_micros(1_875));
        // Over one second every publisher has 1,000 due: 8,000 in all.
        let second = Duration::from_secs(1);
        let total: u64 = pacers
            .iter()
            .map(|p| p.due_by(second - Duration::from_nanos(1)))
            .sum();
        assert_eq!(total, 8_000);
        // The merged stream is evenly spaced: 125 µs between consecutive due times.
        let mut due: Vec<Duration> = pacers
            .iter()
            .flat_map(|p| (0..10).map(|k| p.due_at(k)))
            .collect();
        due.sort();
        for w in due.windows(2) {
            let gap = (w[1] - w[0]).as_nanos() as i128;
            assert!((gap - 125_000).abs() <= 1, "{w:?}");
        }
    }

    #[test]
    fn pacer_due_count_matches_due_times() {
        let p = Pacer::new(3_000, 7, 3).expect("paced");
        assert_eq!(p.due_by(Duration::ZERO), 0, "offset not reached yet");
        for k in 0..2_000u64 {
            let at = p.due_at(k);
            assert_eq!(p.due_by(at), k + 1, "message {k} is due at its time");
            if let Some(before) = at.checked_sub(Duration::from_nanos(1)) {
                assert_eq!(p.due_by(before), k, "and not a nanosecond earlier");
            }
        }
    }

    #[test]
    fn publishers_split_evenly_over_orgs() {
        assert_eq!(org_shares(10, 1), vec![0..10]);
        assert_eq!(org_shares(8, 4), vec![0..2, 2..4, 4..6, 6..8]);
        assert_eq!(org_shares(10, 4), vec![0..3, 3..6, 6..8, 8..10]);
        let shares = org_shares(1000, 8);
        assert_eq!(shares.iter().map(|r| r.len()).sum::<usize>(), 1000);
        assert!(shares.iter().all(|r| r.len() == 125));
    }

    #[test]
    fn outcomes_of_several_applications_add_up() {
        let outcome = |received: u64, lost: u64, foreign: u64, ms: u64| {
            let mut o = SubOutcome {
                seqs: SeqTracker::new(2),
                latency: Latency::new(),
                in_window: received,
                foreign,
            };
            (o.seqs.received, o.seqs.lost) = (received, lost);
            o.latency.record(Duration::from_millis(ms));
            o
        };
        let all = SubOutcome::merge(&[outcome(10, 1, 0, 1), outcome(5, 0, 2, 3)]);
        assert_eq!(
            (all.seqs.received, all.seqs.lost, all.in_window, all.foreign),
            (15, 1, 15, 2)
        );
        assert_eq!(all.latency.count(), 2);
    }

    #[test]
    fn rates_per_second() {
        assert_eq!(per_second(8_000, Duration::from_secs(4)), 2_000.0);
        assert_eq!(per_second(0, Duration::from_millis(500)), 0.0);
        assert!(per_second(5, Duration::ZERO).is_finite());
    }

    #[test]
    fn validation() {
        assert!(ThroughputConfig::default().validate().is_ok());
        assert!(ThroughputConfig {
            orgs: 10,
            ..Default::default()
        }
        .validate()
        .is_ok());
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
            ThroughputConfig {
                orgs: 0,
                ..t.clone()
            },
            ThroughputConfig {
                orgs: 11,
                publishers: 10,
                ..t.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(PubackConfig::default().validate().is_ok());
        let p = PubackConfig::default();
        for bad in [
            PubackConfig {
                inflight: 0,
                ..p.clone()
            },
            PubackConfig {
                measure_ms: 0,
                ..p.clone()
            },
            PubackConfig {
                rate: 20_000_000,
                ..p.clone()
            },
            PubackConfig {
                publishers: 0,
                ..p.clone()
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
