//! The audit log: who changed what, when, and how it ended (docs/contract.md, section 6,
//! `GET /orgs/{org}/audit`; docs/security.md, "Audit trail").
//!
//! Each org has its own log, and platform-level actions (creating and deleting orgs,
//! requests naming an org that does not exist) go to the platform log, [`AuditLog::Platform`].
//! What an org token does is also copied into the platform log ([`Actor::OrgToken`]):
//! an org's log goes with the org, and an org must not be able to hide from the
//! platform admin by being deleted.
//!
//! Retention is by age, never by count. A count cap lets whoever is audited push their
//! own older entries out by making junk requests (a security review did exactly that
//! with 10,050 of them); an age limit cannot be moved by the audited. An entry younger
//! than the retention ([`DEFAULT_AUDIT_RETENTION_DAYS`], `--audit-retention-days`) is
//! never deleted; older ones are pruned a batch at a time on each write to their log
//! ([`PRUNE_BATCH`], so a write stays a handful of point reads), and by
//! [`Registry::prune_audit_logs`] for logs that get no writes.
//!
//! Entries are numbered per log, 1, 2, 3, … with no gaps: the counter and the entry are
//! written in one batch. Entries are pruned from the oldest end only, so a log is always
//! the contiguous range `low..=seq`; `low` is stored too, so pruning starts where the
//! last one stopped instead of scanning the log.
//!
//! Store layout: `audit/<log>/<seq, 20 digits>` the entries, `audit-seq/<log>` the last
//! seq, `audit-low/<log>` the oldest seq still kept; `<log>` is the org id or
//! `_platform` (no org id starts with `_`).

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::registry::Registry;
use crate::store::Op;

/// How long entries are kept unless configured otherwise, in days.
pub const DEFAULT_AUDIT_RETENTION_DAYS: u32 = 90;
/// The most expired entries one write prunes from its log. More than one, so a backlog
/// (after the retention was shortened, or a quiet spell) drains while writes go on.
pub const PRUNE_BATCH: usize = 32;
/// The most entries one [`Registry::list_audit`] call returns.
pub const AUDIT_PAGE_MAX: usize = 1000;
const PLATFORM: &str = "_platform";

/// Which log an entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditLog {
    /// Org lifecycle, anything that names no existing org, and a copy of every org
    /// token's action.
    Platform,
    Org(OrgId),
}

impl AuditLog {
    fn name(&self) -> &str {
        match self {
            AuditLog::Platform => PLATFORM,
            AuditLog::Org(org) => org.as_str(),
        }
    }
}

/// Who made the request: decides whether the platform log gets a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The platform admin: its entries are where the platform admin can read them anyway.
    PlatformAdmin,
    /// An org token: its entry is also copied into the platform log, so it outlives the
    /// org and the org cannot remove it.
    OrgToken,
}

/// One request as the API layer reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEvent {
    /// Who: `platform` for the platform admin token, else the org token's id (never
    /// the token).
    pub token_id: String,
    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// The request path, without the query string.
    pub path: String,
    /// The org the request named, as written in the path (it may not exist).
    pub org: Option<String>,
    /// What was done, e.g. `upload ca-certs` or `create token 3f2a… (ops)`.
    pub summary: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The error code when the request failed (`conflict`, `not_a_ca`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A recorded [`AuditEvent`]: its number in the log and when it was recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(
    feature = "openapi",
    schema(
        description = "One audit log entry: a request, its number in the log and when it was recorded."
    )
)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten)]
    pub event: AuditEvent,
}

impl Registry {
    /// Keeps audit entries for `days` days (default [`DEFAULT_AUDIT_RETENTION_DAYS`]).
    pub fn with_audit_retention_days(mut self, days: u32) -> Registry {
        self.audit_retention = Duration::days(days.into());
        self
    }

    /// How long audit entries are kept.
    pub fn audit_retention(&self) -> Duration {
        self.audit_retention
    }

    /// Records `event` in `org`'s log when that org exists, else in the platform log
    /// (checked under the write lock, so an entry never lands beside a deleted org). An
    /// org token's entry in an org log is copied into the platform log in the same batch.
    pub fn record_audit(
        &self,
        org: Option<&OrgId>,
        actor: Actor,
        event: AuditEvent,
    ) -> Result<AuditEntry> {
        self.record_audit_at(org, actor, event, OffsetDateTime::now_utc())
    }

