//! Flow control between publishers and subscribers of one org: a credit window.
//!
//! rumqttd acknowledges a publish as soon as it is in its commit log, whatever the
//! subscribers' pace; its logs are bounded, so a subscriber that falls far enough behind
//! silently skips messages. certmq therefore holds publishers back instead — but only as
//! far as the subscribers need, never by timed pauses:
//!
//! - A subscriber session that cannot keep up — the engine paused it (its outgoing
//!   buffer is full), its client has [`SessionLimits::inflight_high`] deliveries
//!   unacknowledged, or writing to its socket stalls — counts as *behind* until it
//!   catches up, stays quiet for [`DECAY`], or leaves.
//! - While any subscriber of an org is behind, the org's publishers need a credit for
//!   every message they send into the engine. The org starts with [`WINDOW`] credits
//!   and every delivery a behind subscriber's client has — acknowledged for QoS 1/2,
//!   written for QoS 0 — gives one back (shared among the behind subscribers). So at most about [`WINDOW`] messages are on their
//!   way between the org's publishers and its slowest subscriber: publishers run at the
//!   subscriber's pace, the queue inside the broker stays bounded, and so does latency.
//! - A PUBLISH without credit stays unread in its session's buffer, and the session
//!   stops reading its socket, until a delivery brings one (woken at once, not after a
//!   pause). Unread packets are not acknowledged, so a QoS 1/2 publisher's in-flight
//!   window fills and TCP backpressure does the rest. Only PUBLISH waits: a subscriber's
//!   acknowledgements, which give credit back, are read as ever.
//!
//! The router itself is the other bottleneck: one thread ingests and delivers, and
//! under a flood ingest starves delivery. The engine probes its round trip
//! (`Engine::lag_handle`, measured by the router probe in `engine/router.rs`); while it
//! is above [`LAG_LIMIT`] publishers wait for the next probe before reading again.
//!
//! [`SessionLimits::inflight_high`]: crate::SessionLimits::inflight_high

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::OrgId;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A behind subscriber counts for this long after its last sign of congestion.
pub const DECAY: Duration = Duration::from_millis(500);
/// A write to a client taking longer than this marks it behind.
pub const SLOW_WRITE: Duration = Duration::from_millis(20);
/// Messages an org's publishers may have on their way to a behind subscriber.
pub const WINDOW: i64 = 1000;
/// While credits are short a publisher reads at most this many bytes at once, so one
/// read cannot overshoot the window by much.
pub const SLICE: usize = 4096;
/// Router lag above which publishers wait.
pub const LAG_LIMIT: Duration = Duration::from_millis(20);
/// Longest wait for a credit or the router before looking again (a safety net: the
/// wake-ups come from deliveries and the probe).
const RECHECK: Duration = Duration::from_millis(50);

/// Credits are counted in thousandths, so a delivery shared among several behind
/// subscribers gives back its share.
const MILLI: i64 = 1000;

/// One org's flow state.
#[derive(Default)]
struct OrgFlow {
    /// Subscriber sessions currently behind.
    behind: AtomicUsize,
    /// Credits of the org's publishers, in thousandths, while a subscriber is behind.
    credits: AtomicI64,
    /// Publishers waiting for credit.
    waiters: Notify,
}

impl OrgFlow {
    fn limited(&self) -> bool {
        self.behind.load(Ordering::Acquire) > 0
    }
}

/// The lag of the router an org lives on, and its notification after each
/// measurement.
pub type RouterLag = (Arc<AtomicU64>, Arc<Notify>);

/// Flow state of every org, and how to find its router's lag.
pub struct Pressure {
    orgs: Mutex<HashMap<OrgId, Arc<OrgFlow>>>,
    router_lag: Box<dyn Fn(&OrgId) -> RouterLag + Send + Sync>,
}

impl Pressure {
    /// `router_lag` gives the lag of an org's router (see `Engine::lag`).
    pub fn new(router_lag: impl Fn(&OrgId) -> RouterLag + Send + Sync + 'static) -> Pressure {
        Pressure {
            orgs: Mutex::default(),
            router_lag: Box::new(router_lag),
        }
    }

    /// The flow state of a new session of `org` (looked up once per session: no lock
    /// per packet).
    pub fn flow(&self, org_id: &OrgId) -> Flow {
        let (router_lag_us, router) = (self.router_lag)(org_id);
        let org = self
            .orgs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(org_id.clone())
            .or_default()
            .clone();
        Flow {
            org,
            router_lag_us,
            router,
            behind_until: None,
        }
    }
}

/// One session's side of its org's flow control: as a publisher it spends credits, as
/// a subscriber it may be behind and give credits back.
pub struct Flow {
    org: Arc<OrgFlow>,
    router_lag_us: Arc<AtomicU64>,
    router: Arc<Notify>,
    behind_until: Option<Instant>,
}

impl Flow {
    fn router_behind(&self) -> bool {
        self.router_lag_us.load(Ordering::Relaxed) > LAG_LIMIT.as_micros() as u64
    }

    /// Whether this session may send a PUBLISH into the engine now: it has credit, or
    /// it is itself a behind subscriber (whose acknowledgements, queued behind its own
    /// publishes, are what gives credit back — holding it could hold everyone).
    pub fn may_publish(&self) -> bool {
        self.behind_until.is_some() || self.may_read()
    }

    /// Whether the org's publishers have credit and the router is keeping up.
    pub fn may_read(&self) -> bool {
        !self.router_behind()
            && (!self.org.limited() || self.org.credits.load(Ordering::Acquire) > 0)
    }

