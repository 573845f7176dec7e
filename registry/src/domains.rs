//! Custom domains and SNI routing (docs/contract.md, section 1): which org a TLS server name selects.
//!
//! A host name selects an org by one of three rules, tried in this order:
//!
//! 1. `<org>.<base domain>` — the org named by the first label;
//! 2. `<org>.<custom domain>` — where the org registered that custom domain
//!    (`PUT /orgs/{org}/domains`); the first label must be the owning org, so
//!    `beta.iot.example.com` never selects `acme` nor `beta` when acme owns the domain;
//! 3. an exact DNS name on the SAN of the org's *active* server certificate (wildcards
//!    excluded), unless the name is under the base domain, under another org's custom
//!    domain, or on the active certificates of two orgs (then it selects none).
//!
//! Rule 1 needs no state. Rules 2 and 3 are answered from an in-memory [`HostIndex`]
//! behind an [`ArcSwap`], because the lookup runs on every TLS handshake: no store read,
//! no lock. The index is rebuilt for one org whenever that org changes (the registry
//! refreshes it in `notify`, before any listener runs), so when the admin API answers,
//! the next handshake already routes by the new domains.
//!
//! A custom domain belongs to one org: registering a domain that equals, contains or is
//! inside a name another org owns is a 409 `name_taken` ([`crate::claims`]). Domains must
//! not overlap the base domain either.
//! Ownership is not proven (no DNS challenge); the platform admin decides who may
//! register what by handing out org tokens.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::names::{self, OrgId};

/// Custom domains one org may register.
pub const MAX_DOMAINS_PER_ORG: usize = 10;

/// Why a domain name was refused; the message says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(String);

/// A custom domain: a DNS name of at least two labels, each 1–63 characters
/// `[a-z0-9-]` not starting or ending with `-`, at most 253 characters, no wildcard,
/// not an IP address. Names are case-insensitive, so construction lowercases and drops
/// a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DomainName(String);

impl TryFrom<&str> for DomainName {
    type Error = DomainError;
    fn try_from(raw: &str) -> Result<Self, DomainError> {
        let s = raw.trim_end_matches('.').to_ascii_lowercase();
        let bad = |why: &str| Err(DomainError(format!("invalid domain {raw:?}: {why}")));
        if s.contains('*') {
            return bad("wildcards are not allowed; register the domain itself and devices connect to <org>.<domain>");
        }
        if s.is_empty() || s.len() > 253 {
            return bad("a DNS name is 1-253 characters");
        }
        let labels: Vec<&str> = s.split('.').collect();
        if labels.len() < 2 {
            return bad("a custom domain has at least two labels (example.com)");
        }
        for l in &labels {
            let chars_ok = l
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !(1..=63).contains(&l.len()) || !chars_ok || l.starts_with('-') || l.ends_with('-') {
                return bad(
                    "each label is 1-63 characters a-z 0-9 -, not starting or ending with -",
                );
            }
        }
        if labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
        {
            return bad("an IP address is not a domain");
        }
        Ok(DomainName(s))
    }
}

impl TryFrom<String> for DomainName {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, DomainError> {
        DomainName::try_from(s.as_str())
    }
}

impl From<DomainName> for String {
    fn from(d: DomainName) -> String {
        d.0
    }
}

impl AsRef<str> for DomainName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl DomainName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// Whether `name` is `domain` or a name under it.
pub(crate) fn within(name: &str, domain: &str) -> bool {
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|head| head.ends_with('.'))
}
/// What the index knows about one org.
#[derive(Debug, Clone, Default)]
pub(crate) struct OrgHosts {
    pub(crate) domains: Vec<String>,
    /// Lowercase SAN DNS names of the active server certificate.
    pub(crate) cert_names: Vec<String>,
}

/// SNI routing state for rules 2 and 3 (see the module docs), derived from every org's
/// [`OrgHosts`].
#[derive(Debug, Default)]
struct HostIndex {
    orgs: HashMap<OrgId, OrgHosts>,
    domain_owner: HashMap<String, OrgId>,
    exact: HashMap<String, OrgId>,
}

