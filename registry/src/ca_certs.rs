//! CA certificates an org uploads: the CAs whose client certificates its devices
//! connect with.
//!
//! **Limits** (docs/security.md, "CA limits per org"). When the broker asks a device for
//! its certificate, the TLS CertificateRequest lists the subject of every active CA of
//! the org (`certificate_authorities`: each DN as a 2-byte length and its DER). That
//! list holds at most 65,535 bytes, and rustls clients refuse any handshake message over
//! 65,535 bytes; past it every handshake of the org fails, with no API error to say why.
//! So an upload or re-activation that would take the org's active CAs over
//! [`MAX_ACTIVE_CAS`] or [`MAX_CA_NAMES_BYTES`] is refused (422 `too_many_cas`) and the
//! org keeps what it had.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::cert::{self, CertDetails, CertError, Rule};
use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::registry::{new_id, Change, Registry};
use crate::store::Op;

/// The most active CAs one org may have.
pub const MAX_ACTIVE_CAS: usize = 64;

/// The most bytes the subjects of an org's active CAs may take in the TLS
/// CertificateRequest ([`ca_names_len`]). The protocol limit is 65,535; the rest is room
/// for the message's other fields (signature algorithms, extension headers).
pub const MAX_CA_NAMES_BYTES: usize = 60_000;
const _: () = assert!(
    MAX_CA_NAMES_BYTES < 65_535,
    "the TLS list of CA names holds 65535"
);

/// The bytes a CA's subject takes in the CertificateRequest's list of acceptable CA
/// names, as rustls encodes it: a 2-byte length, then the DER of the subject name.
fn ca_name_len(der: &[u8]) -> Result<usize> {
    let (_, c) = X509Certificate::from_der(der)
        .map_err(|e| CertError::new(Rule::NotPemOrDer, format!("malformed certificate: {e}")))?;
    Ok(2 + c.subject().as_raw().len())
}

/// 422 `too_many_cas` unless one more active CA, whose subject takes `adding` bytes
/// ([`ca_name_len`]), fits beside the org's other `active` CAs.
fn ensure_room_for_ca(active: &[CaCert], adding: usize) -> Result<()> {
    if active.len() >= MAX_ACTIVE_CAS {
        return Err(CertError::new(
            Rule::TooManyCas,
            format!(
                "the org already has {} active CA certificates, the most allowed is \
                 {MAX_ACTIVE_CAS}; deactivate or delete one first",
                active.len()
            ),
        )
        .into());
    }
    let mut total = adding;
    for c in active {
        total += ca_name_len(&cert::read_single(c.pem.as_bytes())?)?;
    }
    if total > MAX_CA_NAMES_BYTES {
        return Err(CertError::new(
            Rule::TooManyCas,
            format!(
                "the subjects of the org's active CA certificates would take {total} bytes \
                 in the TLS handshake's list of acceptable CAs, over the limit of \
                 {MAX_CA_NAMES_BYTES} bytes (the list holds at most 65535, and past it every \
                 handshake of the org fails); deactivate or delete a CA, or use CAs with \
                 shorter subjects"
            ),
        )
        .into());
    }
    Ok(())
}

/// A CA certificate an org uploaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaCert {
    pub id: String,
    pub org: OrgId,
    pub active: bool,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The certificate, PEM.
    pub pem: String,
}

/// The API view of a CA certificate: the record plus its parsed details.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CaView {
    pub id: String,
    pub org: OrgId,
    pub active: bool,
    pub description: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(flatten)]
    pub details: CertDetails,
    pub pem: String,
}

/// The longest CA description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 500;

impl Registry {
    /// Checks a CA upload without storing it.
    pub fn preview_ca(&self, bytes: &[u8]) -> Result<CertDetails> {
        let der = cert::read_single(bytes)?;
        Ok(cert::check_ca(&der, OffsetDateTime::now_utc())?)
    }

    /// Uploads a CA, active at once. 409 when the org has it already, 422 when it breaks
    /// a CA rule or the org's CA limits (`too_many_cas`, see the module docs).
    pub fn add_ca(&self, org: &OrgId, bytes: &[u8], description: &str) -> Result<CaView> {
        self.add_ca_with_proof(org, bytes, description, None)
    }

