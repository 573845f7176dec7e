//! Flow control between publishers and subscribers of one org: a window per subscriber.
//!
//! A publish is acknowledged once it is in its subscribers' queues (and on disk where it
//! must be), whatever the subscribers' pace; a subscriber's client may acknowledge
//! everything it was sent while thousands wait in its queue. So certmq counts the
//! backlog per subscriber:
//!
//! - Every live subscriber session of an org (or shared-subscription group) has an
//!   *outstanding* count, kept beside its subscription filters in the org's index.
//! - A PUBLISH routed into the message state adds one to every subscriber whose filters match its
//!   internal topic; a delivery that subscriber's client has — acknowledged for QoS 1/2,
//!   written for QoS 0 — takes one off.
//! - A subscriber with [`WINDOW`] or more outstanding is *over*. While any subscriber of
//!   an org is over, the org's PUBLISHes wait unread in their sessions' buffers (the
//!   sessions stop reading their sockets); the delivery that brings it back to half the
//!   window wakes them at once — no timed pauses. Unread packets are not acknowledged, so
//!   a QoS 1/2 publisher's in-flight window fills and TCP backpressure does the rest.
//!   Acknowledgements are always read; a session that is itself over may still publish
//!   (its acknowledgements queue behind its publishes).
//! - So at most [`WINDOW`] messages (plus one read per publisher) are inside the broker
//!   for any subscriber: publishers run at the slowest subscriber's pace — no slower —
//!   and the latency inside the broker is bounded by the window.
//!
//! Subscribers that are not live (a persistent session while offline) are not counted:
//! their queues are bounded by the org's queue limit. Messages no subscriber matches
//! cost nothing.
//!
//! In a cluster (cluster/pressure.rs) the same holds across nodes: messages from other
//! nodes count for this node's subscribers like local publishes ([`Pressure::router`]),
//! and routing them waits while a subscriber is over; a node that falls behind that
//! way (or in reading what NATS brings) tells the others, which *hold* the org's
//! publishers ([`Pressure::hold`]) exactly as an over subscriber does here.

use crate::lock;
use crate::state::tree::filter_matches as matches;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use registry::OrgId;
use tokio::sync::Notify;

/// Messages a subscriber may have outstanding (published for it, not yet delivered)
/// before its org's publishers wait.
pub const WINDOW: i64 = 1000;
/// Longest wait before looking again (a safety net: the wake-ups come from deliveries).
const RECHECK: Duration = Duration::from_millis(50);

/// One subscriber's count: a session, or a shared-subscription group.
#[derive(Debug, Default)]
pub(crate) struct Sub {
    outstanding: AtomicI64,
    over: AtomicBool,
    /// Counted only while live (a persistent session's entry outlives its connection).
    live: AtomicBool,
    /// The shared group it counts for (internal name); unset for a session.
    group: std::sync::OnceLock<Box<str>>,
}

/// Where a subscriber's filters are indexed: Watson's internal topics name a device
/// type and id at fixed levels, so a filter naming both is found by them, and only
/// filters with wildcards there are tried against every publish.
/// A subscription filter (internal form) and the subscriber it counts for.
type Entry = (String, Arc<Sub>);

#[derive(Default)]
struct Index {
    /// Device type → device id → entries.
    exact: HashMap<String, HashMap<String, Vec<Entry>>>,
    wild: Vec<Entry>,
}

/// The device type and id levels of an internal topic or filter
/// (`/tenants/<org>/iot-2/type/<T>/id/<D>/…`), when both are names. Borrowed: this runs
/// for every publish.
fn device_key(topic: &str) -> Option<(&str, &str)> {
    let mut levels = topic.split('/');
    let t = levels.nth(5)?;
    let d = levels.nth(1)?;
    let literal = |s: &str| !s.is_empty() && s != "+" && s != "#";
    (literal(t) && literal(d)).then_some((t, d))
}

impl Index {
    fn insert(&mut self, filter: String, sub: Arc<Sub>) {
        match device_key(&filter) {
            Some((t, d)) => {
                let ids = self.exact.entry(t.to_owned()).or_default();
                ids.entry(d.to_owned()).or_default().push((filter, sub));
            }
            None => self.wild.push((filter, sub)),
        }
    }

