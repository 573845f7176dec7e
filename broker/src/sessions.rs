//! Live sessions: who is connected, admitted by which CA, and the switch that closes
//! each one (kick, takeover, revocation, shutdown).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::engine::packet::DisconnectReasonCode;
use registry::live::SessionInfo;

use crate::acl::Principal;
use crate::admission::PeerCert;
use registry::OrgId;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Why the broker closes a session; v5 clients get it as the DISCONNECT reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    TakenOver,
    Kicked,
    Revoked,
    Shutdown,
    /// The org's topic policy switched between watson and custom mode: the session's
    /// topics mean something else now, so it reconnects under the new mode.
    PolicyChanged,
}

impl CloseReason {
    pub fn code(self) -> DisconnectReasonCode {
        match self {
            CloseReason::TakenOver => DisconnectReasonCode::SessionTakenOver,
            CloseReason::Kicked => DisconnectReasonCode::AdministrativeAction,
            CloseReason::Revoked => DisconnectReasonCode::NotAuthorized,
            CloseReason::Shutdown => DisconnectReasonCode::ServerShuttingDown,
            CloseReason::PolicyChanged => DisconnectReasonCode::AdministrativeAction,
        }
    }

    /// The MQTT v5 reason code number (status events report it as CloseCode).
    pub fn number(self) -> u8 {
        match self {
            CloseReason::TakenOver => 0x8E,
            CloseReason::Kicked => 0x98,
            CloseReason::Revoked => 0x87,
            CloseReason::Shutdown => 0x8B,
            CloseReason::PolicyChanged => 0x98,
        }
    }

    /// The `reason` label of `certmq_kicks_total`.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::TakenOver => "taken_over",
            CloseReason::Kicked => "kicked",
            CloseReason::Revoked => "revoked",
            CloseReason::Shutdown => "shutdown",
            CloseReason::PolicyChanged => "policy_changed",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            CloseReason::TakenOver => "session taken over",
            CloseReason::Kicked => "closed by an administrator",
            CloseReason::Revoked => "credentials no longer valid",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::PolicyChanged => "the org's topic policy changed mode",
        }
    }
}

/// Closes one session from outside, and tells when it is gone; also hands it its
/// principal re-decided after an org change (`Broker::reconcile`).
#[derive(Debug, Default)]
pub struct KillSwitch {
    kill: CancellationToken,
    reason: OnceLock<CloseReason>,
    finished: CancellationToken,
    update: Mutex<Option<Principal>>,
    updated: Notify,
}

impl KillSwitch {
    /// Gives the session the principal its org's rules now make of it (the latest
    /// wins; the session applies it between packets).
    pub(crate) fn update(&self, principal: Principal) {
        *crate::lock(&self.update) = Some(principal);
        self.updated.notify_one();
    }

    /// The next principal handed over by [`KillSwitch::update`].
    pub(crate) async fn updated(&self) -> Principal {
        loop {
            self.updated.notified().await;
            if let Some(p) = crate::lock(&self.update).take() {
                return p;
            }
        }
    }

    /// Asks the session to close; the first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.set(reason);
        self.kill.cancel();
    }

    /// Whether the session was asked to close.
    pub fn is_closing(&self) -> bool {
        self.kill.is_cancelled()
    }

    pub(crate) async fn closed(&self) -> CloseReason {
        self.kill.cancelled().await;
        self.reason.get().copied().unwrap_or(CloseReason::Kicked)
    }

    /// Marks the session fully torn down (its engine link is released).
    pub(crate) fn finish(&self) {
        self.finished.cancel();
    }

    pub(crate) async fn finished(&self) {
        self.finished.cancelled().await
    }
}

struct Entry {
    info: SessionInfo,
    /// The certificate that admitted the session (with its verified path), for
    /// re-judging it when the org changes.
    cert: Option<PeerCert>,
    seq: u64,
    switch: Arc<KillSwitch>,
}

/// A live session as `Broker::reconcile` judges it.
pub(crate) struct Live {
    pub info: SessionInfo,
    pub cert: Option<PeerCert>,
    pub switch: Arc<KillSwitch>,
}

/// The live sessions by org and client id, and how many each org has.
#[derive(Default)]
struct Table {
    /// Keyed by org too: in custom topic mode client ids need not name their org
    /// (`myclientid` in two orgs are two sessions), and a takeover never crosses orgs.
    by_id: HashMap<(OrgId, String), Entry>,
    /// Live sessions per org (what `max_connections` is checked against).
    per_org: HashMap<OrgId, usize>,
}

impl Table {
    fn values(&self) -> impl Iterator<Item = &Entry> {
        self.by_id.values()
    }

    fn get(&self, org: &OrgId, client_id: &str) -> Option<&Entry> {
        // One allocation per lookup; lookups happen at CONNECT and on admin calls.
        self.by_id.get(&(org.clone(), client_id.to_owned()))
    }
}

/// All live sessions, by org and client id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<Table>,
    seq: AtomicU64,
}

