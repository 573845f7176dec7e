//! Per-org limits as sessions enforce them (docs/limits.md).
//!
//! The org's [`OrgLimits`] are part of what the TLS cache builds for the org
//! (`OrgTls::limits`), so a change through the registry — which invalidates and
//! rebuilds the org's entry before the API answers — reaches sessions without a store
//! read: a [`LiveLimits`] looks the org up again only when the cache's generation moved,
//! so the per-packet cost is one atomic load.
//!
//! What is enforced here: `max_connections` (at CONNECT, counted by `Sessions`),
//! `max_message_bytes`, `max_subscriptions_per_session` and `max_inflight_per_session`
//! (per packet, in `session::limits`). Every refusal is counted in
//! `certmq_limit_refusals_total{org,limit}` ([`crate::metrics::limit_refused`]).

use std::sync::Arc;

use registry::{OrgId, OrgLimits};

use crate::tls::OrgTlsCache;

/// The `limit` label values of `certmq_limit_refusals_total`: the field names.
pub(crate) const MAX_CONNECTIONS: &str = "max_connections";
pub(crate) const MAX_MESSAGE_BYTES: &str = "max_message_bytes";
pub(crate) const MAX_SUBSCRIPTIONS: &str = "max_subscriptions_per_session";
pub(crate) const MAX_INFLIGHT: &str = "max_inflight_per_session";

/// One session's view of its org's limits, refreshed when the org's cached state
/// changes.
pub(crate) struct LiveLimits {
    cache: Arc<OrgTlsCache>,
    org: OrgId,
    /// The cache generation `current` was read at; refreshed when it moves.
    seen: u64,
    current: OrgLimits,
}

impl LiveLimits {
    /// The org's limits now (from the cache; the defaults if the org was never built,
    /// which cannot happen for an admitted session).
    pub(crate) fn new(cache: Arc<OrgTlsCache>, org: OrgId) -> LiveLimits {
        let mut l = LiveLimits {
            cache,
            org,
            seen: u64::MAX,
            current: OrgLimits::default(),
        };
        l.refresh();
        l
    }

    /// The limits in force, re-read only after an invalidation.
    pub(crate) fn get(&mut self) -> &OrgLimits {
        if self.cache.generation() != self.seen {
            self.refresh();
        }
        &self.current
    }

    pub(crate) fn org(&self) -> &OrgId {
        &self.org
    }

    fn refresh(&mut self) {
        // Read the generation first: an invalidation after it makes the next `get`
        // look again.
        let generation = self.cache.generation();
        if let Some((limits, current)) = self.cache.cached_limits(&self.org) {
            self.current = limits;
            // A last-good entry may predate the change being applied: look again on
            // the next packet until the rebuilt entry is cached.
            if current {
                self.seen = generation;
            }
        }
    }
}