    fn remove(&mut self, filter: &str, sub: &Arc<Sub>) {
        let gone = |(f, s): &Entry| f == filter && Arc::ptr_eq(s, sub);
        match device_key(filter) {
            Some((t, d)) => {
                if let Some(ids) = self.exact.get_mut(t) {
                    if let Some(v) = ids.get_mut(d) {
                        v.retain(|e| !gone(e));
                        if v.is_empty() {
                            ids.remove(d);
                        }
                    }
                    if ids.is_empty() {
                        self.exact.remove(t);
                    }
                }
            }
            None => self.wild.retain(|e| !gone(e)),
        }
    }

    /// Every live subscriber `topic` reaches, once each.
    fn each_match(&self, topic: &str, mut f: impl FnMut(&Arc<Sub>)) {
        let mut seen: Vec<*const Sub> = Vec::new();
        let exact = device_key(topic)
            .and_then(|(t, d)| self.exact.get(t)?.get(d))
            .into_iter()
            .flatten();
        for (filter, sub) in exact.chain(self.wild.iter()) {
            let p = Arc::as_ptr(sub);
            if sub.live.load(Ordering::Relaxed) && !seen.contains(&p) && matches(filter, topic) {
                seen.push(p);
                f(sub);
            }
        }
    }
}

/// One org's flow state.
#[derive(Default)]
struct OrgFlow {
    index: RwLock<Index>,
    /// Subscribers of persistent sessions and shared groups, by client id or group.
    named: Mutex<HashMap<String, Arc<Sub>>>,
    /// Subscribers currently over the window.
    over: AtomicUsize,
    /// Other nodes currently behind for this org (cluster flow control): they hold
    /// this node's publishers, not the routing of what other nodes send.
    held: AtomicUsize,
    /// Publishers waiting for the window.
    waiters: Notify,
    /// Set while the cluster delivers shared groups (NATS queue groups, see
    /// [`Pressure::set_remote_groups`]).
    remote_groups: Arc<AtomicBool>,
}

impl OrgFlow {
    fn add(&self, sub: &Sub, n: i64) {
        let now = sub.outstanding.fetch_add(n, Ordering::AcqRel) + n;
        if now >= WINDOW && !sub.over.swap(true, Ordering::AcqRel) {
            self.over.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn take(&self, sub: &Sub) {
        // Never below zero: deliveries nobody counted (retained messages, status
        // events, a backlog from before the session was live) give nothing back.
        let before = sub
            .outstanding
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some((v - 1).max(0))
            })
            .unwrap_or(0);
        if before - 1 <= WINDOW / 2 {
            self.clear(sub);
        }
    }

    fn clear(&self, sub: &Sub) {
        if sub.over.swap(false, Ordering::AcqRel) && self.over.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waiters.notify_waiters();
        }
    }

    /// Whether a session of this org may publish: no subscriber over, no node behind.
    fn open(&self) -> bool {
        self.over.load(Ordering::Acquire) == 0 && self.held.load(Ordering::Acquire) == 0
    }
}

/// Flow state of every org.
#[derive(Default)]
pub struct Pressure {
    orgs: Mutex<HashMap<OrgId, Arc<OrgFlow>>>,
    remote_groups: Arc<AtomicBool>,
}

impl Pressure {
    pub fn new() -> Pressure {
        Pressure::default()
    }

    fn org(&self, org_id: &OrgId) -> Arc<OrgFlow> {
        lock(&self.orgs)
            .entry(org_id.clone())
            .or_insert_with(|| {
                Arc::new(OrgFlow {
                    remote_groups: self.remote_groups.clone(),
                    ..OrgFlow::default()
                })
            })
            .clone()
    }

