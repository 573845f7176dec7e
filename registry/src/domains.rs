//! Custom domains and SNI routing (SPEC section 2): which org a TLS server name selects.
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
//! inside another org's domain is a 409. Domains must not overlap the base domain either.
//! Ownership is not proven (no DNS challenge); the platform admin decides who may
//! register what by handing out org tokens.
//!
//! Store layout: `org-domains/<org>` holds the org's list, `domain/<name>` its owner.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::cert;
use crate::error::{Error, Result};
use crate::layout;
use crate::names::{self, OrgId};
use crate::registry::{Change, Registry};
use crate::server_certs::ServerCert;
use crate::store::Op;

/// Custom domains one org may register.
pub const MAX_DOMAINS_PER_ORG: usize = 10;

/// Why a domain name was refused; the message says which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DomainError(String);

impl From<DomainError> for Error {
    fn from(e: DomainError) -> Error {
        Error::BadRequest(e.0)
    }
}

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
fn within(name: &str, domain: &str) -> bool {
    name == domain
        || name
            .strip_suffix(domain)
            .is_some_and(|head| head.ends_with('.'))
}

/// What the index knows about one org.
#[derive(Debug, Clone, Default)]
struct OrgHosts {
    domains: Vec<String>,
    /// Lowercase SAN DNS names of the active server certificate.
    cert_names: Vec<String>,
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

impl Registry {
    /// Replaces `org`'s custom domains with `domains` (duplicates dropped, order kept).
    /// Each must be a valid [`DomainName`] outside the base domain (400), at most
    /// [`MAX_DOMAINS_PER_ORG`] (400), and not overlap another org's domains (409).
    pub fn set_domains(&self, org: &OrgId, domains: &[String]) -> Result<Vec<DomainName>> {
        let mut wanted: Vec<DomainName> = Vec::new();
        for raw in domains {
            let d = DomainName::try_from(raw.as_str())?;
            if within(d.as_str(), &self.domain) || within(&self.domain, d.as_str()) {
                return Err(Error::BadRequest(format!(
                    "invalid domain {raw:?}: it overlaps the platform's base domain {}",
                    self.domain
                )));
            }
            if !wanted.contains(&d) {
                wanted.push(d);
            }
        }
        if wanted.len() > MAX_DOMAINS_PER_ORG {
            return Err(Error::BadRequest(format!(
                "an org may register at most {MAX_DOMAINS_PER_ORG} custom domains"
            )));
        }
        let _g = self.lock();
        self.get_org(org)?;
        for (key, owner) in self.store.scan(layout::DOMAIN_OWNERS)? {
            let taken = key.trim_start_matches(layout::DOMAIN_OWNERS);
            let owner: OrgId =
                serde_json::from_slice(&owner).map_err(|_| Error::Corrupt(key.clone()))?;
            if &owner == org {
                continue;
            }
            if let Some(d) = wanted
                .iter()
                .find(|d| within(d.as_str(), taken) || within(taken, d.as_str()))
            {
                let how = if d.as_str() == taken {
                    "is already registered by"
                } else {
                    "overlaps a domain registered by"
                };
                return Err(Error::Conflict(format!("domain {d} {how} another org")));
            }
        }
        let old = self.stored_domains(org)?;
        let mut ops: Vec<Op> = old
            .iter()
            .filter(|d| !wanted.contains(d))
            .map(|d| Op::Delete(layout::domain_owner(d.as_str())))
            .collect();
        ops.extend(
            wanted
                .iter()
                .map(|d| Self::put(layout::domain_owner(d.as_str()), org)),
        );
        ops.push(if wanted.is_empty() {
            Op::Delete(layout::org_domains(org))
        } else {
            Self::put(layout::org_domains(org), &wanted)
        });
        self.store.apply(ops)?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(wanted)
    }

    /// The org's custom domains.
    pub fn domains(&self, org: &OrgId) -> Result<Vec<DomainName>> {
        self.get_org(org)?;
        self.stored_domains(org)
    }

    fn stored_domains(&self, org: &OrgId) -> Result<Vec<DomainName>> {
        Ok(self
            .get_json(&layout::org_domains(org))?
            .unwrap_or_default())
    }

    /// The org a TLS server name selects (rules in the [module docs](self)), from memory.
    ///
    /// A name under the base domain maps to the org its first label names without
    /// checking that the org exists (the broker finds out when it loads the org's TLS
    /// material); custom domains and certificate names map only to existing orgs.
    pub fn org_for_host(&self, host: &str) -> Option<OrgId> {
        self.hosts.index.load().org_for_host(host, &self.domain)
    }

    /// `org`'s custom domains from the routing index (no store read); what
    /// [`Registry::org_host_names`] builds on.
    pub(crate) fn indexed_domains(&self, org: &OrgId) -> Vec<String> {
        self.hosts
            .index
            .load()
            .orgs
            .get(org)
            .map(|h| h.domains.clone())
            .unwrap_or_default()
    }

    /// What the index needs about `org`, `None` when it does not exist.
    fn read_org_hosts(&self, org: &OrgId) -> Result<Option<OrgHosts>> {
        if self.store.get(&layout::org(org))?.is_none() {
            return Ok(None);
        }
        let domains = self
            .stored_domains(org)?
            .into_iter()
            .map(String::from)
            .collect();
        let active = self
            .scan_json::<ServerCert>(&layout::server_certs(org))?
            .into_iter()
            .find(|c| c.active);
        let cert_names = match active {
            Some(c) => {
                let leaf = cert::read_chain(c.pem.as_bytes())?;
                cert::details(&leaf[0])?
                    .dns_names
                    .iter()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .collect()
            }
            None => Vec::new(),
        };
        Ok(Some(OrgHosts {
            domains,
            cert_names,
        }))
    }

