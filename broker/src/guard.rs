//! Limits on what an unauthenticated peer can cost, per source address: how many of
//! its connections may be waiting for admission at once, how fast it may start TLS
//! handshakes, and how many wrong device tokens it (or anyone, for one identity) may
//! try.
//!
//! Everything here is in memory, bounded by what it tracks: an address is forgotten
//! when it has no pending connection and its buckets are full again, and the token
//! failure table is swept as its windows expire.

use crate::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use registry::{Identity, OrgId};

/// The limits, all per source IP address except where said.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// Connections from one address that may be handshaking or waiting for their
    /// CONNECT to be admitted at once; more are closed at accept. 0: no limit.
    pub max_pending_per_ip: u32,
    /// Handshakes one address may start per second, sustained (0: no limit) ...
    pub handshakes_per_sec: f64,
    /// ... and in a burst.
    pub handshake_burst: f64,
    /// Wrong tokens accepted per window, per identity (whatever the address) and per
    /// address (whatever the identity); past either, token logins are refused without
    /// being checked until the window ends.
    pub token_failures_per_identity: u32,
    pub token_failures_per_ip: u32,
    pub token_failure_window: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            // A NAT gateway with many devices reconnecting at once stays well below this:
            // each handshake lasts a few milliseconds.
            max_pending_per_ip: 256,
            handshakes_per_sec: 500.0,
            handshake_burst: 1000.0,
            token_failures_per_identity: 10,
            token_failures_per_ip: 100,
            token_failure_window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Source {
    pending: u32,
    tokens: f64,
    refilled: Instant,
}

/// Why a connection is refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptRefusal {
    TooManyPending,
    HandshakeRate,
}

impl AcceptRefusal {
    /// The `reason` label of `certmq_handshakes_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            AcceptRefusal::TooManyPending => "too_many_pending",
            AcceptRefusal::HandshakeRate => "handshake_rate",
        }
    }
}

#[derive(Debug, Default)]
struct Failures {
    by_identity: HashMap<(OrgId, Identity), (u32, Instant)>,
    by_ip: HashMap<IpAddr, (u32, Instant)>,
}

/// The per-source limits of one broker.
#[derive(Debug)]
pub(crate) struct Guard {
    config: GuardConfig,
    sources: Mutex<HashMap<IpAddr, Source>>,
    failures: Mutex<Failures>,
}

/// A connection from `ip` waiting for admission; dropping it ends the wait.
#[derive(Debug)]
pub(crate) struct Pending {
    guard: Arc<Guard>,
    ip: IpAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut sources = lock(&self.guard.sources);
        if let Some(s) = sources.get_mut(&self.ip) {
            s.pending = s.pending.saturating_sub(1);
            if s.pending == 0 && s.tokens >= self.guard.config.handshake_burst {
                sources.remove(&self.ip);
            }
        }
    }
}

impl Guard {
    pub(crate) fn new(config: GuardConfig) -> Arc<Guard> {
        Arc::new(Guard {
            config,
            sources: Mutex::default(),
            failures: Mutex::default(),
        })
    }

    /// Admits a new connection from `ip` to the handshake, or says why not.
    pub(crate) fn accept(self: &Arc<Self>, ip: IpAddr) -> Result<Pending, AcceptRefusal> {
        self.accept_at(ip, Instant::now())
    }

    fn accept_at(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Pending, AcceptRefusal> {
        let c = &self.config;
        let mut sources = lock(&self.sources);
        if sources.len() > 100_000 {
            // Many idle entries (each at a full bucket but never swept): drop those.
            sources.retain(|_, s| s.pending > 0);
        }
        let s = sources.entry(ip).or_insert(Source {
            pending: 0,
            tokens: c.handshake_burst,
            refilled: now,
        });
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * c.handshakes_per_sec).min(c.handshake_burst);
        s.refilled = now;
        if c.max_pending_per_ip > 0 && s.pending >= c.max_pending_per_ip {
            return Err(AcceptRefusal::TooManyPending);
        }
        if c.handshakes_per_sec > 0.0 {
            if s.tokens < 1.0 {
                return Err(AcceptRefusal::HandshakeRate);
            }
            s.tokens -= 1.0;
        }
        s.pending += 1;
        Ok(Pending {
            guard: self.clone(),
            ip,
        })
    }

