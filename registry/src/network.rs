//! Per-org network policy: which client addresses may reach the org at all
//! (`/orgs/{org}/network-policy`). The broker applies it right after SNI has named the
//! org, before any certificate work (TLS alert `access_denied`), and at CONNECT on the
//! plain MQTT listener.
//!
//! Rules: a deny entry that matches refuses; else an empty allow list admits every
//! address, a non-empty one only the addresses it covers. Entries are CIDRs
//! (`203.0.113.0/24`, `2001:db8::/32`) or single addresses (`198.51.100.7`, taken as
//! `/32` or `/128`); host bits are cleared (`10.0.0.9/8` is `10.0.0.0/8`). IPv4-mapped
//! IPv6 client addresses are matched as IPv4. An allow entry wholly inside a deny entry
//! could never admit anyone, so such a policy is refused (422 `cidr_overlap`) rather
//! than stored with a dead entry.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cert::{CertError, Rule};
use crate::error::Result;
use crate::layout;
use crate::names::OrgId;
use crate::registry::{Change, Registry};

/// The most entries each list may have.
pub const MAX_ENTRIES: usize = 1000;

/// An org's network policy, as the API shows and takes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"allow": ["203.0.113.0/24"], "deny": ["198.51.100.7/32"]})))]
#[serde(deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Networks admitted; empty: every address not denied.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Networks refused, whatever `allow` says.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkRefusal {
    /// A deny entry matched.
    Denied,
    /// The allow list is not empty and no entry matched.
    NotAllowed,
}

impl NetworkRefusal {
    /// The `reason` label of `certmq_network_refusals_total`.
    pub fn label(self) -> &'static str {
        match self {
            NetworkRefusal::Denied => "denied",
            NetworkRefusal::NotAllowed => "not_allowed",
        }
    }
}

/// A parsed network policy, as the broker checks it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRules {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl NetworkRules {
    /// Whether `addr` may connect.
    pub fn check(&self, addr: IpAddr) -> std::result::Result<(), NetworkRefusal> {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&addr)) {
            return Err(NetworkRefusal::Denied);
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(&addr)) {
            return Err(NetworkRefusal::NotAllowed);
        }
        Ok(())
    }

    /// Whether every address is admitted (no entries).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

fn parse_entry(list: &str, i: usize, s: &str) -> std::result::Result<IpNet, CertError> {
    let t = s.trim();
    let net = t
        .parse::<IpNet>()
        .or_else(|_| t.parse::<IpAddr>().map(IpNet::from));
    net.map(|n| n.trunc()).map_err(|_| {
        CertError::new(
            Rule::InvalidCidr,
            format!(
                "{list}[{i}] {s:?} is not an IP network such as 203.0.113.0/24 or 2001:db8::/32"
            ),
        )
    })
}

impl NetworkPolicy {
    /// Parses and checks every entry: the first bad one is named.
    pub fn rules(&self) -> Result<NetworkRules> {
        for (name, list) in [("allow", &self.allow), ("deny", &self.deny)] {
            if list.len() > MAX_ENTRIES {
                return Err(crate::Error::BadRequest(format!(
                    "{name} has {} entries; at most {MAX_ENTRIES}",
                    list.len()
                )));
            }
        }
        let parse = |name, list: &Vec<String>| {
            list.iter()
                .enumerate()
                .map(|(i, s)| parse_entry(name, i, s))
                .collect::<std::result::Result<Vec<_>, _>>()
        };
        let allow = parse("allow", &self.allow)?;
        let deny = parse("deny", &self.deny)?;
        for (i, a) in allow.iter().enumerate() {
            if let Some((j, d)) = deny.iter().enumerate().find(|(_, d)| d.contains(a)) {
                return Err(CertError::new(
                    Rule::CidrOverlap,
                    format!(
                        "allow[{i}] {a} lies wholly inside deny[{j}] {d}, so it could never admit anyone; remove one of them"
                    ),
                )
                .into());
            }
        }
        Ok(NetworkRules { allow, deny })
    }
}

impl Registry {
    pub fn network_policy(&self, org: &OrgId) -> Result<NetworkPolicy> {
        self.get_org(org)?;
        Ok(self
            .get_json(&layout::network_policy(org))?
            .unwrap_or_default())
    }

    /// Replaces the org's network policy after checking every entry (a bad one changes
    /// nothing); entries are stored in their canonical form. Live sessions from
    /// addresses it now refuses are closed by the broker.
    pub fn set_network_policy(&self, org: &OrgId, policy: NetworkPolicy) -> Result<NetworkPolicy> {
        let rules = policy.rules()?;
        let canonical = NetworkPolicy {
            allow: rules.allow.iter().map(ToString::to_string).collect(),
            deny: rules.deny.iter().map(ToString::to_string).collect(),
        };
        let _g = self.lock();
        self.get_org(org)?;
        self.store
            .apply(vec![Self::put(layout::network_policy(org), &canonical)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(canonical)
    }

    /// The org's network rules, for the broker (stored entries always parse).
    pub fn network_rules(&self, org: &OrgId) -> Result<NetworkRules> {
        let policy: NetworkPolicy = self
            .get_json(&layout::network_policy(org))?
            .unwrap_or_default();
        policy.rules()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], deny: &[&str]) -> NetworkPolicy {
        NetworkPolicy {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            deny: deny.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn deny_wins_then_allow_decides() {
        let r = policy(
            &["203.0.113.0/24", "10.0.0.0/8"],
            &["10.1.2.3", "2001:db8::/32"],
        )
        .rules()
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(r.check(ip("203.0.113.9")), Ok(()));
        assert_eq!(r.check(ip("10.9.9.9")), Ok(()));
        assert_eq!(r.check(ip("10.1.2.3")), Err(NetworkRefusal::Denied));
        assert_eq!(r.check(ip("192.0.2.1")), Err(NetworkRefusal::NotAllowed));
        assert_eq!(r.check(ip("::ffff:203.0.113.9")), Ok(()));
        assert_eq!(r.check(ip("2001:db8::1")), Err(NetworkRefusal::Denied));
        assert!(NetworkRules::default().check(ip("192.0.2.1")).is_ok());
        let deny_only = policy(&[], &["192.0.2.0/24"]).rules().unwrap();
        assert!(deny_only.check(ip("198.51.100.1")).is_ok());
    }

    #[test]
    fn bad_entries_are_named() {
        let e = policy(&["10.0.0.0/8", "10.0.0.0/33"], &[])
            .rules()
            .unwrap_err();
        match e {
            crate::Error::Rejected(e) => {
                assert_eq!(e.rule, Rule::InvalidCidr);
                assert!(e.message.contains("allow[1]"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        let e = policy(&["10.1.0.0/16"], &["10.0.0.0/8"])
            .rules()
            .unwrap_err();
        assert!(matches!(e, crate::Error::Rejected(e) if e.rule == Rule::CidrOverlap));
        assert!(policy(&["10.0.0.0/8"], &["10.1.0.0/16"]).rules().is_ok());
    }

    #[test]
    fn a_bad_policy_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let good = r
            .set_network_policy(&acme, policy(&["10.0.0.9/8"], &[]))
            .unwrap();
        assert_eq!(good.allow, ["10.0.0.0/8"]);
        assert!(r.set_network_policy(&acme, policy(&["nope"], &[])).is_err());
        assert_eq!(r.network_policy(&acme).unwrap(), good);
    }
}
