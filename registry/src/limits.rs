//! Per-org message-state limits (docs/limits.md): how many connections an org may hold,
//! how large its messages may be, how many retained messages, subscriptions, queued and
//! in-flight messages it may keep, so that one tenant cannot take the broker's memory
//! from the others.
//!
//! An org without a stored record has [`OrgLimits::default`]. Anyone who may change the
//! org may lower its limits; raising one above its current value needs the platform
//! token (`may_raise`), refused otherwise with [`Error::RaiseNeedsPlatformToken`] (403).
//! A value outside [`OrgLimits::RANGES`] is refused with 422 `limit_out_of_range`.
//! Every change notifies the change listeners, so the broker rebuilds the org's cached
//! state (and with it the limits it enforces) before the call returns.

use serde::{Deserialize, Serialize};

use crate::cert::{CertError, Rule};
use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::registry::{Change, Registry};

/// One MiB.
const MIB: u64 = 1024 * 1024;

/// The largest payload MQTT can carry: the largest remaining length (256 MiB − 1).
pub const MQTT_MAX_PACKET_BYTES: u32 = 268_435_455;

/// An org's limits. Every field is at least 1; see [`OrgLimits::RANGES`] for the upper
/// bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "max_connections": 50000,
    "max_message_bytes": 1048576,
    "max_retained_messages": 10000,
    "max_retained_bytes": 67108864,
    "max_subscriptions_per_session": 100,
    "max_queued_messages_per_session": 1000,
    "max_inflight_per_session": 1000
})))]
#[serde(deny_unknown_fields)]
pub struct OrgLimits {
    /// Live MQTT sessions of the org (1–1,000,000). A CONNECT over it is refused: MQTT 5
    /// CONNACK 0x97 *quota exceeded*, 3.1.1 CONNACK 3 *server unavailable*.
    pub max_connections: u32,
    /// Largest PUBLISH payload, bytes (1–268,435,455). A larger one closes the
    /// connection: MQTT 5 DISCONNECT 0x95 *packet too large* first.
    pub max_message_bytes: u32,
    /// Retained messages the org may keep (1–10,000,000).
    pub max_retained_messages: u32,
    /// Bytes of retained payloads the org may keep (1–17,179,869,184, i.e. 16 GiB).
    pub max_retained_bytes: u64,
    /// Distinct topic filters one session may hold (1–100,000). Filters past it get
    /// SUBACK 0x97 *quota exceeded* (3.1.1: 0x80).
    pub max_subscriptions_per_session: u32,
    /// Messages queued for one session (1–1,000,000); past it the oldest are dropped.
    pub max_queued_messages_per_session: u32,
    /// Unacknowledged QoS 1/2 PUBLISHes a client may have sent to the broker
    /// (1–65,535; MQTT 5 CONNACK advertises it as Receive Maximum). One more closes the
    /// connection: MQTT 5 DISCONNECT 0x93 *receive maximum exceeded* first.
    pub max_inflight_per_session: u32,
}

impl Default for OrgLimits {
    /// Sized so that one tenant cannot hurt the others on a 24 GiB machine.
    fn default() -> OrgLimits {
        OrgLimits {
            max_connections: 50_000,
            max_message_bytes: 1_048_576,
            max_retained_messages: 10_000,
            max_retained_bytes: 64 * MIB,
            max_subscriptions_per_session: 100,
            max_queued_messages_per_session: 1_000,
            max_inflight_per_session: 1_000,
        }
    }
}