    pub(crate) fn record_audit_at(
        &self,
        org: Option<&OrgId>,
        actor: Actor,
        event: AuditEvent,
        now: OffsetDateTime,
    ) -> Result<AuditEntry> {
        let _g = self.lock();
        let log = match org {
            Some(org) if self.store.get(&layout::org(org))?.is_some() => AuditLog::Org(org.clone()),
            _ => AuditLog::Platform,
        };
        let mut ops = Vec::new();
        let entry = self.append_ops(log.name(), event.clone(), now, &mut ops)?;
        if actor == Actor::OrgToken && log != AuditLog::Platform {
            self.append_ops(PLATFORM, event, now, &mut ops)?;
        }
        self.store.apply(ops)?;
        Ok(entry)
    }

    /// The writes that append `event` to `log` and prune up to [`PRUNE_BATCH`] expired
    /// entries from its old end. Call under the write lock.
    fn append_ops(
        &self,
        log: &str,
        event: AuditEvent,
        now: OffsetDateTime,
        ops: &mut Vec<Op>,
    ) -> Result<AuditEntry> {
        let seq = self.get_json::<u64>(&layout::audit_seq(log))?.unwrap_or(0) + 1;
        let low = self.prune_ops(log, seq - 1, now, PRUNE_BATCH, ops)?;
        let entry = AuditEntry {
            seq,
            at: now,
            event,
        };
        ops.push(Self::put(layout::audit_entry(log, seq), &entry));
        ops.push(Self::put(layout::audit_seq(log), &seq));
        ops.push(Self::put(layout::audit_low(log), &low.min(seq)));
        Ok(entry)
    }

    /// The oldest seq `log` keeps. Logs written before `audit-low/` existed have none:
    /// their first entry is found once by a scan, and stored by the next write.
    fn audit_low(&self, log: &str, last: u64) -> Result<u64> {
        if let Some(low) = self.get_json::<u64>(&layout::audit_low(log))? {
            return Ok(low);
        }
        let first = self
            .store
            .scan(&layout::audit_entries(log))?
            .into_iter()
            .next();
        Ok(first
            .and_then(|(k, _)| k.rsplit('/').next()?.parse().ok())
            .unwrap_or(last + 1))
    }

    /// Adds to `ops` the deletion of up to `max` entries of `log` older than the
    /// retention, oldest first, and returns the new oldest seq. Stops at the first entry
    /// that is young enough, or unreadable (kept: pruning never guesses).
    fn prune_ops(
        &self,
        log: &str,
        last: u64,
        now: OffsetDateTime,
        max: usize,
        ops: &mut Vec<Op>,
    ) -> Result<u64> {
        let cutoff = now - self.audit_retention;
        let mut low = self.audit_low(log, last)?;
        for _ in 0..max {
            if low > last {
                break;
            }
            let key = layout::audit_entry(log, low);
            match self.get_json::<AuditEntry>(&key) {
                Ok(Some(e)) if e.at < cutoff => ops.push(Op::Delete(key)),
                Ok(Some(_)) | Err(_) => break,
                Ok(None) => {}
            }
            low += 1;
        }
        Ok(low)
    }

    /// Prunes the expired entries of every log, for logs that get no writes (the
    /// server calls it at start and then hourly). Returns how many were deleted.
    pub fn prune_audit_logs(&self) -> Result<usize> {
        self.prune_audit_logs_at(OffsetDateTime::now_utc())
    }