impl HostIndex {
    fn new(orgs: HashMap<OrgId, OrgHosts>, base: &str) -> HostIndex {
        let mut domain_owner = HashMap::new();
        let mut claims: HashMap<&str, HashSet<&OrgId>> = HashMap::new();
        for (org, hosts) in &orgs {
            for d in &hosts.domains {
                domain_owner.insert(d.clone(), org.clone());
            }
            for n in &hosts.cert_names {
                if !n.starts_with("*.") && !within(n, base) {
                    claims.entry(n).or_default().insert(org);
                }
            }
        }
        let mut exact = HashMap::new();
        for (name, owners) in claims {
            let mut owners = owners.into_iter();
            let (Some(org), None) = (owners.next(), owners.next()) else {
                tracing::warn!(
                    name,
                    "host name is on the server certificates of several orgs; it selects none"
                );
                continue;
            };
            let foreign = enclosing_owner(name, &domain_owner).is_some_and(|o| o != org);
            if !foreign {
                exact.insert(name.to_owned(), org.clone());
            }
        }
        HostIndex {
            orgs,
            domain_owner,
            exact,
        }
    }

    /// This index with `org`'s entry replaced (`None`: the org is gone).
    fn with_org(&self, org: &OrgId, hosts: Option<OrgHosts>, base: &str) -> HostIndex {
        let mut orgs = self.orgs.clone();
        match hosts {
            Some(h) => orgs.insert(org.clone(), h),
            None => orgs.remove(org),
        };
        HostIndex::new(orgs, base)
    }

    fn org_for_host(&self, host: &str, base: &str) -> Option<OrgId> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(org) = names::org_from_host(&host, base, []) {
            return Some(org);
        }
        if let Some((label, rest)) = host.split_once('.') {
            if let Some(owner) = self.domain_owner.get(rest) {
                if owner.as_str() == label {
                    return Some(owner.clone());
                }
            }
        }
        self.exact.get(&host).cloned()
    }
}

/// The owner of the custom domain `name` is, or is under.
fn enclosing_owner<'a>(name: &str, owners: &'a HashMap<String, OrgId>) -> Option<&'a OrgId> {
    let mut rest = name;
    loop {
        if let Some(o) = owners.get(rest) {
            return Some(o);
        }
        rest = rest.split_once('.')?.1;
    }
}

/// The registry's SNI routing index: read lock-free, replaced whole on change.
#[derive(Default)]
pub(crate) struct Hosts {
    index: ArcSwap<HostIndex>,
    /// Serializes refreshes, so the last one to swap also read the store last.
    refresh: Mutex<()>,
}

impl Hosts {
    /// The org `host` selects (rules in the module docs), from memory.
    pub(crate) fn org_for_host(&self, host: &str, base: &str) -> Option<OrgId> {
        self.index.load().org_for_host(host, base)
    }

    /// `org`'s custom domains as the index has them.
    pub(crate) fn domains_of(&self, org: &OrgId) -> Vec<String> {
        self.index
            .load()
            .orgs
            .get(org)
            .map(|h| h.domains.clone())
            .unwrap_or_default()
    }

    /// Replaces the whole index (start-up).
    pub(crate) fn load(&self, orgs: HashMap<OrgId, OrgHosts>, base: &str) {
        self.index.store(HostIndex::new(orgs, base).into());
    }

    /// Replaces `org`'s entry with what `read` returns (`None`: the org is gone). `read`
    /// runs under the refresh lock, so the last refresh to swap also read last; when it
    /// fails, the index is left as it was.
    pub(crate) fn refresh<E>(
        &self,
        org: &OrgId,
        base: &str,
        read: impl FnOnce() -> Result<Option<OrgHosts>, E>,
    ) -> Result<(), E> {
        let _g = self.refresh.lock().unwrap_or_else(|e| e.into_inner());
        let hosts = read()?;
        let next = self.index.load().with_org(org, hosts, base);
        self.index.store(next.into());
        Ok(())
    }
}