impl OrgLimits {
    /// Every field's name and its allowed range (inclusive).
    pub const RANGES: [(&'static str, u64, u64); 7] = [
        ("max_connections", 1, 1_000_000),
        ("max_message_bytes", 1, MQTT_MAX_PACKET_BYTES as u64),
        ("max_retained_messages", 1, 10_000_000),
        ("max_retained_bytes", 1, 16 * 1024 * MIB),
        ("max_subscriptions_per_session", 1, 100_000),
        ("max_queued_messages_per_session", 1, 1_000_000),
        ("max_inflight_per_session", 1, u16::MAX as u64),
    ];

    /// The fields as (name, value), in the order of [`OrgLimits::RANGES`].
    pub fn fields(&self) -> [(&'static str, u64); 7] {
        [
            ("max_connections", self.max_connections.into()),
            ("max_message_bytes", self.max_message_bytes.into()),
            ("max_retained_messages", self.max_retained_messages.into()),
            ("max_retained_bytes", self.max_retained_bytes),
            (
                "max_subscriptions_per_session",
                self.max_subscriptions_per_session.into(),
            ),
            (
                "max_queued_messages_per_session",
                self.max_queued_messages_per_session.into(),
            ),
            (
                "max_inflight_per_session",
                self.max_inflight_per_session.into(),
            ),
        ]
    }

    /// Every value within its range, else 422 `limit_out_of_range` naming the first
    /// field that is not.
    pub fn validate(&self) -> Result<()> {
        for ((name, value), (_, low, high)) in self.fields().into_iter().zip(Self::RANGES) {
            if !(low..=high).contains(&value) {
                return Err(Error::Rejected(CertError::new(
                    Rule::LimitOutOfRange,
                    format!("{name} must be between {low} and {high}; got {value}"),
                )));
            }
        }
        Ok(())
    }

    /// The fields of `self` above their value in `current`.
    pub fn raised_over(&self, current: &OrgLimits) -> Vec<&'static str> {
        self.fields()
            .into_iter()
            .zip(current.fields())
            .filter(|((_, new), (_, old))| new > old)
            .map(|((name, _), _)| name)
            .collect()
    }
}

/// A change to some of an org's limits (`PUT /orgs/{org}/limits`): the fields given
/// replace the current values, the others keep theirs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "max_connections": 1000,
    "max_message_bytes": 65536
})))]
#[serde(deny_unknown_fields)]
pub struct LimitsUpdate {
    pub max_connections: Option<u32>,
    pub max_message_bytes: Option<u32>,
    pub max_retained_messages: Option<u32>,
    pub max_retained_bytes: Option<u64>,
    pub max_subscriptions_per_session: Option<u32>,
    pub max_queued_messages_per_session: Option<u32>,
    pub max_inflight_per_session: Option<u32>,
}

impl LimitsUpdate {
    /// `base` with the fields this update gives replaced.
    pub fn apply(self, base: OrgLimits) -> OrgLimits {
        OrgLimits {
            max_connections: self.max_connections.unwrap_or(base.max_connections),
            max_message_bytes: self.max_message_bytes.unwrap_or(base.max_message_bytes),
            max_retained_messages: self
                .max_retained_messages
                .unwrap_or(base.max_retained_messages),
            max_retained_bytes: self.max_retained_bytes.unwrap_or(base.max_retained_bytes),
            max_subscriptions_per_session: self
                .max_subscriptions_per_session
                .unwrap_or(base.max_subscriptions_per_session),
            max_queued_messages_per_session: self
                .max_queued_messages_per_session
                .unwrap_or(base.max_queued_messages_per_session),
            max_inflight_per_session: self
                .max_inflight_per_session
                .unwrap_or(base.max_inflight_per_session),
        }
    }
}

impl From<OrgLimits> for LimitsUpdate {
    fn from(l: OrgLimits) -> LimitsUpdate {
        LimitsUpdate {
            max_connections: Some(l.max_connections),
            max_message_bytes: Some(l.max_message_bytes),
            max_retained_messages: Some(l.max_retained_messages),
            max_retained_bytes: Some(l.max_retained_bytes),
            max_subscriptions_per_session: Some(l.max_subscriptions_per_session),
            max_queued_messages_per_session: Some(l.max_queued_messages_per_session),
            max_inflight_per_session: Some(l.max_inflight_per_session),
        }
    }
}

impl Registry {
    /// The org's limits: the stored ones, or [`OrgLimits::default`] when none were set.
    /// 404 for an unknown org.
    pub fn org_limits(&self, org: &OrgId) -> Result<OrgLimits> {
        self.get_org(org)?;
        self.stored_limits(org)
    }

    fn stored_limits(&self, org: &OrgId) -> Result<OrgLimits> {
        Ok(self.get_json(&layout::limits(org))?.unwrap_or_default())
    }

    /// Replaces the org's limits. Unless `may_raise` (the platform token), a value above
    /// the one in force is refused with [`Error::RaiseNeedsPlatformToken`]; lowering is
    /// always allowed. The broker applies the new limits before this returns (see
    /// docs/limits.md for what a change does to live sessions).
    pub fn set_org_limits(
        &self,
        org: &OrgId,
        limits: OrgLimits,
        may_raise: bool,
    ) -> Result<OrgLimits> {
        self.change_limits(org, may_raise, |_| limits)
    }

    /// Changes the fields `update` gives, keeps the others (as [`Registry::set_org_limits`]
    /// otherwise). The current values are read under the registry's write lock.
    pub fn update_org_limits(
        &self,
        org: &OrgId,
        update: LimitsUpdate,
        may_raise: bool,
    ) -> Result<OrgLimits> {
        self.change_limits(org, may_raise, |current| update.apply(current))
    }

