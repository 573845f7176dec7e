//! The platform default server certificate (SAN `*.<domain>`), presented to orgs that
//! have no active server certificate of their own. Generated at start-up when missing
//! or close to expiry.

use time::OffsetDateTime;

use crate::cert;
use crate::error::{Error, Result};
use crate::layout::PLATFORM_CERT;
use crate::names::OrgId;
use crate::registry::Registry;
use crate::server_certs::ServerCert;

impl Registry {
    /// The platform default certificate (SAN `*.<domain>`), presented to orgs that
    /// have no active server certificate of their own. Chain DER and PKCS#8 key.
    pub fn platform_cert(&self) -> Result<(Vec<Vec<u8>>, Vec<u8>)> {
        let rec: ServerCert = self
            .get_json(PLATFORM_CERT)?
            .ok_or_else(|| Error::Corrupt(PLATFORM_CERT.into()))?;
        self.open_server(&rec)
    }

    /// Stores a new platform certificate when there is none or it expires within 30
    /// days: start-up is the only place it is renewed, so it must outlast the next one.
    pub(crate) fn ensure_platform_cert(&self) -> Result<()> {
        if let Some(rec) = self.get_json::<ServerCert>(PLATFORM_CERT)? {
            let chain = cert::read_chain(rec.pem.as_bytes())?;
            let fresh = cert::details(&chain[0]).is_ok_and(|d| d.days_to_expiry > 30);
            if fresh {
                // Proves the master key still opens it; a wrong key fails start-up loudly.
                self.open_server(&rec)?;
                return Ok(());
            }
        }
        let (der, key) =
            self.self_signed(vec![format!("*.{}", self.domain), self.domain.clone()])?;
        let org = OrgId::try_from("platform").map_err(Error::from)?;
        let rec = ServerCert {
            sealed_key: self
                .key
                .seal(&Self::seal_context("platform", "default"), &key),
            id: "default".into(),
            org,
            active: true,
            origin: "self-signed".into(),
            created_at: OffsetDateTime::now_utc(),
            pem: cert::to_pem(&der),
        };
        self.store
            .apply(vec![Self::put(PLATFORM_CERT.into(), &rec)])?;
        Ok(())
    }
}
