//! CA certificates an org uploads: the CAs whose client certificates its devices
//! connect with.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cert::{self, CertDetails};
use crate::error::{Error, Result};
use crate::layout;
use crate::names::OrgId;
use crate::registry::{new_id, Change, Registry};
use crate::store::Op;

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

    pub fn add_ca(&self, org: &OrgId, bytes: &[u8], description: &str) -> Result<CaView> {
        crate::text::check("description", description, MAX_DESCRIPTION_CHARS)?;
        let der = cert::read_single(bytes)?;
        let details = cert::check_ca(&der, OffsetDateTime::now_utc())?;
        let _g = self.lock();
        self.get_org(org)?;
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
        let ca = CaCert {
            id: new_id(),
            org: org.clone(),
            active: true,
            description: description.to_owned(),
            created_at: OffsetDateTime::now_utc(),
            pem: cert::to_pem(&der),
        };
        self.store
            .apply(vec![Self::put(layout::ca(org, &ca.id), &ca)])?;
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