    fn change_limits(
        &self,
        org: &OrgId,
        may_raise: bool,
        new: impl FnOnce(OrgLimits) -> OrgLimits,
    ) -> Result<OrgLimits> {
        let _g = self.lock();
        self.get_org(org)?;
        let current = self.stored_limits(org)?;
        let limits = new(current);
        limits.validate()?;
        if !may_raise {
            let raised = limits.raised_over(&current);
            if !raised.is_empty() {
                return Err(Error::RaiseNeedsPlatformToken(format!(
                    "raising {} needs the platform admin token; an org token may only lower limits",
                    raised.join(", ")
                )));
            }
        }
        self.store
            .apply(vec![Self::put(layout::limits(org), &limits)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn defaults_are_within_range() {
        let d = OrgLimits::default();
        d.validate().unwrap();
        assert_eq!(d.max_retained_bytes, 67_108_864);
        for (f, r) in d.fields().iter().zip(OrgLimits::RANGES) {
            assert_eq!(f.0, r.0, "fields and RANGES are in the same order");
        }
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        let bad = [
            OrgLimits {
                max_connections: 0,
                ..Default::default()
            },
            OrgLimits {
                max_message_bytes: MQTT_MAX_PACKET_BYTES + 1,
                ..Default::default()
            },
            OrgLimits {
                max_inflight_per_session: 65_536,
                ..Default::default()
            },
            OrgLimits {
                max_retained_bytes: 0,
                ..Default::default()
            },
        ];
        for (l, field) in bad.iter().zip([
            "max_connections",
            "max_message_bytes",
            "max_inflight_per_session",
            "max_retained_bytes",
        ]) {
            match l.validate() {
                Err(Error::Rejected(e)) => {
                    assert_eq!(e.rule.code(), "limit_out_of_range");
                    assert!(e.message.contains(field), "{}", e.message);
                }
                other => panic!("{l:?} was not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<LimitsUpdate>(r#"{"max_conections":1}"#).is_err());
        assert!(serde_json::from_str::<OrgLimits>(r#"{"max_conections":1}"#).is_err());
    }

    #[test]
    fn lowering_is_free_raising_needs_the_platform() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let changes = Arc::new(Mutex::new(Vec::new()));
        let c2 = changes.clone();
        r.on_change(move |c| c2.lock().unwrap().push(c.clone()));
        let acme = r.create_org("acme", "").unwrap().id;
        assert_eq!(r.org_limits(&acme).unwrap(), OrgLimits::default());
        let n = changes.lock().unwrap().len();

        let lower = LimitsUpdate {
            max_connections: Some(10),
            ..Default::default()
        };
        let l = r.update_org_limits(&acme, lower, false).unwrap();
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.max_message_bytes, 1_048_576, "other fields are kept");
        assert_eq!(r.org_limits(&acme).unwrap(), l);
        assert_eq!(changes.lock().unwrap().len(), n + 1, "listeners are told");

        // Back to the default is a raise now.
        let raise = LimitsUpdate {
            max_connections: Some(11),
            ..Default::default()
        };
        match r.update_org_limits(&acme, raise, false) {
            Err(Error::RaiseNeedsPlatformToken(m)) => assert!(m.contains("max_connections")),
            other => panic!("raise allowed: {other:?}"),
        }
        assert_eq!(r.org_limits(&acme).unwrap().max_connections, 10);
        assert_eq!(
            r.update_org_limits(&acme, raise, true)
                .unwrap()
                .max_connections,
            11
        );
        // A full replacement above the defaults, by the platform.
        let big = OrgLimits {
            max_connections: 200_000,
            ..Default::default()
        };
        assert_eq!(r.set_org_limits(&acme, big, true).unwrap(), big);
        r.set_org_limits(&acme, OrgLimits::default(), false)
            .unwrap();

        // Unknown org: 404; deleting the org deletes its limits.
        let beta = OrgId::try_from("beta").unwrap();
        assert!(matches!(r.org_limits(&beta), Err(Error::NotFound(_))));
        assert!(matches!(
            r.set_org_limits(&beta, big, true),
            Err(Error::NotFound(_))
        ));
        r.set_org_limits(&acme, big, true).unwrap();
        r.delete_org(&acme).unwrap();
        r.create_org("acme", "").unwrap();
        assert_eq!(r.org_limits(&acme).unwrap(), OrgLimits::default());
    }
}