/// The domains an org asks for, checked: each a valid [`DomainName`] outside the base
/// domain `base`, duplicates dropped (order kept), at most [`MAX_DOMAINS_PER_ORG`].
pub(crate) fn wanted_domains(
    requested: &[String],
    base: &str,
) -> Result<Vec<DomainName>, DomainError> {
    let mut wanted: Vec<DomainName> = Vec::new();
    for raw in requested {
        let d = DomainName::try_from(raw.as_str())?;
        if within(d.as_str(), base) || within(base, d.as_str()) {
            return Err(DomainError(format!(
                "invalid domain {raw:?}: it overlaps the platform's base domain {base}"
            )));
        }
        if !wanted.contains(&d) {
            wanted.push(d);
        }
    }
    if wanted.len() > MAX_DOMAINS_PER_ORG {
        return Err(DomainError(format!(
            "an org may register at most {MAX_DOMAINS_PER_ORG} custom domains"
        )));
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "messaging.localhost";

    fn org(s: &str) -> OrgId {
        OrgId::try_from(s).unwrap()
    }

    fn hosts(domains: &[&str], cert_names: &[&str]) -> OrgHosts {
        OrgHosts {
            domains: domains.iter().map(|s| s.to_string()).collect(),
            cert_names: cert_names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn domain_names() {
        for ok in [
            "iot.example.com",
            "a.b",
            "xn--bcher-kva.example",
            "a-1.example.com",
        ] {
            assert_eq!(DomainName::try_from(ok).unwrap().as_str(), ok);
        }
        assert_eq!(
            DomainName::try_from("IoT.Example.COM.").unwrap().as_str(),
            "iot.example.com"
        );
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        for bad in [
            "",
            "com",
            "*.example.com",
            "-a.example.com",
            "a-.example.com",
            "a..example.com",
            "a_b.example.com",
            "exa mple.com",
            "bücher.example",
            "10.0.0.1",
            &long_label,
            &long_name,
        ] {
            assert!(DomainName::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn within_is_label_aligned() {
        assert!(within("iot.example.com", "example.com"));
        assert!(within("example.com", "example.com"));
        assert!(!within("myexample.com", "example.com"));
        assert!(!within("example.com", "iot.example.com"));
    }

    #[test]
    fn index_routes_by_the_three_rules() {
        let idx = HostIndex::new(
            HashMap::from([
                (
                    org("acme"),
                    hosts(
                        &["iot.example.com"],
                        &[
                            "*.iot.example.com",
                            "mqtt.acme.test",
                            "shared.test",
                            "acme.messaging.localhost",
                            "x.beta.test",
                            "y.iot.example.com",
                        ],
                    ),
                ),
                (
                    org("beta"),
                    hosts(&["beta.test"], &["shared.test", "other.beta.test"]),
                ),
            ]),
            BASE,
        );
        let o = |h: &str| idx.org_for_host(h, BASE).map(|o| o.to_string());
        // 1. base domain, whether or not the org exists.
        assert_eq!(o("acme.messaging.localhost").as_deref(), Some("acme"));
        assert_eq!(o("nobody.messaging.localhost").as_deref(), Some("nobody"));
        // 2. <owner>.<custom>, case-insensitive, trailing dot ignored.
        assert_eq!(o("acme.iot.example.com").as_deref(), Some("acme"));
        assert_eq!(o("ACME.IoT.example.com.").as_deref(), Some("acme"));
        assert_eq!(o("beta.beta.test").as_deref(), Some("beta"));
        assert_eq!(o("beta.iot.example.com"), None, "not the domain's owner");
        assert_eq!(o("iot.example.com"), None);
        // 3. exact certificate names: not wildcards, not another org's domain, not shared.
        assert_eq!(o("mqtt.acme.test").as_deref(), Some("acme"));
        assert_eq!(o("y.iot.example.com").as_deref(), Some("acme"));
        assert_eq!(o("other.beta.test").as_deref(), Some("beta"));
        assert_eq!(o("x.beta.test"), None, "under beta's domain");
        assert_eq!(o("shared.test"), None, "claimed by two orgs");
        assert_eq!(o("z.iot.example.com"), None);
        assert_eq!(o("unknown.example.org"), None);
        assert_eq!(o(""), None);

        let idx = idx.with_org(&org("acme"), None, BASE);
        assert_eq!(idx.org_for_host("acme.iot.example.com", BASE), None);
        assert_eq!(
            idx.org_for_host("shared.test", BASE).map(|o| o.to_string()),
            Some("beta".into())
        );
    }
}
