//! Revocation per org: blocked identities and certificate revocation lists.
//!
//! A CRL is accepted only when one of the org's CAs signed it; the newest CRL per CA
//! replaces older ones. The broker gets the CRLs with the org's TLS material (checked on
//! every handshake) and, on every change, closes the live sessions that a block or a
//! CRL now refuses.

use std::collections::HashSet;

use ::time::OffsetDateTime;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::*;

use crate::ca_certs::CaCert;
use crate::cert::{self, CertError, Rule};
use crate::error::{Error, Result};
use crate::layout;
use crate::names::{Identity, OrgId};
use crate::registry::{new_id, Change, Registry};
use crate::store::Op;

/// An identity refused at CONNECT whatever its certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BlockedDevice {
    pub identity: Identity,
    pub reason: String,
    #[serde(with = "::time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A stored CRL: what the API shows, plus the DER.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Crl {
    pub id: String,
    pub org: OrgId,
    /// The CA that signed it.
    pub ca_id: String,
    pub ca_fingerprint: String,
    pub issuer: String,
    #[serde(with = "::time::serde::rfc3339")]
    pub this_update: OffsetDateTime,
    #[serde(with = "::time::serde::rfc3339::option")]
    pub next_update: Option<OffsetDateTime>,
    pub crl_number: Option<String>,
    /// Revoked serials, lowercase hex with colons (as certificate details show them).
    pub revoked_serials: Vec<String>,
    #[serde(with = "::time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub pem: String,
}

fn read_crl_der(bytes: &[u8]) -> Result<Vec<u8>, CertError> {
    let bad = || {
        CertError::new(
            Rule::NotACrl,
            "not a certificate revocation list: expected a PEM X509 CRL block or DER",
        )
    };
    let der = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        let blocks = cert::pem_blocks(bytes).map_err(|_| bad())?;
        let mut crls = blocks.into_iter().filter(|(l, _)| l == "X509 CRL");
        let first = crls.next().ok_or_else(bad)?;
        if crls.next().is_some() {
            return Err(CertError::new(
                Rule::MultipleCertificates,
                "the file holds more than one CRL; upload one per request",
            ));
        }
        first.1
    } else {
        bytes.to_vec()
    };
    match parse_x509_crl(&der) {
        Ok(([], _)) => Ok(der),
        _ => Err(bad()),
    }
}

impl Registry {
    // ---- blocked identities ----

    /// Blocks `identity` in `org`; live sessions of it are closed by the broker.
    pub fn block_device(&self, org: &OrgId, identity: &str, reason: &str) -> Result<BlockedDevice> {
        let identity = Identity::parse(identity)?;
        crate::text::check("reason", reason, 500)?;
        let _g = self.lock();
        self.get_org(org)?;
        let key = layout::blocked_device(org, &identity);
        if self.store.get(&key)?.is_some() {
            return Err(Error::Conflict(format!("{identity} is already blocked")));
        }
        let b = BlockedDevice {
            identity,
            reason: reason.to_owned(),
            created_at: OffsetDateTime::now_utc(),
        };
        self.store.apply(vec![Self::put(key, &b)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(b)
    }

    pub fn unblock_device(&self, org: &OrgId, identity: &str) -> Result<()> {
        let identity = Identity::parse(identity)?;
        let _g = self.lock();
        self.get_org(org)?;
        let key = layout::blocked_device(org, &identity);
        if self.store.get(&key)?.is_none() {
            return Err(Error::NotFound(format!("{identity} is not blocked")));
        }
        self.store.apply(vec![Op::Delete(key)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(())
    }

    pub fn list_blocked(&self, org: &OrgId) -> Result<Vec<BlockedDevice>> {
        self.get_org(org)?;
        self.scan_json(&layout::blocked_devices(org))
    }

    // ---- CRLs ----

    /// Stores a CRL after checking that one of the org's CAs (active or not) signed it.
    /// A newer CRL of the same CA replaces the stored one; an older one is refused.
    pub fn add_crl(&self, org: &OrgId, bytes: &[u8]) -> Result<Crl> {
        let der = read_crl_der(bytes)?;
        let (_, crl) =
            parse_x509_crl(&der).map_err(|_| CertError::new(Rule::NotACrl, "malformed CRL"))?;
        let _g = self.lock();
        self.get_org(org)?;
        let cas: Vec<CaCert> = self.scan_json(&layout::cas(org))?;
        let signer = cas.iter().find_map(|ca| {
            let ca_der = cert::read_single(ca.pem.as_bytes()).ok()?;
            let (_, ca_cert) = X509Certificate::from_der(&ca_der).ok()?;
            let same_name = ca_cert.subject().as_raw() == crl.issuer().as_raw();
            (same_name && crl.verify_signature(ca_cert.public_key()).is_ok())
                .then(|| (ca.id.clone(), cert::fingerprint(&ca_der)))
        });
        let Some((ca_id, ca_fingerprint)) = signer else {
            return Err(CertError::new(
                Rule::CrlNotFromOrgCa,
                format!(
                    "the CRL issued by {} is not signed by any CA certificate of org {org}",
                    crl.issuer()
                ),
            )
            .into());
        };
        let this_update = crl.last_update().to_datetime();
        let mut ops = Vec::new();
        for old in self.scan_json::<Crl>(&layout::crls(org))? {
            if old.ca_id == ca_id {
                if old.this_update > this_update {
                    return Err(CertError::new(
                        Rule::CrlOutdated,
                        format!(
                            "a newer CRL of this CA is stored (thisUpdate {}); this one is from {this_update}",
                            old.this_update
                        ),
                    )
                    .into());
                }
                ops.push(Op::Delete(layout::crl(org, &old.id)));
            }
        }
        let rec = Crl {
            id: new_id(),
            org: org.clone(),
            ca_id,
            ca_fingerprint,
            issuer: crl.issuer().to_string(),
            this_update,
            next_update: crl.next_update().map(|t| t.to_datetime()),
            crl_number: crl.crl_number().map(|n| n.to_string()),
            revoked_serials: crl
                .iter_revoked_certificates()
                .map(|r| r.raw_serial_as_string().to_lowercase())
                .collect(),
            created_at: OffsetDateTime::now_utc(),
            pem: cert::pem_block("X509 CRL", &der),
        };
        ops.push(Self::put(layout::crl(org, &rec.id), &rec));
        self.store.apply(ops)?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(rec)
    }

    pub fn list_crls(&self, org: &OrgId) -> Result<Vec<Crl>> {
        self.get_org(org)?;
        self.scan_json(&layout::crls(org))
    }

    pub fn delete_crl(&self, org: &OrgId, id: &str) -> Result<()> {
        let _g = self.lock();
        self.get_org(org)?;
        let key = layout::crl(org, id);
        if self.store.get(&key)?.is_none() {
            return Err(Error::NotFound(format!("CRL {id} not found in org {org}")));
        }
        self.store.apply(vec![Op::Delete(key)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(())
    }

    pub(crate) fn crl_ders(&self, org: &OrgId) -> Result<Vec<Vec<u8>>> {
        self.scan_json::<Crl>(&layout::crls(org))?
            .into_iter()
            .map(|c| read_crl_der(c.pem.as_bytes()).map_err(Error::from))
            .collect()
    }

    /// The identities blocked in `org`, for the broker's admission rules (the CRLs
    /// themselves reach it with the org's TLS material).
    pub fn blocked_identities(&self, org: &OrgId) -> Result<HashSet<Identity>> {
        Ok(self
            .scan_json::<BlockedDevice>(&layout::blocked_devices(org))?
            .into_iter()
            .map(|b| b.identity)
            .collect())
    }
}