    /// [`Registry::add_ca`] with a proof of possession of the CA's key (a verification
    /// certificate, PEM or DER), which the org's policy may require (see `ca_proof`).
    pub fn add_ca_with_proof(
        &self,
        org: &OrgId,
        bytes: &[u8],
        description: &str,
        proof: Option<&[u8]>,
    ) -> Result<CaView> {
        crate::text::check("description", description, MAX_DESCRIPTION_CHARS)?;
        let der = cert::read_single(bytes)?;
        let details = cert::check_ca(&der, OffsetDateTime::now_utc())?;
        let _g = self.lock();
        self.get_org(org)?;
        let used_code = self.check_ca_proof(org, &der, proof)?;
        let existing: Vec<CaCert> = self.scan_json(&layout::cas(org))?;
        if let Some(dup) = existing.iter().find(|c| {
            cert::read_single(c.pem.as_bytes())
                .is_ok_and(|d| cert::fingerprint(&d) == details.fingerprint_sha256)
        }) {
            return Err(Error::Conflict(format!(
                "this CA certificate is already uploaded as {} (fingerprint {})",
                dup.id, details.fingerprint_sha256
            )));
        }
        let active: Vec<CaCert> = existing.into_iter().filter(|c| c.active).collect();
        ensure_room_for_ca(&active, ca_name_len(&der)?)?;
        let ca = CaCert {
            id: new_id(),
            org: org.clone(),
            active: true,
            description: description.to_owned(),
            created_at: OffsetDateTime::now_utc(),
            pem: cert::to_pem(&der),
        };
        let mut ops = vec![Self::put(layout::ca(org, &ca.id), &ca)];
        // A code proves possession once.
        ops.extend(used_code.map(Op::Delete));
        self.store.apply(ops)?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(CaView::from_record(ca, details))
    }

    pub(crate) fn ca_record(&self, org: &OrgId, id: &str) -> Result<CaCert> {
        self.get_json(&layout::ca(org, id))?
            .ok_or_else(|| Error::NotFound(format!("CA certificate {id} not found in org {org}")))
    }

    pub fn list_cas(&self, org: &OrgId) -> Result<Vec<CaView>> {
        self.get_org(org)?;
        self.scan_json::<CaCert>(&layout::cas(org))?
            .into_iter()
            .map(CaView::try_from)
            .collect()
    }

    pub fn get_ca(&self, org: &OrgId, id: &str) -> Result<CaView> {
        self.get_org(org)?;
        CaView::try_from(self.ca_record(org, id)?)
    }

    pub fn update_ca(
        &self,
        org: &OrgId,
        id: &str,
        active: Option<bool>,
        description: Option<String>,
    ) -> Result<CaView> {
        let _g = self.lock();
        self.get_org(org)?;
        let mut ca = self.ca_record(org, id)?;
        if active == Some(true) && !ca.active {
            let others: Vec<CaCert> = self
                .scan_json::<CaCert>(&layout::cas(org))?
                .into_iter()
                .filter(|c| c.active && c.id != ca.id)
                .collect();
            ensure_room_for_ca(
                &others,
                ca_name_len(&cert::read_single(ca.pem.as_bytes())?)?,
            )?;
        }
        if let Some(a) = active {
            ca.active = a;
        }
        if let Some(d) = description {
            crate::text::check("description", &d, MAX_DESCRIPTION_CHARS)?;
            ca.description = d;
        }
        self.store
            .apply(vec![Self::put(layout::ca(org, id), &ca)])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        CaView::try_from(ca)
    }

    pub fn delete_ca(&self, org: &OrgId, id: &str) -> Result<()> {
        let _g = self.lock();
        self.get_org(org)?;
        self.ca_record(org, id)?;
        self.store.apply(vec![Op::Delete(layout::ca(org, id))])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(())
    }
}

impl CaView {
    fn from_record(r: CaCert, details: CertDetails) -> CaView {
        CaView {
            id: r.id,
            org: r.org,
            active: r.active,
            description: r.description,
            created_at: r.created_at,
            details,
            pem: r.pem,
        }
    }
}

