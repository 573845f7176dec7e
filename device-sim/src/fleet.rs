//! A simulated fleet: N devices publishing events, and one application that receives them
//! and answers each with a command, all through the broker, over TLS with client
//! certificates.
//!
//! Flow of [`run_fleet`]:
//! 1. the application `a:<org>:<appId>` (certificate CN `a:<appId>`) connects and
//!    subscribes to `iot-2/type/+/id/+/evt/+/fmt/+`;
//! 2. devices `d:<org>:<type>:dev<N>` (certificate CN `d:<type>:dev<N>`, N from 1)
//!    connect, subscribe to `iot-2/cmd/+/fmt/+`, then publish `events_per_device` events
//!    on `iot-2/evt/status/fmt/json` with payload `{"seq":n,"ts_ms":..,"ts_us":..}`;
//! 3. for each event, the application publishes `iot-2/type/<t>/id/<d>/cmd/ack/fmt/json`
//!    (`{"ack_seq":n}`), which the device receives as `iot-2/cmd/ack/fmt/json`;
//! 4. once everything expected arrived, nothing moved for [`IDLE_GRACE`], or the
//!    deadline passed, every client disconnects and a [`FleetReport`] is returned.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, Outgoing, Packet, QoS, SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::certs::{ClientCertOptions, TestCa};
use crate::client::{async_client, mqtt_options, BrokerTarget};
use crate::report::{latency_summary, FleetReport};

/// Topic filter the application subscribes to (all events of all devices of its org).
pub const APP_EVENT_FILTER: &str = "iot-2/type/+/id/+/evt/+/fmt/+";
/// Topic filter devices subscribe to (all their commands).
pub const DEVICE_COMMAND_FILTER: &str = "iot-2/cmd/+/fmt/+";
/// Topic devices publish their events on.
pub const DEVICE_EVENT_TOPIC: &str = "iot-2/evt/status/fmt/json";
/// Command name the application answers events with.
pub const ACK_COMMAND: &str = "ack";
/// How long the run keeps waiting for outstanding events/commands when nothing moves.
pub const IDLE_GRACE: Duration = Duration::from_secs(3);
/// How many devices may be in their TLS handshake + CONNECT at once.
const CONNECT_CONCURRENCY: usize = 32;
/// How long clients get to send DISCONNECT at the end before they are dropped.
const DISCONNECT_GRACE: Duration = Duration::from_secs(2);

/// Parameters of a fleet run.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The broker and the org's SNI name.
    pub target: BrokerTarget,
    /// Org id (goes into client ids, never into certificates).
    pub org: String,
    /// Device type of every simulated device.
    pub device_type: String,
    /// Number of devices (`dev1` … `devN`).
    pub devices: usize,
    /// Events each device publishes.
    pub events_per_device: usize,
    /// Pause between two events of a device.
    pub interval: Duration,
    /// QoS of subscriptions, events and commands (0, 1 or 2).
    pub qos: u8,
    /// Application id of the simulated application (client id `a:<org>:<app_id>`).
    pub app_id: String,
    /// Hard limit for the whole run; what has not arrived by then is reported missing.
    pub timeout: Duration,
    /// Optional human-readable live log of what flows (one line per message). Lines are
    /// sent with `try_send`: a full channel drops lines rather than slowing the fleet.
    pub log: Option<mpsc::Sender<String>>,
}

impl FleetConfig {
    /// A small default fleet for `org`: 3 `sensor` devices × 5 events every 200 ms, QoS 1,
    /// application `sim-app`, 60 s timeout, no live log.
    pub fn new(target: BrokerTarget, org: &str) -> Self {
        Self {
            target,
            org: org.to_owned(),
            device_type: "sensor".to_owned(),
            devices: 3,
            events_per_device: 5,
            interval: Duration::from_millis(200),
            qos: 1,
            app_id: "sim-app".to_owned(),
            timeout: Duration::from_secs(60),
            log: None,
        }
    }

