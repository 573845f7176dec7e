//! Custom domains as an org resource, and the registry's side of SNI routing: storing
//! an org's domains and keeping the routing index in step with the store. The rules
//! and the index itself are in [`crate::domains`], which knows nothing of the registry.
//!
//! Store layout: `org-domains/<org>` holds the org's list, `domain/<name>` its owner.

use std::collections::HashMap;

use crate::claims::{leaf_dns_names, Claim};
use crate::domains::{wanted_domains, DomainName, OrgHosts};
use crate::error::Result;
use crate::layout;
use crate::names::OrgId;
use crate::registry::{Change, Registry};
use crate::server_certs::ServerCert;
use crate::store::Op;

impl Registry {
    /// Replaces `org`'s custom domains with `domains` (duplicates dropped, order kept).
    /// Each must be a valid [`DomainName`] outside the base domain (400), at most
    /// [`MAX_DOMAINS_PER_ORG`](crate::domains::MAX_DOMAINS_PER_ORG) (400), and not
    /// overlap a name another org owns (409 `name_taken`, [`crate::claims`]).
    pub fn set_domains(&self, org: &OrgId, domains: &[String]) -> Result<Vec<DomainName>> {
        let wanted = wanted_domains(domains, &self.domain)?;
        let _g = self.lock();
        self.get_org(org)?;
        let claims: Vec<Claim> = wanted
            .iter()
            .map(|d| Claim::Domain(d.as_str().to_owned()))
            .collect();
        self.ensure_unclaimed(org, &claims)?;
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

    /// The org a TLS server name selects (rules in [`crate::domains`]), from memory.
    ///
    /// A name under the base domain maps to the org its first label names without
    /// checking that the org exists (the broker finds out when it loads the org's TLS
    /// material); custom domains and certificate names map only to existing orgs.
    pub fn org_for_host(&self, host: &str) -> Option<OrgId> {
        self.hosts.org_for_host(host, &self.domain)
    }

    /// The host names a server certificate of `org` may cover, one of which it must:
    /// `<org>.<domain>`, then `<org>.<custom>` for each of the org's custom domains
    /// (from the routing index, no store read).
    pub fn org_host_names(&self, org: &OrgId) -> Vec<String> {
        let mut names = vec![format!("{org}.{}", self.domain)];
        names.extend(
            self.hosts
                .domains_of(org)
                .iter()
                .map(|d| format!("{org}.{d}")),
        );
        names
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
            Some(c) => leaf_dns_names(&c.pem)?,
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
        self.hosts.load(orgs, &self.domain);
        Ok(())
    }

    /// Re-reads the changed org into the routing index. Called by `notify` after every
    /// committed change, before the listeners.
    pub(crate) fn refresh_hosts(&self, change: &Change) {
        let Change::Org(org) = change;
        if let Err(e) = self
            .hosts
            .refresh(org, &self.domain, || self.read_org_hosts(org))
        {
            // The old entry stays: the org keeps its previous routing until its next change.
            tracing::error!(%org, cause = %e, "could not refresh SNI routing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cert;
    use crate::error::Error;
    use crate::registry::tests::registry;

    fn org(s: &str) -> OrgId {
        OrgId::try_from(s).unwrap()
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
                matches!(set(&beta, taken), Err(Error::NameTaken(_))),
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
