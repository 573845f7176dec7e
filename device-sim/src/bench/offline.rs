//! `offline`: what offline persistent sessions cost the broker, and whether they get
//! their messages.
//!
//! 1. `devices` devices each connect with clean session 0, subscribe to their commands
//!    at QoS 1 (certmq: `iot-2/cmd/+/fmt/+`; a broker without Watson topic rewriting:
//!    `iot-2/type/<t>/id/<d>/cmd/+/fmt/+`) and disconnect: an empty offline session each.
//! 2. One application (clean session) publishes `messages_per_device` QoS 1 commands to
//!    every device (`iot-2/type/<t>/id/<d>/cmd/bench/fmt/bin`, round robin over the
//!    devices), PUBACK-driven with up to `inflight` unacknowledged: every message is
//!    queued for an offline session once it is acknowledged.
//! 3. The broker's RSS (`/proc/<pid>/status`) at the start, with the empty sessions
//!    (before) and with every message queued (after); the time from the first PUBLISH
//!    to the last PUBACK.
//! 4. `sample` devices spread over the fleet reconnect with clean session 0 (without
//!    subscribing again) and count what they get: each must receive exactly its
//!    `messages_per_device` commands (payloads carry the device's index and the
//!    command's number), nothing missing, nothing twice, nothing of another device.
//!
//! Keep `messages_per_device` within the brokers' per-session queue bound: certmq's
//! `max_queued_messages_per_session` and mosquitto's `max_queued_messages` are 1,000 by
//! default; certmq's `max_inflight_per_session` (1,000) bounds `inflight`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::latency::Latency;
use super::mqtt::{self, Packet};
use super::net::{self, PacketReader, SourceAddrs, Tls};
use super::proc::rss_kib;
use super::report::{ErrorLog, OfflineResult};
use super::throughput::{check_inflight, decode_header, encode_header, HEADER};
use super::{join_workers, mint_app, mint_devices, BenchTarget, SimClient};
use crate::certs::TestCa;

/// Device ids are `<PREFIX><n>`, n from 1.
const PREFIX: &str = "off";
/// The command name in the application's topic.
const COMMAND: &str = "bench";
/// PUBLISH packets the application writes in one go when its window allows.
const BATCH: usize = 64;
/// The application gives up when no PUBACK came for this long.
const STALL: Duration = Duration::from_secs(30);
/// A reconnected device that has all its messages still listens this long for extras.
const GRACE: Duration = Duration::from_millis(250);

/// Parameters of `offline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OfflineConfig {
    /// Devices with a persistent session, offline while their messages are queued.
    pub devices: usize,
    /// QoS 1 commands queued for each device (at most 1,000: the brokers' default
    /// per-session queue bound).
    pub messages_per_device: usize,
    /// Payload size, bytes (at least 20).
    pub payload_bytes: usize,
    /// PUBLISHes the application may have unacknowledged by the broker.
    pub inflight: usize,
    /// Devices that reconnect afterwards and count their messages.
    pub sample: usize,
    /// Devices connecting (creating sessions, reconnecting) at once.
    pub concurrency: usize,
    /// Wait before each RSS reading, ms.
    pub settle_ms: u64,
    /// Longest a reconnected device waits for its messages, ms.
    pub receive_timeout_ms: u64,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        Self {
            devices: 10_000,
            messages_per_device: 100,
            payload_bytes: 64,
            inflight: 500,
            sample: 100,
            concurrency: 32,
            settle_ms: 2_000,
            receive_timeout_ms: 10_000,
        }
    }
}

impl OfflineConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=1_000_000).contains(&self.devices) {
            bail!("offline: devices must be in 1..=1000000");
        }
        if !(1..=1_000).contains(&self.messages_per_device) {
            bail!(
                "offline: messages_per_device must be in 1..=1000 (the brokers' default \
                 per-session queue bound is 1,000)"
            );
        }
        if !(HEADER..=256 * 1024).contains(&self.payload_bytes) {
            bail!("offline: payload_bytes must be in {HEADER}..=262144");
        }
        check_inflight(self.inflight)?;
        if self.sample == 0 {
            bail!("offline: sample must be at least 1");
        }
        if !(1..=1_000).contains(&self.concurrency) {
            bail!("offline: concurrency must be in 1..=1000");
        }
        if self.receive_timeout_ms == 0 {
            bail!("offline: receive_timeout_ms must be above 0");
        }
        SourceAddrs::for_connections(self.devices)?;
        Ok(())
    }
}

