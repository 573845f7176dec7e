//! Flow control between publishers and subscribers of one org.
//!
//! rumqttd acknowledges a publish as soon as it is in its commit log, whatever the
//! subscribers' pace; its logs are bounded, so a subscriber that falls far enough behind
//! silently skips messages. certmq therefore slows publishers instead: a subscriber
//! session that cannot keep up (the engine paused it because its outgoing buffer is full,
//! or writing to its socket stalls) raises its org's pressure, and while the pressure is
//! up every publisher of that org reads its socket in small slices with a pause between
//! them. Unread packets are not acknowledged, so a QoS 1/2 publisher's in-flight window
//! fills and TCP backpressure does the rest. Pressure decays when the slow subscriber
//! catches up, stays quiet for [`DECAY`], or leaves.
//!
//! The router itself is the other bottleneck: it is one thread that ingests and
//! delivers, and under a flood ingest starves delivery. The engine probes its round trip
//! (`Engine::lag_handle`, measured by the router probe in `engine/router.rs`); above
//! [`LAG_LIMIT`] every publisher slows down the same way.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::OrgId;
use tokio::time::Instant;

/// A congested subscriber counts for this long after its last sign of congestion.
pub const DECAY: Duration = Duration::from_millis(500);
/// A write to a client taking longer than this marks it congested.
pub const SLOW_WRITE: Duration = Duration::from_millis(20);
/// Under pressure a publisher reads at most this many bytes, then pauses; the pause
/// doubles (from [`PAUSE`] up to [`MAX_PAUSE`]) for as long as the pressure lasts, so
/// publishers settle at the pace of the slowest subscriber.
pub const SLICE: usize = 4096;
/// The first pause under pressure.
pub const PAUSE: Duration = Duration::from_millis(1);
/// The longest pause between two slices.
pub const MAX_PAUSE: Duration = Duration::from_millis(256);

/// Router lag above which every publisher slows down.
pub const LAG_LIMIT: Duration = Duration::from_millis(20);

/// Congested-subscriber counters, one per org, and the router's lag.
pub struct Pressure {
    orgs: Mutex<HashMap<OrgId, Arc<AtomicUsize>>>,
    router_lag_us: Arc<AtomicU64>,
}

impl Pressure {
    /// `router_lag_us` is the engine's measured lag (see `Engine::lag_handle`).
    pub fn new(router_lag_us: Arc<AtomicU64>) -> Pressure {
        Pressure {
            orgs: Mutex::default(),
            router_lag_us,
        }
    }

    /// The flow state of a new session of `org` (the org counter is looked up once per
    /// session: no lock per packet).
    pub fn flow(&self, org: &OrgId) -> Flow {
        let counter = self
            .orgs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(org.clone())
            .or_default()
            .clone();
        Flow {
            counter,
            router_lag_us: self.router_lag_us.clone(),
            congested_until: None,
            pause: Duration::ZERO,
        }
    }
}

/// One session's view of its org's pressure: its own contribution as a subscriber and
/// the org-wide level it obeys as a publisher.
pub struct Flow {
    counter: Arc<AtomicUsize>,
    router_lag_us: Arc<AtomicU64>,
    congested_until: Option<Instant>,
    pause: Duration,
}

impl Flow {
    /// How many bytes this publisher may read next: a [`SLICE`] while it is being
    /// slowed, else `full`.
    pub fn read_limit(&self, full: usize) -> usize {
        if self.pause.is_zero() && !self.under_pressure() {
            full
        } else {
            SLICE.min(full)
        }
    }

    /// Called after each read: the pause before the next one. It doubles while the
    /// pressure lasts and halves while it is gone, so a publisher neither floods the
    /// moment a subscriber catches up nor stalls longer than needed.
    pub fn pause_after_read(&mut self) -> Option<Duration> {
        self.pause = if self.under_pressure() {
            (self.pause * 2).clamp(PAUSE, MAX_PAUSE)
        } else if self.pause > PAUSE {
            self.pause / 2
        } else {
            Duration::ZERO
        };
        (!self.pause.is_zero()).then_some(self.pause)
    }

    /// Whether this session, as a publisher, should slow down: a subscriber of its org
    /// cannot keep up, or the router is behind on deliveries.
    pub fn under_pressure(&self) -> bool {
        self.counter.load(Ordering::Relaxed) > 0
            || self.router_lag_us.load(Ordering::Relaxed) > LAG_LIMIT.as_micros() as u64
    }

    /// Records a sign of congestion of this session as a subscriber.
    pub fn congested(&mut self) {
        if self.congested_until.is_none() {
            tracing::debug!("subscriber congested: org publishers slow down");
            self.counter.fetch_add(1, Ordering::Relaxed);
        }
        self.congested_until = Some(Instant::now() + DECAY);
    }

    /// When this session's congestion expires, if it is congested.
    pub fn congestion_deadline(&self) -> Option<Instant> {
        self.congested_until
    }

    /// Clears this session's congestion (caught up, or decayed).
    pub fn relieved(&mut self) {
        if self.congested_until.take().is_some() {
            self.counter.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.relieved();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pressure_rises_and_falls_per_org() {
        let lag = Arc::new(AtomicU64::new(0));
        let p = Pressure::new(lag.clone());
        let acme = OrgId::try_from("acme").unwrap();
        let beta = OrgId::try_from("beta").unwrap();
        let mut sub = p.flow(&acme);
        let publisher = p.flow(&acme);
        let other = p.flow(&beta);
        assert!(!publisher.under_pressure());
        sub.congested();
        sub.congested();
        assert!(publisher.under_pressure());
        assert!(!other.under_pressure(), "pressure leaked across orgs");
        sub.relieved();
        assert!(!publisher.under_pressure());
        sub.congested();
        drop(sub);
        assert!(
            !publisher.under_pressure(),
            "a departed subscriber still counts"
        );
    }
}
