//! Flow control across nodes (docs/cluster-messages.md, *Flow control across nodes*).
//!
//! Local flow control (flow.rs) holds an org's publishers while one of its subscribers
//! on this node is a window behind. A QoS ≥ 1 publisher on another node, though, is
//! acknowledged once its message is in the cluster's stream, whatever this node makes
//! of it: without more, a node that routes slower than the others publish builds a
//! standing queue in its NATS subscriptions until the NATS client drops messages (a
//! slow consumer) and a catch-up reads them back, late and out of order. So:
//!
//! - **Behind.** Each receive loop (one per NATS subscription, so one org) is *behind*
//!   while it waits for a subscriber of its org on this node (what comes from other
//!   nodes counts for the subscribers' windows like a local publish, and its routing
//!   waits like a local publisher), or while [`BEHIND`] or more messages wait in its
//!   subscription; it is caught up again once they are [`CAUGHT_UP`] or fewer. The
//!   backlog is counted, not timed: clocks do not matter. (The origin time each message
//!   carries, `Certmq-At`, only feeds the lag metric.)
//! - **Reports.** While any loop is behind, the node publishes the orgs it is behind for
//!   on [`LOAD`] — at once when that set changes, then every [`REPORT`]; once caught up
//!   it says so [`AFTER`] more times (core NATS may lose one). Nothing is sent while
//!   nobody is behind.
//! - **Holds.** A node that hears a peer is behind for an org holds that org's
//!   publishers ([`crate::flow::Pressure::hold`]): their next PUBLISH stays unread, so
//!   their in-flight window and TCP do the rest, as for a local subscriber over its
//!   window. Only the publishers of the orgs named are held, on every node (whether a
//!   given publish would reach the peer is not looked at). A hold ends with the peer's
//!   report that it caught up, or [`EXPIRE`] after its last report: a peer that stops,
//!   or loses NATS, does not hold the cluster for longer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use registry::OrgId;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Cluster;
use crate::lock;

/// Where nodes say which orgs they are behind for.
pub(crate) const LOAD: &str = "certmq.c.load";
/// Messages waiting in one NATS subscription that make its node behind: a
/// subscriber's window (flow.rs).
pub(crate) const BEHIND: usize = crate::flow::WINDOW as usize;
/// Waiting messages at or under which a subscription is caught up again.
pub(crate) const CAUGHT_UP: usize = BEHIND / 4;
/// How often a node that is behind says so again.
pub(crate) const REPORT: Duration = Duration::from_millis(250);
/// Reports saying "caught up" after the last one that was behind.
const AFTER: u8 = 2;
/// How long a peer's report holds publishers when no other follows.
pub(crate) const EXPIRE: Duration = Duration::from_secs(2);

/// What a node says on [`LOAD`].
#[derive(Serialize, Deserialize, Debug, Default)]
pub(crate) struct Report {
    pub node: String,
    /// The orgs it is behind for (empty: caught up).
    #[serde(default)]
    pub behind: Vec<String>,
    /// The deepest backlog of its subscriptions since its last report (at most
    /// [`BEHIND`]: that is all a receive loop looks at).
    #[serde(default)]
    pub backlog: u64,
    /// How late it routed messages lately (origin time to routing), ms.
    #[serde(default)]
    pub lag_ms: u64,
}

/// This node's side: which orgs its receive loops are behind for.
#[derive(Default)]
pub(crate) struct Load {
    /// Per org, the receive loops behind for it.
    behind: Mutex<HashMap<OrgId, usize>>,
    /// A change of [`Load::behind`] to report.
    changed: Notify,
    /// The deepest backlog since the last tick.
    backlog: AtomicU64,
    /// The largest lag (ms) since the last tick.
    lag_ms: AtomicU64,
}

impl Load {
    fn enter(&self, org: &OrgId) {
        let mut b = lock(&self.behind);
        let n = b.entry(org.clone()).or_default();
        *n += 1;
        if *n == 1 {
            self.changed.notify_one();
        }
    }

    fn leave(&self, org: &OrgId) {
        let mut b = lock(&self.behind);
        if let Some(n) = b.get_mut(org) {
            *n -= 1;
            if *n == 0 {
                b.remove(org);
                self.changed.notify_one();
            }
        }
    }

    /// The orgs this node is behind for.
    fn orgs(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.behind).keys().map(|o| o.to_string()).collect();
        v.sort();
        v
    }

    /// Whether this node is behind for any org.
    pub(crate) fn any_behind(&self) -> bool {
        !lock(&self.behind).is_empty()
    }

    /// Notes how late a message is routed (its origin time, Unix ms).
    pub(crate) fn lag(&self, at_ms: u64) {
        let lag = unix_ms().saturating_sub(at_ms);
        self.lag_ms.fetch_max(lag, Ordering::Relaxed);
    }
}

