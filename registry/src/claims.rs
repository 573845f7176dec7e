//! Host name ownership: a host name belongs to the first org that claims it
//! (docs/security.md, "Host names belong to one org").
//!
//! Why: SNI routing ([`crate::domains`]) refuses a name that two orgs claim — for both —
//! and ignores a certificate name under another org's custom domain. Without a check at
//! write time, any org token could take another org's host name offline by claiming it
//! too. So every write that claims names checks them here, under the registry's write
//! lock and against the store (not the routing index, which is refreshed only after the
//! write), so of two concurrent claims exactly one wins.
//!
//! What an org claims:
//!
//! - `<org>.<base domain>` and every name under it (implicitly, for every org id, even
//!   one not created yet); the base domain itself is the platform's;
//! - each of its custom domains, and every name under it;
//! - each DNS name on the subjectAltName of its *active* server certificate: an exact
//!   name claims itself, a wildcard `*.<suffix>` every name one label under `<suffix>`
//!   (inactive certificates claim nothing).
//!
//! A write whose claims overlap another org's claims is refused with
//! [`Error::NameTaken`] (409 `name_taken`): registering a custom domain, activating a
//! server certificate, and — so the refusal comes early — uploading one, completing a
//! CSR, generating a self-signed one and creating a CSR. The message names the host, never
//! the other org.

use crate::cert;
use crate::domains::within;
use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::registry::Registry;
use crate::server_certs::ServerCert;

/// One claim on a part of the DNS name space (names lowercase, no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claim {
    /// A custom domain: the name and every name under it.
    Domain(String),
    /// An exact DNS name of a server certificate.
    Exact(String),
    /// A wildcard `*.<suffix>` of a server certificate: every name one label under the
    /// suffix (held here without the `*.`).
    Wildcard(String),
}

/// `name` without its first label.
fn parent(name: &str) -> Option<&str> {
    name.split_once('.').map(|(_, rest)| rest)
}

impl Claim {
    /// The claim of a subjectAltName DNS name.
    pub(crate) fn from_san(name: &str) -> Claim {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match name.strip_prefix("*.") {
            Some(suffix) => Claim::Wildcard(suffix.to_owned()),
            None => Claim::Exact(name),
        }
    }

    /// Whether some host name is claimed by both.
    fn overlaps(&self, other: &Claim) -> bool {
        use Claim::*;
        match (self, other) {
            (Domain(a), Domain(b)) => within(a, b) || within(b, a),
            (Domain(d), Exact(n)) | (Exact(n), Domain(d)) => within(n, d),
            (Domain(d), Wildcard(s)) | (Wildcard(s), Domain(d)) => {
                within(s, d) || parent(d) == Some(s)
            }
            (Exact(a), Exact(b)) => a == b,
            (Exact(n), Wildcard(s)) | (Wildcard(s), Exact(n)) => parent(n) == Some(s),
            (Wildcard(a), Wildcard(b)) => a == b,
        }
    }

    /// Whether the claim reaches under the base domain `base` outside `own`
    /// (`<org>.<base>`): names there belong to the org they name, `base` to the platform.
    fn outside_own_base(&self, base: &str, own: &str) -> bool {
        match self {
            // Custom domains never overlap the base domain (`wanted_domains`).
            Claim::Domain(_) => false,
            Claim::Exact(n) => within(n, base) && !within(n, own),
            Claim::Wildcard(s) => (within(s, base) && !within(s, own)) || parent(base) == Some(s),
        }
    }

    /// The claim as the org wrote it, for messages.
    fn describe(&self) -> String {
        match self {
            Claim::Domain(d) => format!("domain {d}"),
            Claim::Exact(n) => format!("host name {n}"),
            Claim::Wildcard(s) => format!("wildcard *.{s}"),
        }
    }
}

/// The lowercase subjectAltName DNS names of the leaf of a PEM chain.
pub(crate) fn leaf_dns_names(pem: &str) -> Result<Vec<String>> {
    let chain = cert::read_chain(pem.as_bytes())?;
    dns_names(&chain[0])
}

/// The lowercase subjectAltName DNS names (no trailing dot) of a DER certificate.
pub(crate) fn dns_names(der: &[u8]) -> Result<Vec<String>> {
    Ok(cert::details(der)?
        .dns_names
        .iter()
        .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
        .collect())
}

impl Registry {
    /// Every claim of every org but `org`, from the store. Call under the write lock.
    fn claims_of_others(&self, org: &OrgId) -> Result<Vec<Claim>> {
        let mut claims = Vec::new();
        for (key, owner) in self.store.scan(layout::DOMAIN_OWNERS)? {
            let owner: OrgId =
                serde_json::from_slice(&owner).map_err(|_| Error::Corrupt(key.clone()))?;
            if &owner != org {
                let domain = key.trim_start_matches(layout::DOMAIN_OWNERS);
                claims.push(Claim::Domain(domain.to_owned()));
            }
        }
        for c in self.scan_json::<ServerCert>(layout::SERVER_CERTS)? {
            if c.active && &c.org != org {
                claims.extend(leaf_dns_names(&c.pem)?.iter().map(|n| Claim::from_san(n)));
            }
        }
        Ok(claims)
    }

    /// 409 `name_taken` when one of `wanted` names a host another org owns (see the
    /// module docs). Call under the write lock, in the same critical section as the write
    /// that makes the claim.
    pub(crate) fn ensure_unclaimed(&self, org: &OrgId, wanted: &[Claim]) -> Result<()> {
        let own = format!("{org}.{}", self.domain);
        if let Some(c) = wanted
            .iter()
            .find(|c| c.outside_own_base(&self.domain, &own))
        {
            return Err(Error::NameTaken(format!(
                "{} names a host of another org: under {} an org may use only {own} and \
                 the names under it",
                c.describe(),
                self.domain
            )));
        }
        let others = self.claims_of_others(org)?;
        for c in wanted {
            if let Some(theirs) = others.iter().find(|o| c.overlaps(o)) {
                let how = if theirs == c {
                    "is already used by another org"
                } else {
                    "overlaps a host name already used by another org"
                };
                return Err(Error::NameTaken(format!("{} {how}", c.describe())));
            }
        }
        Ok(())
    }

    /// [`Self::ensure_unclaimed`] for the DNS names of a server certificate's leaf.
    pub(crate) fn ensure_names_unclaimed(&self, org: &OrgId, dns_names: &[String]) -> Result<()> {
        let wanted: Vec<Claim> = dns_names.iter().map(|n| Claim::from_san(n)).collect();
        self.ensure_unclaimed(org, &wanted)
    }
}

#[cfg(test)]
mod tests;