/// A session refused because its org already has `max` live sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverConnectionLimit {
    pub max: usize,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, Table> {
        crate::lock(&self.map)
    }

    /// Registers a session, returning its sequence number and the session it replaces.
    /// Refused when its org already has `max_connections` live sessions; taking over a
    /// live client id does not add one, so a takeover is never refused.
    pub(crate) fn register(
        &self,
        info: SessionInfo,
        cert: Option<PeerCert>,
        switch: Arc<KillSwitch>,
        max_connections: usize,
    ) -> Result<(u64, Option<Arc<KillSwitch>>), OverConnectionLimit> {
        let mut table = self.map();
        let org = info.org.clone();
        let takeover = table.get(&org, &info.client_id).is_some();
        let live = table.per_org.get(&org).copied().unwrap_or(0);
        if !takeover && live >= max_connections {
            return Err(OverConnectionLimit {
                max: max_connections,
            });
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let client_id = info.client_id.clone();
        let entry = Entry {
            info,
            cert,
            seq,
            switch,
        };
        let old = table.by_id.insert((org.clone(), client_id), entry);
        if let Some(old) = &old {
            decrement(&mut table.per_org, &old.info.org);
        }
        *table.per_org.entry(org).or_default() += 1;
        Ok((seq, old.map(|e| e.switch)))
    }

    /// Removes the session if it is still the one registered under `client_id` in `org`.
    pub(crate) fn remove(&self, org: &OrgId, client_id: &str, seq: u64) {
        let mut table = self.map();
        if table.get(org, client_id).is_some_and(|e| e.seq == seq) {
            if let Some(e) = table.by_id.remove(&(org.clone(), client_id.to_owned())) {
                decrement(&mut table.per_org, &e.info.org);
            }
        }
    }

    /// The leaf fingerprint (when a certificate admitted it) and remote address of the
    /// live session `client_id`, if there is one.
    pub(crate) fn cert_and_addr(
        &self,
        org: &OrgId,
        client_id: &str,
    ) -> Option<(Option<String>, std::net::SocketAddr)> {
        self.map().get(org, client_id).map(|e| {
            (
                e.cert.as_ref().map(|c| c.fingerprint.clone()),
                e.info.remote_addr,
            )
        })
    }

    /// Live sessions of `org`.
    pub fn count(&self, org: &OrgId) -> usize {
        self.map().per_org.get(org).copied().unwrap_or(0)
    }

    /// Live sessions of `org`, sorted by client id.
    pub fn list(&self, org: &OrgId) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .map()
            .values()
            .filter(|e| &e.info.org == org)
            .map(|e| e.info.clone())
            .collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// Live sessions per (org, kind), for the connections gauge.
    pub fn counts(&self) -> std::collections::BTreeMap<(OrgId, registry::Kind), usize> {
        let mut out = std::collections::BTreeMap::new();
        for e in self.map().values() {
            *out.entry((e.info.org.clone(), e.info.kind)).or_default() += 1;
        }
        out
    }

    /// Closes the session `client_id` of `org`. False when there is none.
    pub fn kick(&self, org: &OrgId, client_id: &str, reason: CloseReason) -> bool {
        match self.map().get(org, client_id) {
            Some(e) => {
                crate::metrics::kick(org.as_str(), reason.label());
                e.switch.close(reason);
                true
            }
            _ => false,
        }
    }

    /// Closes the session `client_id` of `org` if it started before `since` (another
    /// node's session with that client id started then): its kill switch (to wait for
    /// its end). `None` when there is none.
    pub(crate) fn kick_older(
        &self,
        org: &OrgId,
        client_id: &str,
        since: time::OffsetDateTime,
        reason: CloseReason,
    ) -> Option<Arc<KillSwitch>> {
        match self.map().get(org, client_id) {
            Some(e) if e.info.since <= since => {
                crate::metrics::kick(org.as_str(), reason.label());
                e.switch.close(reason);
                Some(e.switch.clone())
            }
            _ => None,
        }
    }

    /// The live sessions of `org` with their kill switches, copied out so that the
    /// caller judges them (reading the store if it must) without holding the lock.
    pub(crate) fn of_org(&self, org: &OrgId) -> Vec<Live> {
        self.map()
            .values()
            .filter(|e| &e.info.org == org)
            .map(|e| Live {
                info: e.info.clone(),
                cert: e.cert.clone(),
                switch: e.switch.clone(),
            })
            .collect()
    }

    /// Closes every session for which `pred` holds; returns how many.
    pub fn kick_where(&self, reason: CloseReason, pred: impl Fn(&SessionInfo) -> bool) -> usize {
        let map = self.map();
        let mut n = 0;
        // A session already closing is not asked (or counted) twice.
        for e in map
            .values()
            .filter(|e| !e.switch.is_closing() && pred(&e.info))
        {
            crate::metrics::kick(e.info.org.as_str(), reason.label());
            e.switch.close(reason);
            n += 1;
        }
        n
    }
}

fn decrement(per_org: &mut HashMap<OrgId, usize>, org: &OrgId) {
    if let Some(n) = per_org.get_mut(org) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            per_org.remove(org);
        }
    }
}