    fn validate(&self) -> Result<QoS> {
        let qos = rumqttc::qos(self.qos).map_err(|_| anyhow!("qos must be 0, 1 or 2"))?;
        if !is_org_id(&self.org) {
            bail!("invalid org id {:?}", self.org);
        }
        for (what, v) in [("device type", &self.device_type), ("app id", &self.app_id)] {
            if !is_name(v) {
                bail!("invalid {what} {v:?}");
            }
        }
        Ok(qos)
    }
}

/// `[a-z][a-z0-9]{0,31}` (org id, a DNS label).
pub(crate) fn is_org_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// `[A-Za-z0-9_.-]{1,36}` (device type, device id, app id).
pub(crate) fn is_name(s: &str) -> bool {
    (1..=36).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Shared counters of one run.
#[derive(Default)]
struct Stats {
    devices_connected: AtomicUsize,
    events_sent: AtomicUsize,
    events_received: AtomicUsize,
    commands_sent: AtomicUsize,
    commands_received: AtomicUsize,
    latencies_ms: Mutex<Vec<f64>>,
    errors: Mutex<Vec<String>>,
}

impl Stats {
    fn error(&self, line: String) {
        tracing::debug!("fleet: {line}");
        if let Ok(mut e) = self.errors.lock() {
            e.push(line);
        }
    }

    fn progress(&self) -> (usize, usize, usize) {
        (
            self.events_sent.load(Ordering::Relaxed),
            self.events_received.load(Ordering::Relaxed),
            self.commands_received.load(Ordering::Relaxed),
        )
    }
}

/// The optional live log.
#[derive(Clone)]
struct LiveLog(Option<mpsc::Sender<String>>);

impl LiveLog {
    fn line(&self, make: impl FnOnce() -> String) {
        if let Some(tx) = &self.0 {
            // Never block the fleet on a slow reader.
            let _ = tx.try_send(make());
        }
    }
}

/// A connected client whose event loop runs in its own task.
struct Running {
    client: AsyncClient,
    poller: JoinHandle<()>,
}

/// What the run shares with every task.
#[derive(Clone)]
struct Ctx {
    stats: Arc<Stats>,
    log: LiveLog,
    qos: QoS,
    deadline: Instant,
    shutdown: watch::Receiver<bool>,
    running: Arc<Mutex<Vec<Running>>>,
}

/// Runs the fleet described by `cfg`, minting every certificate from `ca` (which the org
/// must trust), and returns what was observed. Fails only when the run cannot start at
/// all (bad config, the application cannot connect or subscribe); device problems are
/// listed in [`FleetReport::errors`]. Always ends by itself within about
/// `cfg.timeout` + a few seconds, after disconnecting every client.
pub async fn run_fleet(cfg: FleetConfig, ca: &TestCa) -> Result<FleetReport> {
    let qos = cfg.validate()?;
    let started = Instant::now();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ctx = Ctx {
        stats: Arc::new(Stats::default()),
        log: LiveLog(cfg.log.clone()),
        qos,
        deadline: started + cfg.timeout,
        shutdown: shutdown_rx,
        running: Arc::new(Mutex::new(Vec::new())),
    };
    let expected = cfg.devices.saturating_mul(cfg.events_per_device);

    let result = drive(&cfg, ca, &ctx, expected).await;
    disconnect_all(&ctx, shutdown_tx).await;
    result?;

    let stats = &ctx.stats;
    let samples = stats
        .latencies_ms
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let (p50, p99) = latency_summary(samples);
    let errors = stats.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let report = FleetReport {
        devices: cfg.devices,
        devices_connected: stats.devices_connected.load(Ordering::Relaxed),
        events_expected: expected,
        events_sent: stats.events_sent.load(Ordering::Relaxed),
        events_received_by_app: stats.events_received.load(Ordering::Relaxed),
        commands_sent_by_app: stats.commands_sent.load(Ordering::Relaxed),
        commands_received_by_devices: stats.commands_received.load(Ordering::Relaxed),
        duration: started.elapsed(),
        latency_p50_ms: p50,
        latency_p99_ms: p99,
        errors,
    };
    ctx.log
        .line(|| format!("fleet done in {:.2} s", report.duration.as_secs_f64()));
    Ok(report)
}

/// Connects the application, runs the devices, waits for the traffic to settle.
async fn drive(cfg: &FleetConfig, ca: &TestCa, ctx: &Ctx, expected: usize) -> Result<()> {
    start_app(cfg, ca, ctx).await?;

    // Mint all device certificates up front (CPU only).
    let mut devices = Vec::with_capacity(cfg.devices);
    for n in 1..=cfg.devices {
        let device_id = format!("dev{n}");
        let identity = format!("d:{}:{device_id}", cfg.device_type);
        let cert = ca
            .issue_client(&identity, ClientCertOptions::default())
            .with_context(|| format!("issue certificate for {identity}"))?;
        devices.push((device_id, cert));
    }

    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECT_CONCURRENCY));
    let mut set = JoinSet::new();
    for (device_id, cert) in devices {
        let client_id = format!("d:{}:{}:{device_id}", cfg.org, cfg.device_type);
        let opts = match mqtt_options(&cfg.target, &client_id, Some(&cert)) {
            Ok(o) => o,
            Err(e) => {
                ctx.stats.error(format!("{client_id}: {e:#}"));
                continue;
            }
        };
        let ctx = ctx.clone();
        let permits = permits.clone();
        let events = cfg.events_per_device;
        let interval = cfg.interval;
        set.spawn(async move {
            let connected = {
                let _permit = permits.acquire_owned().await;
                start_device(opts, &client_id, &ctx).await
            };
            match connected {
                Ok(client) => publish_events(&client, &client_id, events, interval, &ctx).await,
                Err(e) => ctx.stats.error(format!("{client_id}: {e:#}")),
            }
        });
    }
    loop {
        match tokio::time::timeout_at(ctx.deadline, set.join_next()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => ctx.stats.error(format!("device task failed: {e}")),
            Ok(None) => break,
            Err(_) => {
                ctx.stats
                    .error("timeout: devices still connecting or publishing".to_owned());
                set.abort_all();
                return Ok(());
            }
        }
    }

    settle(ctx, expected, cfg.devices).await;
    Ok(())
}