    pub(crate) fn prune_audit_logs_at(&self, now: OffsetDateTime) -> Result<usize> {
        let logs: Vec<String> = self
            .store
            .scan(layout::AUDIT_SEQS)?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(layout::AUDIT_SEQS).map(str::to_owned))
            .collect();
        let mut deleted = 0;
        for log in logs {
            // One batch at a time under the lock, so API writes are not held up long.
            loop {
                let _g = self.lock();
                let Some(last) = self.get_json::<u64>(&layout::audit_seq(&log))? else {
                    break; // the org was deleted meanwhile
                };
                let mut ops = Vec::new();
                let before = self.audit_low(&log, last)?;
                let low = self.prune_ops(&log, last, now, 1000, &mut ops)?;
                if low == before {
                    break;
                }
                deleted += ops.len();
                ops.push(Self::put(layout::audit_low(&log), &low));
                self.store.apply(ops)?;
            }
        }
        Ok(deleted)
    }

    /// Up to `limit` entries of `log`, newest first, starting below `before` when given.
    /// An org log of an org that does not exist is a 404.
    pub fn list_audit(
        &self,
        log: &AuditLog,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<AuditEntry>> {
        if !(1..=AUDIT_PAGE_MAX).contains(&limit) {
            return Err(Error::BadRequest(format!(
                "limit must be 1-{AUDIT_PAGE_MAX}"
            )));
        }
        if let AuditLog::Org(org) = log {
            self.get_org(org)?;
        }
        let name = log.name();
        let last = self.get_json::<u64>(&layout::audit_seq(name))?.unwrap_or(0);
        let top = before.map_or(last, |b| b.saturating_sub(1).min(last));
        let mut out = Vec::new();
        for seq in (1..=top).rev().take(limit) {
            // Entries are contiguous: the first missing one means the rest were pruned.
            match self.get_json::<AuditEntry>(&layout::audit_entry(name, seq))? {
                Some(e) => out.push(e),
                None => break,
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::registry;

    fn event(summary: &str) -> AuditEvent {
        AuditEvent {
            token_id: "platform".into(),
            method: "POST".into(),
            path: "/api/v1/orgs/acme/ca-certs".into(),
            org: Some("acme".into()),
            summary: summary.into(),
            status: 201,
            error: None,
        }
    }

    /// A registry with org acme.
    fn with_acme() -> (tempfile::TempDir, Registry, OrgId) {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        (dir, r, acme)
    }

    /// A registry keeping entries 2 days, with `n` entries (`0`, `1`, …) in acme's log
    /// written at the returned time.
    fn aged(n: usize) -> (tempfile::TempDir, Registry, OrgId, OffsetDateTime) {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path()).with_audit_retention_days(2);
        let acme = r.create_org("acme", "").unwrap().id;
        let t0 = OffsetDateTime::now_utc();
        for i in 0..n {
            r.record_audit_at(Some(&acme), Actor::PlatformAdmin, event(&i.to_string()), t0)
                .unwrap();
        }
        (dir, r, acme, t0)
    }

    fn summaries(entries: &[AuditEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.event.summary.as_str()).collect()
    }

    #[test]
    fn newest_first_paged_and_routed_to_the_right_log() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let ghost = OrgId::try_from("ghost").unwrap();
        for s in ["a", "b", "c"] {
            r.record_audit(Some(&acme), Actor::PlatformAdmin, event(s))
                .unwrap();
        }
        r.record_audit(Some(&ghost), Actor::PlatformAdmin, event("ghost"))
            .unwrap();
        r.record_audit(None, Actor::PlatformAdmin, event("platform"))
            .unwrap();

        let org = AuditLog::Org(acme.clone());
        let all = r.list_audit(&org, 100, None).unwrap();
        assert_eq!(summaries(&all), ["c", "b", "a"]);
        assert_eq!(all[0].seq, 3);
        assert_eq!(summaries(&r.list_audit(&org, 2, None).unwrap()), ["c", "b"]);
        assert_eq!(summaries(&r.list_audit(&org, 2, Some(2)).unwrap()), ["a"]);
        assert_eq!(
            summaries(&r.list_audit(&AuditLog::Platform, 10, None).unwrap()),
            ["platform", "ghost"]
        );
        assert!(matches!(
            r.list_audit(&AuditLog::Org(ghost), 10, None),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            r.list_audit(&org, 0, None),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            r.list_audit(&org, AUDIT_PAGE_MAX + 1, None),
            Err(Error::BadRequest(_))
        ));

        // The org's log goes with the org; the platform log stays.
        r.delete_org(&acme).unwrap();
        assert!(r.store.scan("audit/acme/").unwrap().is_empty());
        assert!(r.store.get("audit-seq/acme").unwrap().is_none());
        assert!(r.store.get("audit-low/acme").unwrap().is_none());
        assert_eq!(
            r.list_audit(&AuditLog::Platform, 10, None).unwrap().len(),
            2
        );
    }

    /// Security review finding: an org token pushed its own older entries out by making
    /// 10,050 junk requests, because retention was by count.
    #[test]
    fn junk_writes_cannot_push_out_a_younger_entry() {
        let (_dir, r, acme) = with_acme();
        r.record_audit(Some(&acme), Actor::OrgToken, event("evidence"))
            .unwrap();
        for i in 0..10_050 {
            r.record_audit(Some(&acme), Actor::OrgToken, event(&format!("junk {i}")))
                .unwrap();
        }
        let log = AuditLog::Org(acme);
        let oldest = r.list_audit(&log, 1, Some(2)).unwrap();
        assert_eq!(summaries(&oldest), ["evidence"]);
    }

    #[test]
    fn entries_are_pruned_by_age_in_batches_never_by_count() {
        let (_dir, r, acme, t0) = aged(PRUNE_BATCH + 8);
        let write = |s: &str, at: OffsetDateTime| {
            r.record_audit_at(Some(&acme), Actor::PlatformAdmin, event(s), at)
                .unwrap()
        };
        let kept = || r.store.scan("audit/acme/").unwrap().len();
        write("young", t0 + Duration::days(1));
        // Three days on, everything from t0 has expired, "young" (2 days old) has not:
        // each write prunes one batch, oldest first.
        let later = t0 + Duration::days(3);
        write("a", later);
        assert_eq!(kept(), 8 + 1 + 1, "one batch of {PRUNE_BATCH} went");
        write("b", later);
        assert_eq!(
            kept(),
            3,
            "the rest of the expired ones went, nothing younger"
        );
        let log = AuditLog::Org(acme.clone());
        let all = r.list_audit(&log, 100, None).unwrap();
        assert_eq!(summaries(&all), ["b", "a", "young"]);
        assert_eq!(all[2].seq, PRUNE_BATCH as u64 + 9, "seqs are not reused");
        assert_eq!(r.list_audit(&log, 100, Some(all[2].seq)).unwrap(), []);
    }

    #[test]
    fn the_sweep_prunes_quiet_logs_and_stops_at_young_entries() {
        let (_dir, r, acme, t0) = aged(1500);
        r.record_audit_at(
            None,
            Actor::PlatformAdmin,
            event("p"),
            t0 + Duration::days(1),
        )
        .unwrap();
        assert_eq!(r.prune_audit_logs_at(t0 + Duration::days(1)).unwrap(), 0);
        assert_eq!(r.prune_audit_logs_at(t0 + Duration::days(3)).unwrap(), 1500);
        assert!(r.store.scan("audit/acme/").unwrap().is_empty());
        assert_eq!(r.store.scan("audit/_platform/").unwrap().len(), 1);
        // The next entry continues the numbering.
        let e = r
            .record_audit(Some(&acme), Actor::PlatformAdmin, event("next"))
            .unwrap();
        assert_eq!(e.seq, 1501);
    }

    #[test]
    fn logs_from_before_audit_low_are_pruned_from_their_first_entry() {
        let (_dir, r, acme, t0) = aged(10);
        // As the count cap left them: entries 1-4 gone, no low mark.
        let mut ops: Vec<Op> = (1..=4)
            .map(|s| Op::Delete(layout::audit_entry("acme", s)))
            .collect();
        ops.push(Op::Delete(layout::audit_low("acme")));
        r.store.apply(ops).unwrap();
        r.record_audit_at(
            Some(&acme),
            Actor::PlatformAdmin,
            event("new"),
            t0 + Duration::days(3),
        )
        .unwrap();
        let all = r.list_audit(&AuditLog::Org(acme), 100, None).unwrap();
        assert_eq!(summaries(&all), ["new"]);
    }

    #[test]
    fn org_token_entries_are_copied_to_the_platform_log() {
        let (_dir, r, acme) = with_acme();
        r.record_audit(Some(&acme), Actor::OrgToken, event("by token"))
            .unwrap();
        r.record_audit(Some(&acme), Actor::PlatformAdmin, event("by admin"))
            .unwrap();
        // Naming no existing org, an org token's entry is in the platform log once.
        let ghost = OrgId::try_from("ghost").unwrap();
        r.record_audit(Some(&ghost), Actor::OrgToken, event("ghost"))
            .unwrap();
        let org = r
            .list_audit(&AuditLog::Org(acme.clone()), 10, None)
            .unwrap();
        assert_eq!(summaries(&org), ["by admin", "by token"]);
        r.delete_org(&acme).unwrap();
        let platform = r.list_audit(&AuditLog::Platform, 10, None).unwrap();
        assert_eq!(summaries(&platform), ["ghost", "by token"]);
    }
}
