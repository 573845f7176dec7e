//! The store's key layout: every key the registry reads or writes is built here, and
//! [`org_data`] lists every place an org's data lives.
//!
//! Keeping the layout in one module is what lets [`Registry::delete_org`] remove an org
//! completely: it deletes whatever [`org_data`] names, so a resource whose keys are added
//! here and to that list is deleted with its org without touching `delete_org`.
//!
//! Org ids are `[a-z][a-z0-9]*` (no `/`), so `ca/<org>/` never matches another org's
//! keys; the audit log of the platform is `_platform`, which no org id can be.
//!
//! [`Registry::delete_org`]: crate::Registry::delete_org

use crate::names::{Identity, OrgId};

/// The platform default server certificate (one record, not per org).
pub(crate) const PLATFORM_CERT: &str = "platform/server";

/// Every org's CSRs.
pub(crate) const CSRS: &str = "csr/";

/// Where records holding sealed private keys live: the platform certificate, every
/// org's server certificates, CSRs and client certificates.
pub(crate) const SEALED: [&str; 4] = [PLATFORM_CERT, SERVER_CERTS, CSRS, CLIENT_CERTS];

/// Every org record.
pub(crate) const ORGS: &str = "org/";

pub(crate) fn org(org: &OrgId) -> String {
    format!("{ORGS}{org}")
}

pub(crate) fn policy(org: &OrgId) -> String {
    format!("policy/{org}")
}

/// The org's limits (one record; absent: the defaults).
pub(crate) fn limits(org: &OrgId) -> String {
    format!("limits/{org}")
}

pub(crate) fn cas(org: &OrgId) -> String {
    format!("ca/{org}/")
}

pub(crate) fn ca(org: &OrgId, id: &str) -> String {
    format!("{}{id}", cas(org))
}

/// Every org's server certificates.
pub(crate) const SERVER_CERTS: &str = "srv/";

pub(crate) fn server_certs(org: &OrgId) -> String {
    format!("{SERVER_CERTS}{org}/")
}

pub(crate) fn server_cert(org: &OrgId, id: &str) -> String {
    format!("{}{id}", server_certs(org))
}

/// Every org's client certificates (identities for outgoing connections).
pub(crate) const CLIENT_CERTS: &str = "cli/";

pub(crate) fn client_certs(org: &OrgId) -> String {
    format!("{CLIENT_CERTS}{org}/")
}

pub(crate) fn client_cert(org: &OrgId, id: &str) -> String {
    format!("{}{id}", client_certs(org))
}

/// The org's outgoing destinations (bridges and webhooks).
pub(crate) fn destinations(org: &OrgId) -> String {
    format!("dest/{org}/")
}

pub(crate) fn destination(org: &OrgId, id: &str) -> String {
    format!("{}{id}", destinations(org))
}

pub(crate) fn csrs(org: &OrgId) -> String {
    format!("{CSRS}{org}/")
}

pub(crate) fn csr(org: &OrgId, id: &str) -> String {
    format!("{}{id}", csrs(org))
}

pub(crate) fn blocked_devices(org: &OrgId) -> String {
    format!("blocked/{org}/")
}

pub(crate) fn blocked_device(org: &OrgId, identity: &Identity) -> String {
    format!("{}{identity}", blocked_devices(org))
}

pub(crate) fn crls(org: &OrgId) -> String {
    format!("crl/{org}/")
}

pub(crate) fn crl(org: &OrgId, id: &str) -> String {
    format!("{}{id}", crls(org))
}

pub(crate) fn device_tokens(org: &OrgId) -> String {
    format!("devtoken/{org}/")
}

pub(crate) fn device_token(org: &OrgId, identity: &Identity) -> String {
    format!("{}{identity}", device_tokens(org))
}

pub(crate) fn tokens(org: &OrgId) -> String {
    format!("token/{org}/")
}

pub(crate) fn token(org: &OrgId, id: &str) -> String {
    format!("{}{id}", tokens(org))
}

/// Token id → org, so a presented token is found without knowing its org.
pub(crate) fn token_index(id: &str) -> String {
    format!("token-id/{id}")
}

