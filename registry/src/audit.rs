//! The audit log: who changed what, when, and how it ended (docs/contract.md, section 6,
//! `GET /orgs/{org}/audit`).
//!
//! Each org has its own log, and platform-level actions (creating and deleting orgs,
//! requests naming an org that does not exist) go to the platform log, [`AuditLog::Platform`].
//! Entries are numbered per log, 1, 2, 3, … with no gaps: the counter and the entry are
//! written in one batch. That makes both ends cheap: reading the newest `n` entries is
//! `n` point reads counting down from the counter, and retention is one delete per
//! append (entry `seq - retention` falls out in the same batch that adds `seq`), so a
//! log never holds more than [`AUDIT_RETENTION`] entries.
//!
//! Store layout: `audit/<log>/<seq, 20 digits>` the entries, `audit-seq/<log>` the last
//! seq; `<log>` is the org id or `_platform` (no org id starts with `_`).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::registry::Registry;
use crate::store::Op;

/// Entries kept per log; older ones are dropped as new ones arrive.
pub const AUDIT_RETENTION: u64 = 10_000;
/// The most entries one [`Registry::list_audit`] call returns.
pub const AUDIT_PAGE_MAX: usize = 1000;
const PLATFORM: &str = "_platform";

/// Which log an entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditLog {
    /// Org lifecycle and anything that names no existing org.
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
    /// Records `event` in `org`'s log when that org exists, else in the platform log
    /// (checked under the write lock, so an entry never lands beside a deleted org).
    pub fn record_audit(&self, org: Option<&OrgId>, event: AuditEvent) -> Result<AuditEntry> {
        self.record_audit_bounded(org, event, AUDIT_RETENTION)
    }

    pub(crate) fn record_audit_bounded(
        &self,
        org: Option<&OrgId>,
        event: AuditEvent,
        retention: u64,
    ) -> Result<AuditEntry> {
        let _g = self.lock();
        let log = match org {
            Some(org) if self.store.get(&layout::org(org))?.is_some() => AuditLog::Org(org.clone()),
            _ => AuditLog::Platform,
        };
        let log = log.name();
        let seq = self.get_json::<u64>(&layout::audit_seq(log))?.unwrap_or(0) + 1;
        let entry = AuditEntry {
            seq,
            at: OffsetDateTime::now_utc(),
            event,
        };
        let mut ops = vec![
            Self::put(layout::audit_entry(log, seq), &entry),
            Self::put(layout::audit_seq(log), &seq),
        ];
        if seq > retention {
            ops.push(Op::Delete(layout::audit_entry(log, seq - retention)));
        }
        self.store.apply(ops)?;
        Ok(entry)
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
            // Entries are contiguous: the first missing one means the rest were trimmed.
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
            r.record_audit(Some(&acme), event(s)).unwrap();
        }
        r.record_audit(Some(&ghost), event("ghost")).unwrap();
        r.record_audit(None, event("platform")).unwrap();

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
        assert_eq!(
            r.list_audit(&AuditLog::Platform, 10, None).unwrap().len(),
            2
        );
    }

    #[test]
    fn retention_trims_in_the_same_batch() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        for i in 1..=7 {
            r.record_audit_bounded(Some(&acme), event(&i.to_string()), 5)
                .unwrap();
        }
        assert_eq!(r.store.scan("audit/acme/").unwrap().len(), 5);
        let all = r.list_audit(&AuditLog::Org(acme), 100, None).unwrap();
        assert_eq!(summaries(&all), ["7", "6", "5", "4", "3"]);
    }
}