/// Now, Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One receive loop's state: behind for its org or not (and no longer when dropped: a
/// loop ends when its subscription goes).
pub(crate) struct Lane {
    load: Arc<Load>,
    org: Option<OrgId>,
    /// [`BEHIND`] or more waiting (until back to [`CAUGHT_UP`]).
    backlogged: bool,
    /// Waiting for a subscriber of its org here.
    waiting: bool,
    counted: bool,
}

impl Lane {
    pub(crate) fn new(load: Arc<Load>) -> Lane {
        Lane {
            load,
            org: None,
            backlogged: false,
            waiting: false,
            counted: false,
        }
    }

    /// The org of this loop's subscription (known from its first message).
    pub(crate) fn org(&self) -> Option<&OrgId> {
        self.org.as_ref()
    }

    pub(crate) fn set_org(&mut self, org: OrgId) {
        self.org = Some(org);
    }

    /// `waiting` messages are in the subscription (counted up to [`BEHIND`]).
    pub(crate) fn backlog(&mut self, waiting: usize) {
        self.load
            .backlog
            .fetch_max(waiting as u64, Ordering::Relaxed);
        if waiting >= BEHIND {
            self.backlogged = true;
        } else if waiting <= CAUGHT_UP {
            self.backlogged = false;
        }
        self.update();
    }

    /// Routing waits for (or no longer for) a subscriber over its window. The end of
    /// a wait counts with the next [`Lane::backlog`]: what piled up meanwhile may keep
    /// the loop behind, and saying "caught up" in between would only flicker.
    pub(crate) fn waiting(&mut self, waiting: bool) {
        self.waiting = waiting;
        if waiting {
            self.update();
        }
    }

    fn update(&mut self) {
        let behind = self.backlogged || self.waiting;
        if behind == self.counted {
            return;
        }
        let Some(org) = &self.org else { return };
        if behind {
            self.load.enter(org);
        } else {
            self.load.leave(org);
        }
        self.counted = behind;
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        if self.counted {
            if let Some(org) = &self.org {
                self.load.leave(org);
            }
        }
    }
}

/// A peer that is behind and the org it is behind for.
type Hold = (String, OrgId);

/// The holds peers' reports put on this node's publishers, each until when.
#[derive(Default)]
pub(crate) struct Holds {
    until: HashMap<Hold, Instant>,
}

impl Holds {
    /// Applies a peer's report; the holds that start and end with it.
    fn apply(&mut self, report: &Report, now: Instant) -> (Vec<Hold>, Vec<Hold>) {
        let behind: Vec<OrgId> = report
            .behind
            .iter()
            .filter_map(|o| OrgId::try_from(o.as_str()).ok())
            .collect();
        let mut started = Vec::new();
        for org in behind.iter() {
            let key = (report.node.clone(), org.clone());
            if self.until.insert(key.clone(), now + EXPIRE).is_none() {
                started.push(key);
            }
        }
        let mut ended = Vec::new();
        self.until.retain(|(node, org), _| {
            let gone = *node == report.node && !behind.contains(org);
            if gone {
                ended.push((node.clone(), org.clone()));
            }
            !gone
        });
        (started, ended)
    }

    /// The holds whose last report is older than [`EXPIRE`] (removed).
    fn expire(&mut self, now: Instant) -> Vec<Hold> {
        let mut ended = Vec::new();
        self.until.retain(|key, until| {
            let keep = *until > now;
            if !keep {
                ended.push(key.clone());
            }
            keep
        });
        ended
    }

    fn len(&self) -> usize {
        self.until.len()
    }
}