/// The entries of an audit log (`log`: an org id or the platform log's name).
pub(crate) fn audit_entries(log: &str) -> String {
    format!("audit/{log}/")
}

/// Zero-padded, so the entries of a log scan in seq order.
pub(crate) fn audit_entry(log: &str, seq: u64) -> String {
    format!("{}{seq:020}", audit_entries(log))
}

/// Every log's last seq, so the logs that exist are one scan.
pub(crate) const AUDIT_SEQS: &str = "audit-seq/";

pub(crate) fn audit_seq(log: &str) -> String {
    format!("{AUDIT_SEQS}{log}")
}

/// The oldest seq a log still keeps (entries are pruned from the old end).
pub(crate) fn audit_low(log: &str) -> String {
    format!("audit-low/{log}")
}

/// The org's custom domains (one list).
pub(crate) fn org_domains(org: &OrgId) -> String {
    format!("org-domains/{org}")
}

/// Every custom domain's owner.
pub(crate) const DOMAIN_OWNERS: &str = "domain/";

/// Custom domain → owning org, so an overlap with another org is one scan.
pub(crate) fn domain_owner(domain: &str) -> String {
    format!("{DOMAIN_OWNERS}{domain}")
}

/// The org's device inventory: one record per identity that ever connected.
pub(crate) fn devices(org: &OrgId) -> String {
    format!("dev/{org}/")
}

pub(crate) fn device(org: &OrgId, identity: &Identity) -> String {
    format!("{}{identity}", devices(org))
}

/// Every certificate the org's devices used, by SHA-256 fingerprint (→ who used it).
pub(crate) fn device_certs(org: &OrgId) -> String {
    format!("devcert/{org}/")
}

pub(crate) fn device_cert(org: &OrgId, fingerprint: &str) -> String {
    format!("{}{fingerprint}", device_certs(org))
}

/// The org's identities by the expiry of the certificate they last connected with.
pub(crate) fn device_expiries(org: &OrgId) -> String {
    format!("devexp/{org}/")
}

/// Zero-padded Unix time first, so the entries scan in expiry order.
pub(crate) fn device_expiry(org: &OrgId, not_after: u64, identity: &Identity) -> String {
    format!("{}{not_after:020}/{identity}", device_expiries(org))
}

/// Single certificates the org revoked.
pub(crate) fn revoked_certs(org: &OrgId) -> String {
    format!("revoked/{org}/")
}

pub(crate) fn revoked_cert(org: &OrgId, id: &str) -> String {
    format!("{}{id}", revoked_certs(org))
}

/// The org's network policy (one record; absent: every address).
pub(crate) fn network_policy(org: &OrgId) -> String {
    format!("netpolicy/{org}")
}

/// The org's topic policy (one record; absent: watson).
pub(crate) fn topic_policy(org: &OrgId) -> String {
    format!("topicpolicy/{org}")
}

/// The org's CA proof-of-possession codes.
pub(crate) fn ca_proof_codes(org: &OrgId) -> String {
    format!("ca-proof/{org}/")
}

pub(crate) fn ca_proof_code(org: &OrgId, code: &str) -> String {
    format!("{}{code}", ca_proof_codes(org))
}

/// The org's message state, which the broker owns (retained messages, persistent
/// sessions and their queues): the registry only deletes it with the org.
pub fn messages(org: &OrgId) -> String {
    format!("msg/{org}/")
}

/// Every org's message state.
pub const MESSAGES: &str = "msg/";

/// Keys a shared store ([`crate::pg::PgStore`]) does not copy into each node's memory:
/// the device inventory (large, written every few seconds by every node, never read
/// to admit a device) and the audit logs (read-modify-write of a log's last seq must
/// see every node's entries). They are read from the database when asked for.
pub(crate) const UNMIRRORED: [&str; 6] = [
    "dev/",
    "devcert/",
    "devexp/",
    "audit/",
    AUDIT_SEQS,
    "audit-low/",
];