    /// Whether shared groups get their messages through the cluster (while it is
    /// connected: NATS queue groups pick the node, and a local publish is routed to
    /// plain subscribers only). Then a local publish does not count for the groups:
    /// their copy is counted where it arrives ([`Flow::published_remote`]), so every
    /// count has its delivery.
    pub(crate) fn set_remote_groups(&self, on: bool) {
        self.remote_groups.store(on, Ordering::Release);
    }

    /// The flow state of session `client_id` of `org`. A persistent session keeps its
    /// subscriber entry across connections (its subscriptions live on in the engine).
    pub fn flow(&self, org_id: &OrgId, client_id: &str, persistent: bool) -> Flow {
        let org = self.org(org_id);
        let sub = if persistent {
            lock(&org.named)
                .entry(format!("c:{client_id}"))
                .or_default()
                .clone()
        } else {
            Arc::default()
        };
        // A new connection starts with nothing outstanding: what the engine queued for
        // it while it was away is delivered, but was never counted.
        sub.outstanding.store(0, Ordering::Release);
        org.clear(&sub);
        sub.live.store(true, Ordering::Release);
        Flow {
            org,
            sub,
            groups: Vec::new(),
            filters: Vec::new(),
            persistent,
            client_id: client_id.to_owned(),
        }
    }

    /// The flow state the cluster routes messages from other nodes with: a publisher
    /// of `org` that subscribes to nothing. Its [`Flow::published`] counts them for
    /// this node's subscribers and [`Flow::may_route`] says when to wait.
    pub(crate) fn router(&self, org: &OrgId) -> Flow {
        self.flow(org, "", false)
    }

    /// Holds (`on`) or releases the publishers of `org` for another node, `node`, that
    /// is behind (cluster/pressure.rs): while held, they wait as for a subscriber over
    /// the window. Whether this changed anything.
    pub(crate) fn hold(&self, org_id: &OrgId, node: &str, on: bool) -> bool {
        let org = self.org(org_id);
        // Named like no session or group ("c:…", "g:…"); never in the index, so no
        // publish or delivery counts for it.
        let sub = lock(&org.named)
            .entry(format!("n:{node}"))
            .or_default()
            .clone();
        if on {
            let changed = !sub.over.swap(true, Ordering::AcqRel);
            if changed {
                org.held.fetch_add(1, Ordering::AcqRel);
            }
            changed
        } else {
            let changed = sub.over.swap(false, Ordering::AcqRel);
            if changed && org.held.fetch_sub(1, Ordering::AcqRel) == 1 {
                org.waiters.notify_waiters();
            }
            changed
        }
    }
}

/// One session's side of its org's flow control: as a publisher it adds to the
/// subscribers its messages reach and waits while one is over; as a subscriber its
/// deliveries take from its own count.
pub struct Flow {
    org: Arc<OrgFlow>,
    sub: Arc<Sub>,
    /// Shared-subscription groups this session is in (their counts are shared).
    groups: Vec<Arc<Sub>>,
    /// This session's filters in the org's index (internal form, `$share` stripped),
    /// with the subscriber each counts for.
    filters: Vec<(String, Arc<Sub>)>,
    persistent: bool,
    client_id: String,
}

impl Flow {
    /// Whether this session may route a PUBLISH now: no subscriber of its org is over
    /// the window (or this session is one of them: its acknowledgements queue behind
    /// its own publishes).
    pub fn may_publish(&self) -> bool {
        self.org.open() || self.sub.over.load(Ordering::Acquire)
    }

    /// Whether the cluster may route a message from another node now: no subscriber
    /// of the org is over the window here. (Other nodes being behind does not hold
    /// it: that would hold them in turn, a cycle.)
    pub(crate) fn may_route(&self) -> bool {
        self.org.over.load(Ordering::Acquire) == 0
    }

    /// Waits until publishing may be allowed again: a delivery brought a subscriber
    /// back under the window, or no other node holds the org any more.
    pub async fn wait(&self) {
        self.wait_for(Flow::may_publish).await
    }

    /// Waits until [`Flow::may_route`] may be true again.
    pub(crate) async fn wait_route(&self) {
        self.wait_for(Flow::may_route).await
    }