impl Cluster {
    /// Reports this node's load to the others and applies theirs (see the module).
    pub(super) async fn pressure_loop(self: Arc<Self>, client: async_nats::Client) {
        let mut reports = match client.subscribe(LOAD).await {
            Ok(s) => s,
            Err(e) => {
                warn!(cause = %e, "cannot subscribe to the cluster's load reports: no flow control across nodes");
                return;
            }
        };
        let node = self.node().to_owned();
        // Reports go out from a task of their own, the latest one only: the NATS
        // client's queue may be full (forwards wait in it too, and all of it without
        // NATS), and this loop must go on applying and expiring holds meanwhile.
        let (outbox, mut next) = tokio::sync::watch::channel(Bytes::new());
        let sender = client.clone();
        tokio::spawn(async move {
            while next.changed().await.is_ok() {
                let body = next.borrow_and_update().clone();
                let _ = sender.publish(LOAD, body).await;
            }
        });
        let mut holds = Holds::default();
        // Reports still to send saying "caught up".
        let mut after = 0u8;
        let mut sent_behind: Vec<String> = Vec::new();
        // The deepest backlog and largest lag of the last tick.
        let (mut backlog, mut lag) = (0, 0);
        let mut tick = tokio::time::interval(REPORT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let send = tokio::select! {
                m = reports.next() => {
                    let Some(m) = m else { return };
                    let Ok(report) = serde_json::from_slice::<Report>(&m.payload) else {
                        debug!("unreadable load report");
                        continue;
                    };
                    if report.node == node {
                        continue;
                    }
                    let (started, ended) = holds.apply(&report, Instant::now());
                    self.holds_changed(&started, &ended, holds.len());
                    if !started.is_empty() {
                        debug!(peer = report.node, orgs = ?report.behind, backlog = report.backlog, lag_ms = report.lag_ms, "a node is behind: holding publishers");
                    }
                    false
                }
                _ = self.load.changed.notified() => true,
                _ = tick.tick() => {
                    let ended = holds.expire(Instant::now());
                    if !ended.is_empty() {
                        info!(holds = ?ended, "a node that was behind stopped reporting: its hold expired");
                    }
                    self.holds_changed(&[], &ended, holds.len());
                    backlog = self.load.backlog.swap(0, Ordering::Relaxed);
                    lag = self.load.lag_ms.swap(0, Ordering::Relaxed);
                    crate::metrics::cluster_load(&node, backlog, lag);
                    true
                }
            };
            if !send {
                continue;
            }
            let behind = self.load.orgs();
            if !behind.is_empty() {
                after = AFTER;
            } else if sent_behind.is_empty() && after == 0 {
                continue;
            } else if behind == sent_behind {
                // Caught up and said so already: a few more times, then quiet.
                after -= 1;
            }
            let report = Report {
                node: node.clone(),
                backlog: backlog.max(self.load.backlog.load(Ordering::Relaxed)),
                lag_ms: lag.max(self.load.lag_ms.load(Ordering::Relaxed)),
                behind,
            };
            if report.behind != sent_behind {
                debug!(orgs = ?report.behind, backlog = report.backlog, "this node's backlog changed");
            }
            sent_behind.clone_from(&report.behind);
            if let Ok(body) = serde_json::to_vec(&report) {
                outbox.send_replace(Bytes::from(body));
            }
        }
    }

    fn holds_changed(&self, started: &[Hold], ended: &[Hold], n: usize) {
        if started.is_empty() && ended.is_empty() {
            return;
        }
        let Some(ctx) = self.ctx.upgrade() else {
            return;
        };
        for (peer, org) in started {
            ctx.pressure.hold(org, peer, true);
            crate::metrics::cluster_throttled(self.node());
        }
        for (peer, org) in ended {
            ctx.pressure.hold(org, peer, false);
        }
        crate::metrics::cluster_holds(self.node(), n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> OrgId {
        OrgId::try_from("acme").unwrap()
    }

    #[test]
    fn a_loop_is_behind_while_backlogged_or_waiting_and_not_after() {
        let load = Arc::new(Load::default());
        let mut lane = Lane::new(load.clone());
        lane.set_org(acme());
        lane.backlog(BEHIND - 1);
        assert!(load.orgs().is_empty());
        lane.backlog(BEHIND);
        assert_eq!(load.orgs(), ["acme"]);
        // Between the marks: still behind.
        lane.backlog(CAUGHT_UP + 1);
        assert_eq!(load.orgs(), ["acme"]);
        lane.backlog(CAUGHT_UP);
        assert!(load.orgs().is_empty());
        lane.waiting(true);
        let mut other = Lane::new(load.clone());
        other.set_org(acme());
        other.backlog(BEHIND);
        lane.waiting(false);
        lane.backlog(0);
        assert_eq!(load.orgs(), ["acme"], "the other loop is behind");
        drop(other);
        assert!(load.orgs().is_empty(), "a loop that ends is not behind");
    }

    #[test]
    fn holds_follow_reports_and_expire() {
        let mut holds = Holds::default();
        let t = Instant::now();
        let report = |node: &str, behind: &[&str]| Report {
            node: node.into(),
            behind: behind.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let (started, ended) = holds.apply(&report("n2", &["acme", "beta"]), t);
        assert_eq!(started.len(), 2);
        assert!(ended.is_empty());
        // Said again: nothing new, the deadline moves.
        let (started, _) = holds.apply(&report("n2", &["acme", "beta"]), t + EXPIRE / 2);
        assert!(started.is_empty());
        // Another node's report leaves n2's holds alone.
        holds.apply(&report("n3", &[]), t + EXPIRE / 2);
        assert_eq!(holds.len(), 2);
        let (_, ended) = holds.apply(&report("n2", &["beta"]), t + EXPIRE / 2);
        assert_eq!(ended, [("n2".to_owned(), acme())]);
        // n2 goes quiet: its hold ends EXPIRE after its last report.
        assert!(holds.expire(t + EXPIRE).is_empty());
        assert_eq!(holds.expire(t + EXPIRE / 2 + EXPIRE).len(), 1);
        assert_eq!(holds.len(), 0);
    }
}