/// What a change to a key means for admission (see [`scope`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Something of this org's (certificates, policy, limits, the org itself).
    Org(OrgId),
    /// Something every org depends on (the platform certificate), or a key this
    /// layout does not know: every org is re-read.
    All,
    /// Nothing admission reads (inventory, audit, messages), or an index that is only
    /// ever written with a per-org key beside it.
    Nothing,
}

/// Which org a changed `key` belongs to, for telling the broker about changes another
/// node made.
pub(crate) fn scope(key: &str) -> Scope {
    if key == PLATFORM_CERT {
        return Scope::All;
    }
    if UNMIRRORED.iter().any(|p| key.starts_with(p))
        || key.starts_with(MESSAGES)
        || key.starts_with("token-id/")
        || key.starts_with(DOMAIN_OWNERS)
    {
        return Scope::Nothing;
    }
    const PER_ORG: [&str; 16] = [
        "org",
        "policy",
        "limits",
        "ca",
        "srv",
        "cli",
        "dest",
        "csr",
        "blocked",
        "crl",
        "devtoken",
        "token",
        "org-domains",
        "revoked",
        "netpolicy",
        "ca-proof",
    ];
    let mut parts = key.splitn(3, '/');
    let (Some(kind), Some(org)) = (parts.next(), parts.next()) else {
        return Scope::All;
    };
    if !PER_ORG.contains(&kind) {
        return Scope::All;
    }
    match OrgId::try_from(org) {
        Ok(org) => Scope::Org(org),
        Err(_) => Scope::All,
    }
}

/// Where some of an org's data lives.
pub(crate) enum Place {
    /// One key.
    Key(String),
    /// Every key under this prefix.
    Prefix(String),
}

/// The global index keys one record (key, value) implies; `None` when the record is
/// unreadable.
pub(crate) type IndexKeys = fn(&str, &[u8]) -> Option<Vec<String>>;

/// One kind of an org's data: where it lives and, for records that a global index
/// points at, the index keys a record (key, value) implies. Those index keys do not
/// name the org, so they are found through the records and deleted with them.
pub(crate) struct OrgData {
    pub(crate) place: Place,
    pub(crate) index_keys: Option<IndexKeys>,
}

/// Everything `org` has in the store. Deleting the org deletes exactly this.
pub(crate) fn org_data(org: &OrgId) -> Vec<OrgData> {
    let at = |place| OrgData {
        place,
        index_keys: None,
    };
    vec![
        at(Place::Key(self::org(org))),
        at(Place::Key(policy(org))),
        at(Place::Key(limits(org))),
        at(Place::Prefix(cas(org))),
        at(Place::Prefix(server_certs(org))),
        at(Place::Prefix(csrs(org))),
        at(Place::Prefix(client_certs(org))),
        at(Place::Prefix(destinations(org))),
        at(Place::Prefix(blocked_devices(org))),
        at(Place::Prefix(crls(org))),
        at(Place::Prefix(device_tokens(org))),
        OrgData {
            place: Place::Prefix(tokens(org)),
            index_keys: Some(token_index_keys),
        },
        at(Place::Prefix(audit_entries(org.as_str()))),
        at(Place::Key(audit_seq(org.as_str()))),
        at(Place::Key(audit_low(org.as_str()))),
        OrgData {
            place: Place::Key(org_domains(org)),
            index_keys: Some(domain_owner_keys),
        },
        at(Place::Prefix(messages(org))),
        at(Place::Prefix(devices(org))),
        at(Place::Prefix(device_certs(org))),
        at(Place::Prefix(device_expiries(org))),
        at(Place::Prefix(revoked_certs(org))),
        at(Place::Key(network_policy(org))),
        at(Place::Prefix(ca_proof_codes(org))),
        at(Place::Key(topic_policy(org))),
    ]
}

/// `token/<org>/<id>` → `token-id/<id>`.
fn token_index_keys(key: &str, _: &[u8]) -> Option<Vec<String>> {
    let id = key.rsplit_once('/')?.1;
    Some(vec![token_index(id)])
}