/// `sample` device indexes spread evenly over `devices` (all of them when `sample`
/// is not smaller).
fn sample_indexes(devices: usize, sample: usize) -> Vec<usize> {
    let sample = sample.min(devices);
    (0..sample).map(|i| i * devices / sample).collect()
}

/// What a reconnected device counts: distinct commands, duplicates, and messages that
/// are not its own.
#[derive(Debug, Clone, PartialEq)]
struct Inbox {
    device: u32,
    seen: Vec<bool>,
    distinct: usize,
    duplicates: u64,
    foreign: u64,
}

impl Inbox {
    fn new(device: u32, expected: usize) -> Self {
        Self {
            device,
            seen: vec![false; expected],
            distinct: 0,
            duplicates: 0,
            foreign: 0,
        }
    }

    /// Records one delivered payload.
    fn record(&mut self, payload: &[u8]) {
        match decode_header(payload) {
            Some((device, seq, _)) if device == self.device => {
                match usize::try_from(seq).ok().and_then(|s| self.seen.get_mut(s)) {
                    Some(seen) if *seen => self.duplicates += 1,
                    Some(seen) => {
                        *seen = true;
                        self.distinct += 1;
                    }
                    None => self.foreign += 1,
                }
            }
            _ => self.foreign += 1,
        }
    }

    fn complete(&self) -> bool {
        self.distinct == self.seen.len()
    }
}

/// Step 1: an empty persistent session for every device. Returns how many were created.
async fn create_sessions(
    target: &BenchTarget,
    devices: Arc<Vec<SimClient>>,
    dialer: Arc<net::Dialer>,
    concurrency: usize,
    errors: &mut ErrorLog,
) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency.min(devices.len()) {
        let (devices, dialer, next, target) = (
            devices.clone(),
            dialer.clone(),
            next.clone(),
            target.clone(),
        );
        set.spawn(async move {
            let (mut ok, mut errors) = (0usize, ErrorLog::default());
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(device) = devices.get(index) else {
                    break;
                };
                let filter = target.device_command_filter(&device_id(index));
                let session = async {
                    let mut opened = device.open(&dialer, index).await?;
                    net::mqtt_subscribe(&mut opened.reader, &filter, 1).await?;
                    net::close(opened.reader.into_inner()).await;
                    anyhow::Ok(())
                };
                match session.await {
                    Ok(()) => ok += 1,
                    Err(e) => errors.push(format!("{}: {e:#}", device.client_id)),
                }
            }
            (ok, errors)
        });
    }
    let mut created = 0;
    join_workers(set, "session", errors, |(ok, e), errors| {
        created += ok;
        errors.merge(e);
    })
    .await;
    created
}

fn device_id(index: usize) -> String {
    format!("{PREFIX}{}", index + 1)
}