    /// Whether token logins for `identity` of `org` from `ip` are refused for now,
    /// because too many wrong tokens were tried.
    pub(crate) fn token_locked(&self, org: &OrgId, identity: &Identity, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut f = lock(&self.failures);
        let window = self.config.token_failure_window;
        let live = |e: &(u32, Instant)| now.saturating_duration_since(e.1) < window;
        let by_identity = f
            .by_identity
            .get(&(org.clone(), identity.clone()))
            .filter(|e| live(e))
            .is_some_and(|e| e.0 >= self.config.token_failures_per_identity);
        let by_ip = f
            .by_ip
            .get(&ip)
            .filter(|e| live(e))
            .is_some_and(|e| e.0 >= self.config.token_failures_per_ip);
        if f.by_identity.len() + f.by_ip.len() > 100_000 {
            f.by_identity.retain(|_, e| live(e));
            f.by_ip.retain(|_, e| live(e));
        }
        by_identity || by_ip
    }

    /// Records a wrong token for `identity` of `org` from `ip`.
    pub(crate) fn token_failed(&self, org: &OrgId, identity: &Identity, ip: IpAddr) {
        let now = Instant::now();
        let window = self.config.token_failure_window;
        let mut f = lock(&self.failures);
        let bump = |e: &mut (u32, Instant)| {
            if now.saturating_duration_since(e.1) >= window {
                *e = (0, now);
            }
            e.0 += 1;
        };
        bump(
            f.by_identity
                .entry((org.clone(), identity.clone()))
                .or_insert((0, now)),
        );
        bump(f.by_ip.entry(ip).or_insert((0, now)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn pending_connections_are_capped_per_address() {
        let g = Guard::new(GuardConfig {
            max_pending_per_ip: 2,
            ..Default::default()
        });
        let a = g.accept(ip(1)).unwrap();
        let _b = g.accept(ip(1)).unwrap();
        assert_eq!(g.accept(ip(1)).unwrap_err(), AcceptRefusal::TooManyPending);
        assert!(g.accept(ip(2)).is_ok(), "other addresses are not affected");
        drop(a);
        assert!(g.accept(ip(1)).is_ok(), "a finished wait frees a place");
    }

    #[test]
    fn zero_means_no_limit() {
        let g = Guard::new(GuardConfig {
            max_pending_per_ip: 0,
            handshakes_per_sec: 0.0,
            handshake_burst: 0.0,
            ..Default::default()
        });
        let held: Vec<Pending> = (0..5000).map(|_| g.accept(ip(1)).unwrap()).collect();
        assert_eq!(held.len(), 5000);
    }

    #[test]
    fn handshakes_are_rate_limited_per_address() {
        let g = Guard::new(GuardConfig {
            handshakes_per_sec: 10.0,
            handshake_burst: 3.0,
            ..Default::default()
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(g.accept_at(ip(1), t0).unwrap());
        }
        assert_eq!(
            g.accept_at(ip(1), t0).unwrap_err(),
            AcceptRefusal::HandshakeRate
        );
        // 100 ms later one more token has come.
        assert!(g.accept_at(ip(1), t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn wrong_tokens_lock_the_identity_and_the_address() {
        let g = Guard::new(GuardConfig {
            token_failures_per_identity: 3,
            token_failures_per_ip: 5,
            ..Default::default()
        });
        let org = OrgId::try_from("acme").unwrap();
        let dev = Identity::parse("d:t:d1").unwrap();
        let other = Identity::parse("d:t:d2").unwrap();
        for _ in 0..3 {
            assert!(!g.token_locked(&org, &dev, ip(1)));
            g.token_failed(&org, &dev, ip(1));
        }
        assert!(g.token_locked(&org, &dev, ip(1)));
        assert!(
            g.token_locked(&org, &dev, ip(9)),
            "per identity, any address"
        );
        assert!(!g.token_locked(&org, &other, ip(9)));
        g.token_failed(&org, &other, ip(1));
        g.token_failed(&org, &other, ip(1));
        assert!(
            g.token_locked(&org, &other, ip(1)),
            "per address, any identity"
        );
    }
}