    /// How many bytes this publisher may read next: a [`SLICE`] while its org is
    /// limited, else `full`.
    pub fn read_limit(&self, full: usize) -> usize {
        if self.org.limited() {
            SLICE.min(full)
        } else {
            full
        }
    }

    /// Waits until reading may be allowed again: a delivery gave credit back, the last
    /// behind subscriber caught up, or the router was measured again.
    pub async fn wait(&self) {
        let credit = self.org.waiters.notified();
        let router = self.router.notified();
        tokio::pin!(credit, router);
        credit.as_mut().enable();
        router.as_mut().enable();
        if self.may_read() {
            return;
        }
        tokio::select! {
            _ = credit => {}
            _ = router => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }

    /// Spends credit for `messages` sent into the engine (while the org is limited).
    pub fn published(&self, messages: usize) {
        if messages > 0 && self.org.limited() {
            let n = i64::try_from(messages).unwrap_or(i64::MAX / MILLI);
            self.org.credits.fetch_sub(n * MILLI, Ordering::AcqRel);
        }
    }

    /// Gives back credit for one delivery this session's client has (acknowledged it, or
    /// was written it at QoS 0), when it is a behind subscriber: the org's publishers may send one more message (shared
    /// among the subscribers that are behind).
    pub fn delivered(&self) {
        if self.behind_until.is_none() {
            return;
        }
        let behind = self.org.behind.load(Ordering::Acquire).max(1) as i64;
        let before = self.org.credits.fetch_add(MILLI / behind, Ordering::AcqRel);
        if before <= 0 && before + MILLI / behind > 0 {
            self.org.waiters.notify_waiters();
        }
    }

    /// Records a sign that this session, as a subscriber, is behind.
    pub fn congested(&mut self) {
        if self.behind_until.is_none() {
            tracing::debug!("subscriber behind: org publishers limited to a window");
            if self.org.behind.fetch_add(1, Ordering::AcqRel) == 0 {
                // First behind subscriber: the org's publishers get a fresh window.
                self.org.credits.store(WINDOW * MILLI, Ordering::Release);
            }
        }
        self.behind_until = Some(Instant::now() + DECAY);
    }

    /// When this session's being behind expires, if it is.
    pub fn congestion_deadline(&self) -> Option<Instant> {
        self.behind_until
    }

    /// Clears this session's being behind (caught up, decayed or gone).
    pub fn relieved(&mut self) {
        if self.behind_until.take().is_some() && self.org.behind.fetch_sub(1, Ordering::AcqRel) == 1
        {
            // Nobody is behind any more: publishers run free.
            self.org.waiters.notify_waiters();
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

    fn pressure() -> (Pressure, Arc<AtomicU64>) {
        let lag = Arc::new(AtomicU64::new(0));
        let probe = lag.clone();
        (Pressure::new(move |_| (probe.clone(), Arc::default())), lag)
    }

    #[tokio::test]
    async fn publishers_run_free_until_a_subscriber_is_behind() {
        let (p, _) = pressure();
        let acme = OrgId::try_from("acme").unwrap();
        let beta = OrgId::try_from("beta").unwrap();
        let publisher = p.flow(&acme);
        let other = p.flow(&beta);
        publisher.published(1_000_000);
        assert!(
            publisher.may_read(),
            "no window without a behind subscriber"
        );
        let mut sub = p.flow(&acme);
        sub.congested();
        assert!(publisher.may_read());
        publisher.published(WINDOW as usize);
        assert!(!publisher.may_read(), "the window is spent");
        assert!(other.may_read(), "limits leaked across orgs");
        sub.delivered();
        assert!(publisher.may_read(), "a delivery gives a credit back");
        publisher.published(1);
        assert!(!publisher.may_read());
        drop(sub);
        assert!(
            publisher.may_read(),
            "a departed subscriber no longer limits"
        );
    }

    #[tokio::test]
    async fn a_waiting_publisher_wakes_on_a_delivery() {
        let (p, _) = pressure();
        let acme = OrgId::try_from("acme").unwrap();
        let publisher = p.flow(&acme);
        let mut sub = p.flow(&acme);
        sub.congested();
        publisher.published(WINDOW as usize);
        let started = Instant::now();
        let wait = publisher.wait();
        let deliver = async {
            tokio::task::yield_now().await;
            sub.delivered();
        };
        tokio::join!(wait, deliver);
        assert!(
            started.elapsed() < RECHECK,
            "woken by the delivery, not the recheck"
        );
        assert!(publisher.may_read());
    }

    #[tokio::test]
    async fn credits_are_shared_among_behind_subscribers() {
        let (p, _) = pressure();
        let acme = OrgId::try_from("acme").unwrap();
        let publisher = p.flow(&acme);
        let mut a = p.flow(&acme);
        let mut b = p.flow(&acme);
        a.congested();
        b.congested();
        publisher.published(WINDOW as usize);
        // Each of the two behind subscribers gives back half a credit per delivery.
        a.delivered();
        assert!(publisher.may_read());
        publisher.published(1);
        a.delivered();
        assert!(!publisher.may_read());
        b.delivered();
        assert!(publisher.may_read());
    }

    #[tokio::test]
    async fn a_lagging_router_holds_publishers() {
        let (p, lag) = pressure();
        let acme = OrgId::try_from("acme").unwrap();
        let publisher = p.flow(&acme);
        lag.store(LAG_LIMIT.as_micros() as u64 + 1, Ordering::Relaxed);
        assert!(!publisher.may_read());
        lag.store(0, Ordering::Relaxed);
        assert!(publisher.may_read());
    }
}