/// Step 2: the application publishes `per_device` commands to each of `devices`,
/// PUBACK-driven. Returns the PUBACKs received, the time from the first PUBLISH to the
/// last PUBACK, and `(messages acknowledged, broker RSS MiB)` samples.
async fn queue_commands(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &OfflineConfig,
    dialer: &net::Dialer,
) -> Result<(u64, Duration, Vec<(f64, f64)>)> {
    let app = mint_app(target, ca, "bench-cmd-app")?;
    let opened = app
        .open(dialer, 0)
        .await
        .with_context(|| format!("application {}", app.client_id))?;
    let (rh, mut wh) = tokio::io::split(opened.reader.into_inner());
    let window = Arc::new(Semaphore::new(cfg.inflight));
    let acked = Arc::new(AtomicU64::new(0));
    let acks: JoinHandle<std::io::Result<()>> = {
        let (window, acked) = (window.clone(), acked.clone());
        tokio::spawn(async move {
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
                    window.add_permits(n as usize);
                }
            }
        })
    };
    let (stop_tx, mut stop) = watch::channel(false);
    let sampler = {
        let (acked, pid) = (acked.clone(), target.broker_pid);
        tokio::spawn(async move {
            let mut series = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => break,
                }
                if let Some(kib) = pid.and_then(rss_kib) {
                    series.push((acked.load(Ordering::Relaxed) as f64, kib as f64 / 1024.0));
                }
            }
            series
        })
    };
    let total = (cfg.devices * cfg.messages_per_device) as u64;
    let topics: Vec<String> = (0..cfg.devices)
        .map(|i| target.command_topic(&device_id(i), COMMAND))
        .collect();
    let mut payload = vec![0u8; cfg.payload_bytes];
    let mut buf = Vec::with_capacity(BATCH * (cfg.payload_bytes + 80));
    let started = Instant::now();
    let mut pkid = 0u16;
    let mut next = 0u64;
    let publish = async {
        while next < total {
            let permit = tokio::time::timeout(STALL, window.acquire())
                .await
                .map_err(|_| anyhow::anyhow!("no PUBACK for {STALL:?}"))??;
            permit.forget();
            let mut n = 1u64;
            while n < BATCH as u64 && next + n < total {
                match window.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        n += 1;
                    }
                    Err(_) => break,
                }
            }
            buf.clear();
            let sent_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            for m in next..next + n {
                // Round robin: message k of every device, then k + 1.
                let device = (m % cfg.devices as u64) as usize;
                let seq = m / cfg.devices as u64;
                encode_header(&mut payload, device as u32, seq, sent_us);
                pkid = if pkid == u16::MAX { 1 } else { pkid + 1 };
                mqtt::publish(&mut buf, &topics[device], 1, pkid, &payload);
            }
            wh.write_all(&buf).await.context("application connection")?;
            wh.flush().await.context("application connection")?;
            next += n;
        }
        let mut last = (acked.load(Ordering::Relaxed), Instant::now());
        while last.0 < total {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = acked.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() >= STALL || acks.is_finished() {
                bail!("{now} of {total} commands acknowledged, then nothing for {STALL:?}");
            }
        }
        anyhow::Ok(())
    };
    let outcome = publish.await;
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let series = sampler.await.unwrap_or_default();
    acks.abort();
    let _ = wh.write_all(&mqtt::DISCONNECT).await;
    let _ = wh.shutdown().await;
    let acked = acked.load(Ordering::Relaxed);
    outcome.with_context(|| format!("application {}", app.client_id))?;
    Ok((acked, elapsed, series))
}

/// What the reconnected devices got.
#[derive(Default)]
struct SampleOutcome {
    connected: usize,
    sessions_present: usize,
    inboxes: Vec<Inbox>,
    /// Reconnect → last of the device's commands, for complete inboxes.
    drain: Latency,
}

/// Records every complete PUBLISH in `reader`'s buffer in `inbox` and appends its
/// PUBACK to `acks`.
fn take_publishes(
    reader: &mut PacketReader<Tls>,
    acks: &mut Vec<u8>,
    inbox: &mut Inbox,
) -> std::io::Result<()> {
    while let Some(p) = reader.next_packet()? {
        if let Packet::Publish { pkid, payload, .. } = p {
            if let Some(id) = pkid {
                mqtt::puback(acks, id);
            }
            inbox.record(payload);
        }
    }
    Ok(())
}