/// The owner entries of the domains an `org-domains/<org>` list holds.
fn domain_owner_keys(_: &str, value: &[u8]) -> Option<Vec<String>> {
    let domains: Vec<String> = serde_json::from_slice(value).ok()?;
    Some(domains.iter().map(|d| domain_owner(d)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sealed_record_is_under_a_sealed_prefix() {
        let acme = OrgId::try_from("acme").unwrap();
        for key in [
            PLATFORM_CERT.to_owned(),
            server_cert(&acme, "1"),
            csr(&acme, "1"),
        ] {
            assert!(SEALED.iter().any(|p| key.starts_with(p)), "{key}");
        }
    }

    #[test]
    fn every_key_has_its_scope() {
        let acme = OrgId::try_from("acme").unwrap();
        let id = Identity::parse("d:sensor:1").unwrap();
        for key in [
            org(&acme),
            policy(&acme),
            limits(&acme),
            ca(&acme, "1"),
            server_cert(&acme, "1"),
            client_cert(&acme, "1"),
            destination(&acme, "1"),
            csr(&acme, "1"),
            blocked_device(&acme, &id),
            crl(&acme, "1"),
            device_token(&acme, &id),
            token(&acme, "1"),
            org_domains(&acme),
            revoked_cert(&acme, "1"),
            network_policy(&acme),
            ca_proof_code(&acme, "c"),
        ] {
            assert_eq!(scope(&key), Scope::Org(acme.clone()), "{key}");
        }
        for key in [
            device(&acme, &id),
            device_cert(&acme, "ab"),
            device_expiry(&acme, 1, &id),
            audit_entry(acme.as_str(), 1),
            audit_seq(acme.as_str()),
            audit_low(acme.as_str()),
            format!("{}x", messages(&acme)),
            token_index("1"),
            domain_owner("a.example"),
        ] {
            assert_eq!(scope(&key), Scope::Nothing, "{key}");
        }
        assert_eq!(scope(PLATFORM_CERT), Scope::All);
        assert_eq!(scope("something-new/acme"), Scope::All);
    }

    #[test]
    fn every_per_org_key_is_in_org_data() {
        let acme = OrgId::try_from("acme").unwrap();
        let id = Identity::parse("d:sensor:1").unwrap();
        let data = org_data(&acme);
        let covered = |key: &str| {
            data.iter().any(|d| match &d.place {
                Place::Key(k) => k == key,
                Place::Prefix(p) => key.starts_with(p.as_str()),
            })
        };
        for key in [
            org(&acme),
            policy(&acme),
            limits(&acme),
            ca(&acme, "1"),
            server_cert(&acme, "1"),
            csr(&acme, "1"),
            blocked_device(&acme, &id),
            crl(&acme, "1"),
            device_token(&acme, &id),
            token(&acme, "1"),
            audit_entry(acme.as_str(), 1),
            audit_seq(acme.as_str()),
            audit_low(acme.as_str()),
            org_domains(&acme),
            device(&acme, &id),
            device_cert(&acme, "ab"),
            device_expiry(&acme, 1, &id),
            revoked_cert(&acme, "1"),
            network_policy(&acme),
            ca_proof_code(&acme, "c"),
            topic_policy(&acme),
        ] {
            assert!(covered(&key), "{key} is not deleted with its org");
        }
        // Another org's keys and the global ones are not the org's.
        let acme2 = OrgId::try_from("acme2").unwrap();
        for key in [
            org(&acme2),
            limits(&acme2),
            ca(&acme2, "1"),
            audit_seq(acme2.as_str()),
            device(&acme2, &id),
            network_policy(&acme2),
            PLATFORM_CERT.to_owned(),
        ] {
            assert!(!covered(&key), "{key} would be deleted with acme");
        }
        assert_eq!(
            token_index_keys(&token(&acme, "abc"), b""),
            Some(vec![token_index("abc")])
        );
        assert_eq!(
            domain_owner_keys(&org_domains(&acme), br#"["a.example","b.example"]"#),
            Some(vec![domain_owner("a.example"), domain_owner("b.example")])
        );
    }
}