/// Waits until the application has every event and the devices every command, nothing
/// moved for [`IDLE_GRACE`], or the deadline. With every device connected everything
/// expected is awaited; otherwise what was sent (the count of sent events follows the
/// event loops, so it may lag behind a device's last publish: taken alone it could end
/// the wait before the last event arrived).
async fn settle(ctx: &Ctx, expected: usize, devices: usize) {
    let mut last = ctx.stats.progress();
    let mut last_change = Instant::now();
    loop {
        let now = ctx.stats.progress();
        let (sent, received, commands) = now;
        let all_connected = ctx.stats.devices_connected.load(Ordering::Relaxed) >= devices;
        let target = if all_connected {
            expected
        } else {
            sent.min(expected)
        };
        if received >= target && commands >= target {
            return;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= IDLE_GRACE {
            ctx.stats.error(format!(
                "gave up waiting: app received {received}/{sent} events, devices {commands} commands"
            ));
            return;
        }
        if Instant::now() >= ctx.deadline {
            ctx.stats.error(format!(
                "timeout: app received {received}/{sent} events, devices {commands} commands"
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends DISCONNECT from every client, waits briefly for it to go out, then stops every
/// event loop that is still running.
async fn disconnect_all(ctx: &Ctx, shutdown: watch::Sender<bool>) {
    let running: Vec<Running> = match ctx.running.lock() {
        Ok(mut r) => r.drain(..).collect(),
        Err(_) => Vec::new(),
    };
    // Devices were registered after the application: disconnect them first.
    for r in running.iter().rev() {
        let _ = r.client.try_disconnect();
    }
    let grace = Instant::now() + DISCONNECT_GRACE;
    for r in running {
        let mut poller = r.poller;
        if tokio::time::timeout_at(grace, &mut poller).await.is_err() {
            let _ = shutdown.send(true);
            if tokio::time::timeout(Duration::from_millis(200), &mut poller)
                .await
                .is_err()
            {
                poller.abort();
            }
        }
    }
    let _ = shutdown.send(true);
}

/// Polls `eventloop` until CONNACK; returns the error that ended the attempt otherwise.
async fn await_connack(eventloop: &mut EventLoop, deadline: Instant) -> Result<()> {
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| anyhow!("timeout waiting for CONNACK"))?
            .map_err(|e| anyhow!("connect failed: {e}"))?;
        if let Event::Incoming(Packet::ConnAck(ack)) = event {
            if ack.code == ConnectReturnCode::Success {
                return Ok(());
            }
            bail!("connection refused: {:?}", ack.code);
        }
    }
}

/// Polls `eventloop` until the SUBACK, failing if the filter was refused.
async fn await_suback(eventloop: &mut EventLoop, deadline: Instant, filter: &str) -> Result<()> {
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .map_err(|_| anyhow!("timeout waiting for SUBACK"))?
            .map_err(|e| anyhow!("connection lost before SUBACK: {e}"))?;
        if let Event::Incoming(Packet::SubAck(ack)) = event {
            if ack
                .return_codes
                .iter()
                .any(|c| matches!(c, SubscribeReasonCode::Failure))
            {
                bail!("subscription to {filter} refused");
            }
            return Ok(());
        }
    }
}

/// Connects and subscribes the application, then runs its event loop and command sender.
async fn start_app(cfg: &FleetConfig, ca: &TestCa, ctx: &Ctx) -> Result<()> {
    let identity = format!("a:{}", cfg.app_id);
    let client_id = format!("a:{}:{}", cfg.org, cfg.app_id);
    let cert = ca
        .issue_client(&identity, ClientCertOptions::default())
        .with_context(|| format!("issue certificate for {identity}"))?;
    let opts = mqtt_options(&cfg.target, &client_id, Some(&cert))?;
    let (client, mut eventloop) = async_client(opts, 256);
    await_connack(&mut eventloop, ctx.deadline)
        .await
        .with_context(|| format!("application {client_id}"))?;
    ctx.log.line(|| format!("app    {client_id} connected"));
    client
        .subscribe(APP_EVENT_FILTER, ctx.qos)
        .await
        .context("queue application SUBSCRIBE")?;
    await_suback(&mut eventloop, ctx.deadline, APP_EVENT_FILTER)
        .await
        .with_context(|| format!("application {client_id}"))?;
    ctx.log
        .line(|| format!("app    {client_id} subscribed to {APP_EVENT_FILTER}"));

    // Commands are published from a separate task so the event loop never waits on its
    // own request channel.
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<(String, String)>();
    let sender = client.clone();
    let (qos, stats, log) = (ctx.qos, ctx.stats.clone(), ctx.log.clone());
    tokio::spawn(async move {
        while let Some((topic, payload)) = cmd_rx.recv().await {
            if sender.publish(&topic, qos, false, payload).await.is_err() {
                break;
            }
            stats.commands_sent.fetch_add(1, Ordering::Relaxed);
            log.line(|| format!("app    -> {topic}"));
        }
    });

    let poller = spawn_poller(ctx, eventloop, &client_id, move |ctx, event| {
        if let Event::Incoming(Packet::Publish(p)) = event {
            on_event(ctx, &p, &cmd_tx);
        }
    });
    register(ctx, client, poller);
    Ok(())
}

/// Runs a client's event loop in a task until shutdown, its DISCONNECT or the loss of
/// its connection (counted as an error): the part every fleet client shares. `on` sees
/// every event.
fn spawn_poller(
    ctx: &Ctx,
    mut eventloop: EventLoop,
    client_id: &str,
    mut on: impl FnMut(&Ctx, Event) + Send + 'static,
) -> JoinHandle<()> {
    let ctx = ctx.clone();
    let client_id = client_id.to_owned();
    tokio::spawn(async move {
        let mut shutdown = ctx.shutdown.clone();
        loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                _ = shutdown.changed() => break,
            };
            match event {
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(event) => on(&ctx, event),
                Err(e) => {
                    ctx.stats
                        .error(format!("{client_id}: connection lost: {e}"));
                    break;
                }
            }
        }
    })
}

/// Handles one event received by the application: count, latency, answer.
fn on_event(ctx: &Ctx, p: &rumqttc::Publish, cmd_tx: &mpsc::UnboundedSender<(String, String)>) {
    ctx.stats.events_received.fetch_add(1, Ordering::Relaxed);
    let payload: Option<serde_json::Value> = serde_json::from_slice(&p.payload).ok();
    let seq = payload
        .as_ref()
        .and_then(|v| v.get("seq"))
        .and_then(|s| s.as_u64());
    let latency_ms = payload.as_ref().and_then(latency_of);
    if let Some(ms) = latency_ms {
        if let Ok(mut l) = ctx.stats.latencies_ms.lock() {
            l.push(ms);
        }
    }
    ctx.log.line(|| {
        let latency = latency_ms.map_or_else(String::new, |ms| format!(" ({ms:.2} ms)"));
        format!(
            "app    <- {} {}{latency}",
            p.topic,
            String::from_utf8_lossy(&p.payload)
        )
    });
    match parse_event_topic(&p.topic) {
        Some((device_type, device_id)) => {
            let topic =
                format!("iot-2/type/{device_type}/id/{device_id}/cmd/{ACK_COMMAND}/fmt/json");
            let body = serde_json::json!({ "ack_seq": seq }).to_string();
            let _ = cmd_tx.send((topic, body));
        }
        None => ctx
            .stats
            .error(format!("application got unexpected topic {}", p.topic)),
    }
}

/// Latency of an event payload `{"ts_us":..}` (or `{"ts_ms":..}`), milliseconds.
fn latency_of(payload: &serde_json::Value) -> Option<f64> {
    let now_us = now_unix_us();
    let sent_us = match payload.get("ts_us").and_then(|v| v.as_u64()) {
        Some(us) => us,
        None => payload.get("ts_ms")?.as_u64()?.saturating_mul(1000),
    };
    Some(now_us.saturating_sub(sent_us) as f64 / 1000.0)
}

/// Splits `iot-2/type/<t>/id/<d>/evt/<e>/fmt/<f>` into `(t, d)`.
pub fn parse_event_topic(topic: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["iot-2", "type", t, "id", d, "evt", e, "fmt", f]
            if [t, d, e, f].iter().all(|s| !s.is_empty()) =>
        {
            Some((t, d))
        }
        _ => None,
    }
}