/// Step 4: reconnects the devices at `indexes` with clean session 0 and counts their
/// messages.
async fn reconnect_sample(
    devices: Arc<Vec<SimClient>>,
    dialer: Arc<net::Dialer>,
    indexes: Vec<usize>,
    cfg: &OfflineConfig,
    errors: &mut ErrorLog,
) -> SampleOutcome {
    let queue = Arc::new(Mutex::new(indexes));
    let (expected, timeout) = (
        cfg.messages_per_device,
        Duration::from_millis(cfg.receive_timeout_ms),
    );
    let workers = cfg.concurrency.min(queue.lock().map_or(1, |q| q.len()));
    let mut set = JoinSet::new();
    for _ in 0..workers {
        let (devices, dialer, queue) = (devices.clone(), dialer.clone(), queue.clone());
        set.spawn(async move {
            let mut out = SampleOutcome::default();
            let mut errors = ErrorLog::default();
            while let Some(index) = queue.lock().ok().and_then(|mut q| q.pop()) {
                let device = &devices[index];
                let mut inbox = Inbox::new(index as u32, expected);
                let started = Instant::now();
                let opened = match device.open(&dialer, devices.len() + index).await {
                    Ok(o) => o,
                    Err(e) => {
                        errors.push(format!("{} (reconnect): {e:#}", device.client_id));
                        out.inboxes.push(inbox);
                        continue;
                    }
                };
                out.connected += 1;
                out.sessions_present += usize::from(opened.session_present);
                let mut reader = opened.reader;
                let mut acks = Vec::new();
                let mut done_at: Option<Instant> = None;
                let deadline = started + timeout;
                loop {
                    let until = done_at.map_or(deadline, |d| (d + GRACE).min(deadline));
                    match tokio::time::timeout_at(until, reader.fill()).await {
                        Err(_) => break,
                        Ok(Err(e)) => {
                            errors.push(format!("{} (reconnect): {e}", device.client_id));
                            break;
                        }
                        Ok(Ok(())) => {}
                    }
                    if let Err(e) = take_publishes(&mut reader, &mut acks, &mut inbox) {
                        errors.push(format!("{} (reconnect): {e}", device.client_id));
                        break;
                    }
                    if !acks.is_empty() {
                        let io = reader.get_mut();
                        if io.write_all(&acks).await.is_err() || io.flush().await.is_err() {
                            break;
                        }
                        acks.clear();
                    }
                    if done_at.is_none() && inbox.complete() {
                        done_at = Some(Instant::now());
                        out.drain.record(started.elapsed());
                    }
                }
                net::close(reader.into_inner()).await;
                out.inboxes.push(inbox);
            }
            (out, errors)
        });
    }
    let mut all = SampleOutcome::default();
    join_workers(set, "reconnect", errors, |(out, e), errors| {
        all.connected += out.connected;
        all.sessions_present += out.sessions_present;
        all.inboxes.extend(out.inboxes);
        all.drain.merge(&out.drain);
        errors.merge(e);
    })
    .await;
    all
}