    /// Builds the routing index from the store (start-up).
    pub(crate) fn load_hosts(&self) -> Result<()> {
        let mut orgs = HashMap::new();
        for org in self.list_orgs()? {
            if let Some(h) = self.read_org_hosts(&org.id)? {
                orgs.insert(org.id, h);
            }
        }
        self.hosts
            .index
            .store(HostIndex::new(orgs, &self.domain).into());
        Ok(())
    }

    /// Re-reads the changed org into the routing index. Called by `notify` after every
    /// committed change, before the listeners.
    pub(crate) fn refresh_hosts(&self, change: &Change) {
        let Change::Org(org) = change;
        let _g = self.hosts.refresh.lock().unwrap_or_else(|e| e.into_inner());
        match self.read_org_hosts(org) {
            Ok(hosts) => {
                let next = self.hosts.index.load().with_org(org, hosts, &self.domain);
                self.hosts.index.store(next.into());
            }
            // The old entry stays: the org keeps its previous routing until its next change.
            Err(e) => tracing::error!(%org, cause = %e, "could not refresh SNI routing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::registry;

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

    #[test]
    fn set_domains_validates_and_routes() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let beta = r.create_org("beta", "").unwrap().id;
        let set = |o: &OrgId, d: &[&str]| {
            r.set_domains(o, &d.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };

        let got = set(&acme, &["IoT.example.com", "iot.example.com", "acme.test"]).unwrap();
        assert_eq!(got.len(), 2, "normalized duplicates are dropped");
        assert_eq!(r.domains(&acme).unwrap(), got);
        assert_eq!(
            r.org_host_names(&acme),
            [
                "acme.messaging.localhost",
                "acme.iot.example.com",
                "acme.acme.test"
            ]
        );
        assert_eq!(r.org_for_host("acme.iot.example.com"), Some(acme.clone()));

        for bad in [
            &["*.example.com"][..],
            &["messaging.localhost"],
            &["x.messaging.localhost"],
            &["localhost"],
        ] {
            assert!(
                matches!(set(&beta, bad), Err(Error::BadRequest(_))),
                "{bad:?}"
            );
        }
        let eleven: Vec<String> = (0..11).map(|i| format!("d{i}.example.net")).collect();
        assert!(matches!(
            r.set_domains(&beta, &eleven),
            Err(Error::BadRequest(_))
        ));
        for taken in [
            &["iot.example.com"][..],
            &["a.iot.example.com"],
            &["example.com"],
        ] {
            assert!(
                matches!(set(&beta, taken), Err(Error::Conflict(_))),
                "{taken:?}"
            );
        }
        assert!(
            r.domains(&beta).unwrap().is_empty(),
            "a refused change writes nothing"
        );
        assert!(matches!(
            r.set_domains(&org("ghost"), &[]),
            Err(Error::NotFound(_))
        ));

        // Replacing releases what was dropped; the other org may then take it.
        set(&acme, &["acme.test"]).unwrap();
        assert_eq!(r.org_for_host("acme.iot.example.com"), None);
        set(&beta, &["iot.example.com"]).unwrap();
        assert_eq!(r.org_for_host("beta.iot.example.com"), Some(beta.clone()));

        // Routing survives a reopen; deleting the org releases its domains.
        drop(r);
        let r = registry(dir.path());
        assert_eq!(r.org_for_host("beta.iot.example.com"), Some(beta.clone()));
        r.delete_org(&beta).unwrap();
        assert_eq!(r.org_for_host("beta.iot.example.com"), None);
        assert!(r
            .store
            .scan("domain/")
            .unwrap()
            .iter()
            .all(|(k, _)| k != "domain/iot.example.com"));
        r.set_domains(&acme, &["iot.example.com".into()]).unwrap();
    }

    #[test]
    fn active_server_cert_names_route_and_self_signed_covers_custom_domains() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        r.set_domains(&acme, &["iot.example.com".into()]).unwrap();
        let cert = r.create_self_signed(&acme).unwrap();
        assert_eq!(
            cert.details.dns_names,
            ["acme.messaging.localhost", "acme.iot.example.com"]
        );
        assert_eq!(r.org_for_host("acme.iot.example.com"), Some(acme.clone()));
        assert_eq!(r.org_for_host("mqtt.acme.test"), None);

        // An active certificate naming an extra host routes it (stored directly here; the
        // API's upload goes through the same notification).
        let (der, key) = r.self_signed(vec!["mqtt.acme.test".into()]).unwrap();
        let rec = ServerCert {
            sealed_key: r.key.seal(&Registry::seal_context("acme", &cert.id), &key),
            id: cert.id.clone(),
            org: acme.clone(),
            active: true,
            origin: "uploaded".into(),
            created_at: cert.created_at,
            pem: cert::to_pem(&der),
        };
        r.store
            .apply(vec![Registry::put(
                layout::server_cert(&acme, &cert.id),
                &rec,
            )])
            .unwrap();
        r.notify(Change::Org(acme.clone()));
        assert_eq!(r.org_for_host("MQTT.acme.test."), Some(acme.clone()));
        r.delete_org(&acme).unwrap();
        assert_eq!(r.org_for_host("mqtt.acme.test"), None);
    }
}