    async fn wait_for(&self, ready: fn(&Flow) -> bool) {
        let window = self.org.waiters.notified();
        tokio::pin!(window);
        window.as_mut().enable();
        if ready(self) {
            return;
        }
        tokio::select! {
            _ = window => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }

    /// Counts a PUBLISH routed on `topic` (internal) for every live
    /// subscriber it reaches.
    pub fn published(&self, topic: &str) {
        let groups = !self.org.remote_groups.load(Ordering::Acquire);
        let index = self.org.index.read().unwrap_or_else(|e| e.into_inner());
        index.each_match(topic, |sub| {
            if groups || sub.group.get().is_none() {
                self.org.add(sub, 1)
            }
        });
    }

    /// Counts a message from another node that arrived through one NATS subscription:
    /// that copy is routed to plain subscribers only (`group` `None`) or to one shared
    /// group, so only those count (another copy, if any, counts for the others).
    pub(crate) fn published_remote(&self, topic: &str, group: Option<&str>) {
        let index = self.org.index.read().unwrap_or_else(|e| e.into_inner());
        index.each_match(topic, |sub| {
            if sub.group.get().map(|g| &**g) == group {
                self.org.add(sub, 1)
            }
        });
    }

    /// Takes one delivery this session's client has (acknowledged, or written at QoS
    /// 0) off its count — or off a group's, for a delivery of a shared subscription.
    pub fn delivered(&self) {
        let counted = std::iter::once(&self.sub)
            .chain(self.groups.iter())
            .find(|s| s.outstanding.load(Ordering::Acquire) > 0);
        if let Some(sub) = counted {
            self.org.take(sub);
        }
    }

    /// Registers a subscription filter (internal form) of this session.
    pub fn subscribed(&mut self, filter: &str) {
        let (sub, filter) = match shared(filter) {
            Some((group, inner)) => {
                let sub = lock(&self.org.named)
                    .entry(format!("g:{group}"))
                    .or_default()
                    .clone();
                sub.live.store(true, Ordering::Release);
                let _ = sub.group.set(group.into());
                if !self.groups.iter().any(|g| Arc::ptr_eq(g, &sub)) {
                    self.groups.push(sub.clone());
                }
                (sub, inner.to_owned())
            }
            None => (self.sub.clone(), filter.to_owned()),
        };
        if self
            .filters
            .iter()
            .any(|(f, s)| *f == filter && Arc::ptr_eq(s, &sub))
        {
            return;
        }
        self.org
            .index
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(filter.clone(), sub.clone());
        self.filters.push((filter, sub));
    }

    /// Removes a subscription filter (internal form) of this session.
    pub fn unsubscribed(&mut self, filter: &str) {
        let inner = shared(filter).map_or(filter, |(_, inner)| inner);
        let mut index = self.org.index.write().unwrap_or_else(|e| e.into_inner());
        self.filters.retain(|(f, s)| {
            if f == inner {
                index.remove(f, s);
                false
            } else {
                true
            }
        });
    }

    /// Whether this session, as a subscriber, is over the window.
    pub fn over(&self) -> bool {
        self.sub.over.load(Ordering::Acquire)
    }
}

/// `$share/<group>/<filter>` → (group, filter).
fn shared(filter: &str) -> Option<(&str, &str)> {
    match crate::state::tree::split_shared(filter) {
        (Some(group), inner) => Some((group, inner)),
        (None, _) => None,
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        // The session's count goes; a persistent session's filters stay indexed (its
        // subscriptions live on in the message state) but are not counted until it is
        // back.
        self.sub.live.store(false, Ordering::Release);
        self.org.clear(&self.sub);
        if !self.persistent {
            let mut index = self.org.index.write().unwrap_or_else(|e| e.into_inner());
            for (f, s) in self.filters.drain(..) {
                index.remove(&f, &s);
            }
        } else {
            tracing::trace!(client_id = self.client_id, "persistent subscriber offline");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP_FILTER: &str = "/tenants/acme/iot-2/type/+/id/+/evt/+/fmt/+";
    const EVENT: &str = "/tenants/acme/iot-2/type/s/id/d1/evt/e/fmt/json";

    fn pressure() -> (Pressure, ()) {
        (Pressure::new(), ())
    }

    fn acme() -> OrgId {
        OrgId::try_from("acme").unwrap()
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(matches(APP_FILTER, EVENT));
        assert!(matches("/tenants/acme/#", EVENT));
        assert!(!matches(
            APP_FILTER,
            "/tenants/acme/iot-2/type/s/id/d1/cmd/c/fmt/json"
        ));
        assert!(!matches("/tenants/beta/#", EVENT));
        assert_eq!(device_key(EVENT), Some(("s", "d1")));
        assert_eq!(device_key(APP_FILTER), None);
    }

    #[tokio::test]
    async fn publishers_wait_while_a_subscriber_is_over_its_window() {
        let (p, _) = pressure();
        let publisher = p.flow(&acme(), "d:acme:s:d1", false);
        let mut app = p.flow(&acme(), "a:acme:app", false);
        // Nobody subscribed: publishing costs nothing.
        for _ in 0..2 * WINDOW {
            publisher.published(EVENT);
        }
        assert!(publisher.may_publish());
        app.subscribed(APP_FILTER);
        for _ in 0..WINDOW {
            publisher.published(EVENT);
        }
        assert!(!publisher.may_publish(), "the app is a window behind");
        assert!(app.over());
        assert!(app.may_publish(), "an over subscriber may still publish");
        for _ in 0..WINDOW / 2 - 1 {
            app.delivered();
        }
        assert!(!publisher.may_publish());
        app.delivered();
        assert!(publisher.may_publish(), "back to half the window");
        // An unrelated topic does not count for the app.
        for _ in 0..2 * WINDOW {
            publisher.published("/tenants/acme/iot-2/type/s/id/d1/cmd/c/fmt/json");
        }
        assert!(publisher.may_publish());
    }

    #[tokio::test]
    async fn device_subscriptions_are_found_by_type_and_id() {
        let (p, _) = pressure();
        let app = p.flow(&acme(), "a:acme:app", false);
        let mut dev = p.flow(&acme(), "d:acme:s:d1", false);
        let filter = "/tenants/acme/iot-2/type/s/id/d1/cmd/+/fmt/+";
        dev.subscribed(filter);
        for _ in 0..WINDOW {
            app.published("/tenants/acme/iot-2/type/s/id/d2/cmd/c/fmt/json");
        }
        assert!(!dev.over(), "another device's commands do not count");
        for _ in 0..WINDOW {
            app.published("/tenants/acme/iot-2/type/s/id/d1/cmd/c/fmt/json");
        }
        assert!(dev.over());
        dev.unsubscribed(filter);
        let index = dev.org.index.read().unwrap();
        assert!(index.exact.is_empty(), "the emptied entries are removed");
    }

    #[tokio::test]
    async fn a_departed_subscriber_releases_the_publishers() {
        let (p, _) = pressure();
        let publisher = p.flow(&acme(), "d:acme:s:d1", false);
        let mut app = p.flow(&acme(), "a:acme:app", false);
        app.subscribed(APP_FILTER);
        for _ in 0..WINDOW {
            publisher.published(EVENT);
        }
        assert!(!publisher.may_publish());
        let started = tokio::time::Instant::now();
        let wait = publisher.wait();
        let leave = async {
            tokio::task::yield_now().await;
            drop(app);
        };
        tokio::join!(wait, leave);
        assert!(started.elapsed() < RECHECK, "woken, not timed out");
        assert!(publisher.may_publish());
        publisher.published(EVENT);
        assert!(publisher.may_publish(), "its filters left the index");
    }

    #[tokio::test]
    async fn a_shared_group_counts_once_for_all_its_members() {
        let (p, _) = pressure();
        let publisher = p.flow(&acme(), "d:acme:s:d1", false);
        let mut a = p.flow(&acme(), "A:acme:app:1", false);
        let mut b = p.flow(&acme(), "A:acme:app:2", false);
        a.subscribed(&format!("$share/acme:app/{APP_FILTER}"));
        b.subscribed(&format!("$share/acme:app/{APP_FILTER}"));
        for _ in 0..WINDOW {
            publisher.published(EVENT);
        }
        assert!(!publisher.may_publish());
        for _ in 0..WINDOW / 4 {
            a.delivered();
            b.delivered();
        }
        assert!(publisher.may_publish(), "either member's deliveries count");
    }

    #[tokio::test]
    async fn another_node_behind_holds_publishers_but_not_the_routing_of_its_messages() {
        let (p, _) = pressure();
        let publisher = p.flow(&acme(), "d:acme:s:d1", false);
        let mut app = p.flow(&acme(), "a:acme:app", false);
        app.subscribed(APP_FILTER);
        let router = p.router(&acme());
        assert!(p.hold(&acme(), "n2", true));
        assert!(!p.hold(&acme(), "n2", true), "held once per node");
        assert!(!publisher.may_publish());
        assert!(
            router.may_route(),
            "a hold would otherwise hold other nodes in turn"
        );
        // Another org is not held.
        let beta = p.flow(&OrgId::try_from("beta").unwrap(), "d:beta:s:d1", false);
        assert!(beta.may_publish());
        // Released: the waiting publisher is woken, not timed out.
        let started = tokio::time::Instant::now();
        let release = async {
            tokio::task::yield_now().await;
            assert!(p.hold(&acme(), "n2", false));
        };
        tokio::join!(publisher.wait(), release);
        assert!(started.elapsed() < RECHECK);
        assert!(publisher.may_publish());
        // What comes from other nodes counts for the subscribers here, and its routing
        // waits for them as a local publisher does.
        for _ in 0..WINDOW {
            router.published(EVENT);
        }
        assert!(app.over());
        assert!(!router.may_route());
        assert!(!publisher.may_publish());
    }

    #[tokio::test]
    async fn in_a_cluster_each_copy_counts_for_the_subscribers_it_is_routed_to() {
        let (p, _) = pressure();
        p.set_remote_groups(true);
        let publisher = p.flow(&acme(), "d:acme:s:d1", false);
        let mut plain = p.flow(&acme(), "a:acme:plain", false);
        plain.subscribed(APP_FILTER);
        let mut member = p.flow(&acme(), "a:acme:m1", false);
        member.subscribed(&format!("$share/g/{APP_FILTER}"));
        let router = p.router(&acme());
        // A local publish goes to plain subscribers here; the group's copy comes back
        // through NATS (here or on another node) and counts where it arrives.
        for _ in 0..WINDOW {
            publisher.published(EVENT);
        }
        assert!(plain.over());
        assert_eq!(member.groups[0].outstanding.load(Ordering::Acquire), 0);
        // From another node: the plain copy for plain subscribers only, the group's
        // copy for the group only.
        router.published_remote(EVENT, None);
        assert_eq!(member.groups[0].outstanding.load(Ordering::Acquire), 0);
        router.published_remote(EVENT, Some("g"));
        assert_eq!(member.groups[0].outstanding.load(Ordering::Acquire), 1);
        assert_eq!(plain.sub.outstanding.load(Ordering::Acquire), WINDOW + 1);
        // A node alone routes a local publish to groups too, and counts it for them.
        p.set_remote_groups(false);
        publisher.published(EVENT);
        assert_eq!(member.groups[0].outstanding.load(Ordering::Acquire), 2);
    }

    #[tokio::test]
    async fn an_offline_persistent_subscriber_does_not_hold_publishers() {
        let (p, _) = pressure();
        let publisher = p.flow(&acme(), "d:acme:s:d1", false);
        let mut app = p.flow(&acme(), "a:acme:app", true);
        app.subscribed(APP_FILTER);
        drop(app);
        for _ in 0..2 * WINDOW {
            publisher.published(EVENT);
        }
        assert!(publisher.may_publish());
        // Back online: counted again, from zero, with the filters it kept.
        let back = p.flow(&acme(), "a:acme:app", true);
        for _ in 0..WINDOW {
            publisher.published(EVENT);
        }
        assert!(back.over());
    }
}