pub(crate) async fn run(
    target: &BenchTarget,
    ca: &TestCa,
    cfg: &OfflineConfig,
    errors: &mut ErrorLog,
) -> Result<OfflineResult> {
    let pid = target.broker_pid;
    let settle = Duration::from_millis(cfg.settle_ms);
    let source = SourceAddrs::for_connections(cfg.devices + cfg.sample)?;
    let mut devices = mint_devices(target, ca, PREFIX, cfg.devices, false)?;
    for d in &mut devices {
        d.clean_session = false;
    }
    let devices = Arc::new(devices);
    let dialer = Arc::new(target.dialer(source)?);
    let rss_start_kib = pid.and_then(rss_kib);

    let started = Instant::now();
    let sessions = create_sessions(
        target,
        devices.clone(),
        dialer.clone(),
        cfg.concurrency,
        errors,
    )
    .await;
    let sessions_s = started.elapsed().as_secs_f64();
    if sessions == 0 {
        bail!("offline: no device could create its session");
    }
    tokio::time::sleep(settle).await;
    let rss_before_kib = pid.and_then(rss_kib);

    let (queued, queue_time, mut rss_series) = queue_commands(target, ca, cfg, &dialer).await?;
    tokio::time::sleep(settle).await;
    let rss_after_kib = pid.and_then(rss_kib);
    if let Some(kib) = rss_after_kib {
        rss_series.push((queued as f64, kib as f64 / 1024.0));
    }

    let indexes = sample_indexes(cfg.devices, cfg.sample);
    let sample = indexes.len();
    let got = reconnect_sample(devices, dialer, indexes, cfg, errors).await;
    let expected = cfg.messages_per_device as u64;
    let received: u64 = got.inboxes.iter().map(|i| i.distinct as u64).sum();
    let sessions_f = sessions as f64;
    Ok(OfflineResult {
        devices: cfg.devices,
        messages_per_device: cfg.messages_per_device,
        payload_bytes: cfg.payload_bytes,
        inflight: cfg.inflight,
        sessions,
        session_failed: cfg.devices - sessions,
        sessions_per_s: sessions_f / sessions_s.max(1e-9),
        queued,
        queue_s: queue_time.as_secs_f64(),
        queue_rate_per_s: queued as f64 / queue_time.as_secs_f64().max(1e-9),
        rss_start_kib,
        rss_before_kib,
        rss_after_kib,
        rss_per_session_kib: match (rss_start_kib, rss_before_kib) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / sessions_f),
            _ => None,
        },
        rss_per_message_bytes: match (rss_before_kib, rss_after_kib) {
            (Some(b), Some(a)) if queued > 0 => {
                Some(a.saturating_sub(b) as f64 * 1024.0 / queued as f64)
            }
            _ => None,
        },
        sample,
        sample_connected: got.connected,
        sessions_present: got.sessions_present,
        sample_expected: expected * sample as u64,
        sample_received: received,
        complete: got.inboxes.iter().filter(|i| i.complete()).count(),
        shortfall: got
            .inboxes
            .iter()
            .map(|i| expected - i.distinct as u64)
            .sum::<u64>()
            + expected * (sample - got.inboxes.len()) as u64,
        duplicates: got.inboxes.iter().map(|i| i.duplicates).sum(),
        foreign: got.inboxes.iter().map(|i| i.foreign).sum(),
        drain: got.drain.summary(),
        rss_series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        assert!(OfflineConfig::default().validate().is_ok());
        let d = OfflineConfig::default();
        for bad in [
            OfflineConfig {
                devices: 0,
                ..d.clone()
            },
            OfflineConfig {
                messages_per_device: 0,
                ..d.clone()
            },
            OfflineConfig {
                messages_per_device: 1_001,
                ..d.clone()
            },
            OfflineConfig {
                payload_bytes: 19,
                ..d.clone()
            },
            OfflineConfig {
                inflight: 0,
                ..d.clone()
            },
            OfflineConfig {
                sample: 0,
                ..d.clone()
            },
            OfflineConfig {
                concurrency: 0,
                ..d.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sample_is_spread_over_the_fleet() {
        assert_eq!(sample_indexes(10_000, 4), vec![0, 2_500, 5_000, 7_500]);
        assert_eq!(
            sample_indexes(3, 100),
            vec![0, 1, 2],
            "never more than the fleet"
        );
        let s = sample_indexes(10_000, 100);
        assert_eq!(s.len(), 100);
        assert!(s.windows(2).all(|w| w[1] - w[0] == 100));
    }

    #[test]
    fn inbox_counts_distinct_duplicates_and_foreign() {
        let mut inbox = Inbox::new(7, 3);
        let msg = |device: u32, seq: u64| {
            let mut p = vec![0u8; 32];
            encode_header(&mut p, device, seq, 0);
            p
        };
        inbox.record(&msg(7, 0));
        inbox.record(&msg(7, 2));
        assert!(!inbox.complete());
        inbox.record(&msg(7, 2));
        inbox.record(&msg(8, 1));
        inbox.record(&msg(7, 3));
        inbox.record(b"short");
        inbox.record(&msg(7, 1));
        assert!(inbox.complete());
        assert_eq!((inbox.distinct, inbox.duplicates, inbox.foreign), (3, 1, 3));
    }

    #[test]
    fn topics_follow_the_broker() {
        let addr = "127.0.0.1:8883".parse().expect("addr");
        let mut t = BenchTarget::new("certmq", addr, "acme", "acme.messaging.localhost", "");
        assert_eq!(t.device_command_filter("off1"), "iot-2/cmd/+/fmt/+");
        assert_eq!(
            t.command_topic("off1", COMMAND),
            "iot-2/type/sensor/id/off1/cmd/bench/fmt/bin"
        );
        t.watson_topics = false;
        assert_eq!(
            t.device_command_filter("off1"),
            "iot-2/type/sensor/id/off1/cmd/+/fmt/+"
        );
    }
}