impl TryFrom<CaCert> for CaView {
    type Error = Error;
    fn try_from(r: CaCert) -> Result<CaView> {
        let der = cert::read_single(r.pem.as_bytes())?;
        let details = cert::details(&der)?;
        Ok(CaView::from_record(r, details))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use x509_parser::prelude::{FromDer, X509Certificate};

    use super::*;
    use crate::cert::Rule;
    use crate::registry::tests::registry;
    use crate::server_upload::tests::Ca;

    /// Refused with `too_many_cas`; the message.
    fn too_many(result: Result<CaView>) -> String {
        match result {
            Err(Error::Rejected(e)) if e.rule == Rule::TooManyCas => e.message,
            other => panic!("expected too_many_cas, got {other:?}"),
        }
    }

    /// What rustls sends as the CertificateRequest's certificate_authorities for these
    /// CAs: each subject DN (DER, with its SEQUENCE header) behind a 2-byte length.
    fn certificate_request_names_len(cas: &[CaView]) -> usize {
        cas.iter()
            .filter(|c| c.active)
            .map(|c| {
                let der = cert::read_single(c.pem.as_bytes()).unwrap();
                let (_, x) = X509Certificate::from_der(&der).unwrap();
                2 + x.subject().as_raw().len()
            })
            .sum()
    }

    #[test]
    fn ca_subjects_stay_within_the_certificate_request() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let org = r.create_org("acme", "").unwrap().id;
        // 1 KiB subjects, all of one length.
        let long = |i: usize| Ca::root(&format!("CA {i:03} {}", "x".repeat(1000))).pem;
        let mut ids = Vec::new();
        let mut refused = None;
        for i in 0..80 {
            match r.add_ca(&org, long(i).as_bytes(), "") {
                Ok(ca) => ids.push(ca.id),
                Err(e) => {
                    refused = Some(too_many(Err(e)));
                    break;
                }
            }
        }
        let message = refused.expect("80 CAs with 1 KiB subjects were all accepted");
        assert!(
            message.contains(&MAX_CA_NAMES_BYTES.to_string()),
            "{message}"
        );
        assert!(ids.len() >= 50, "only {} accepted", ids.len());
        // Every earlier CA is still there and active.
        let cas = r.list_cas(&org).unwrap();
        let listed: BTreeSet<_> = cas.iter().filter(|c| c.active).map(|c| &c.id).collect();
        assert_eq!(listed, ids.iter().collect::<BTreeSet<_>>());
        assert_eq!(cas.len(), ids.len());
        let len = certificate_request_names_len(&cas);
        assert!(len <= MAX_CA_NAMES_BYTES, "{len}");

        // Re-activation counts too: a freed slot taken by another CA stays taken.
        r.update_ca(&org, &ids[0], Some(false), None).unwrap();
        r.add_ca(&org, long(99).as_bytes(), "").unwrap();
        too_many(r.update_ca(&org, &ids[0], Some(true), None));
        assert!(!r.get_ca(&org, &ids[0]).unwrap().active);
        // A description change of an inactive CA is not an activation.
        r.update_ca(&org, &ids[0], None, Some("spare".into()))
            .unwrap();
    }

    #[test]
    fn active_cas_per_org_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let org = r.create_org("acme", "").unwrap().id;
        let ids: Vec<String> = (0..MAX_ACTIVE_CAS)
            .map(|i| {
                r.add_ca(&org, Ca::root(&format!("CA {i}")).pem.as_bytes(), "")
                    .unwrap()
                    .id
            })
            .collect();
        let message = too_many(r.add_ca(&org, Ca::root("one more").pem.as_bytes(), ""));
        assert!(message.contains(&MAX_ACTIVE_CAS.to_string()), "{message}");
        assert_eq!(r.list_cas(&org).unwrap().len(), MAX_ACTIVE_CAS);
        // Deactivating one frees a slot; re-activating it then is refused.
        r.update_ca(&org, &ids[0], Some(false), None).unwrap();
        r.add_ca(&org, Ca::root("replacement").pem.as_bytes(), "")
            .unwrap();
        too_many(r.update_ca(&org, &ids[0], Some(true), None));
        // Activating an active CA again is no change.
        r.update_ca(&org, &ids[1], Some(true), None).unwrap();
    }
}