/// Connects and subscribes one device, then runs its event loop.
async fn start_device(
    opts: rumqttc::MqttOptions,
    client_id: &str,
    ctx: &Ctx,
) -> Result<AsyncClient> {
    let (client, mut eventloop) = async_client(opts, 64);
    await_connack(&mut eventloop, ctx.deadline).await?;
    ctx.stats.devices_connected.fetch_add(1, Ordering::Relaxed);
    ctx.log.line(|| format!("device {client_id} connected"));
    client
        .subscribe(DEVICE_COMMAND_FILTER, ctx.qos)
        .await
        .context("queue SUBSCRIBE")?;
    await_suback(&mut eventloop, ctx.deadline, DEVICE_COMMAND_FILTER).await?;

    let id = client_id.to_owned();
    let poller = spawn_poller(ctx, eventloop, client_id, move |ctx, event| match event {
        Event::Incoming(Packet::Publish(p)) => {
            ctx.stats.commands_received.fetch_add(1, Ordering::Relaxed);
            ctx.log.line(|| {
                format!(
                    "device {id} <- {} {}",
                    p.topic,
                    String::from_utf8_lossy(&p.payload)
                )
            });
        }
        Event::Outgoing(Outgoing::Publish(_)) => {
            ctx.stats.events_sent.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    });
    register(ctx, client.clone(), poller);
    Ok(client)
}

/// Publishes a device's events, `interval` apart.
async fn publish_events(
    client: &AsyncClient,
    client_id: &str,
    events: usize,
    interval: Duration,
    ctx: &Ctx,
) {
    for seq in 0..events {
        if seq > 0 && !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let ts_us = now_unix_us();
        let payload =
            serde_json::json!({ "seq": seq, "ts_ms": ts_us / 1000, "ts_us": ts_us }).to_string();
        ctx.log
            .line(|| format!("device {client_id} -> {DEVICE_EVENT_TOPIC} {payload}"));
        if let Err(e) = client
            .publish(DEVICE_EVENT_TOPIC, ctx.qos, false, payload)
            .await
        {
            ctx.stats.error(format!("{client_id}: publish failed: {e}"));
            return;
        }
    }
}

fn register(ctx: &Ctx, client: AsyncClient, poller: JoinHandle<()>) {
    match ctx.running.lock() {
        Ok(mut r) => r.push(Running { client, poller }),
        // Cannot happen (no code panics while holding it); stop the client rather than leak it.
        Err(_) => poller.abort(),
    }
}

/// Microseconds since the Unix epoch.
fn now_unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> BrokerTarget {
        BrokerTarget::for_org("127.0.0.1", 8883, "acme", "messaging.localhost", "")
    }

    #[test]
    fn run_fleet_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TestCa>();
        assert_send_sync::<FleetReport>();
        let ca = TestCa::new("send ca").expect("ca");
        let fut = run_fleet(FleetConfig::new(target(), "acme"), &ca);
        assert_send(&fut);
    }

    #[test]
    fn event_topics_parse() {
        assert_eq!(
            parse_event_topic("iot-2/type/sensor/id/dev1/evt/status/fmt/json"),
            Some(("sensor", "dev1"))
        );
        assert_eq!(parse_event_topic("iot-2/type/sensor/id/dev1/mon"), None);
        assert_eq!(parse_event_topic("iot-2/evt/status/fmt/json"), None);
        assert_eq!(
            parse_event_topic("iot-2/type//id/dev1/evt/status/fmt/json"),
            None
        );
    }

    #[test]
    fn config_validation() {
        let ok = FleetConfig::new(target(), "acme");
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.qos = 3;
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.org = "Acme".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.org = "1acme".into();
        assert!(bad.validate().is_err());
        let mut bad = ok.clone();
        bad.device_type = "a/b".into();
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.app_id = String::new();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn latency_from_payload() {
        let now = now_unix_us();
        let v = serde_json::json!({ "seq": 1, "ts_ms": now / 1000, "ts_us": now - 2500 });
        let ms = latency_of(&v).expect("latency");
        assert!((2.5..1000.0).contains(&ms), "{ms}");
        let v = serde_json::json!({ "seq": 1, "ts_ms": now / 1000 - 10 });
        let ms = latency_of(&v).expect("latency");
        assert!((9.0..1000.0).contains(&ms), "{ms}");
        assert_eq!(latency_of(&serde_json::json!({ "seq": 1 })), None);
    }

    #[tokio::test]
    async fn unreachable_broker_fails_fast_without_hanging() {
        // Port 1 on loopback: nothing listens, the application cannot connect.
        let ca = TestCa::new("fleet test ca").expect("ca");
        let server = TestCa::new("server").expect("server ca");
        let mut target = target();
        target.port = 1;
        target.server_ca_pem = server.pem();
        let mut cfg = FleetConfig::new(target, "acme");
        cfg.timeout = Duration::from_secs(5);
        let started = Instant::now();
        let err = run_fleet(cfg, &ca).await.expect_err("cannot connect");
        assert!(err.to_string().contains("a:acme:sim-app"), "{err:#}");
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}
