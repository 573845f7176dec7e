//! What the broker reads to build an org's TLS config: the active server certificate
//! with its key opened, the active CAs and the CRLs.

use crate::ca_certs::CaCert;
use crate::cert;
use crate::error::Result;
use crate::layout;
use crate::names::OrgId;
use crate::registry::Registry;
use crate::server_certs::ServerCert;

/// What the broker needs to build an org's TLS config, with the key already opened.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The active server certificate chain (DER, leaf first) and its PKCS#8 key,
    /// or `None` when the org uses the platform default certificate.
    pub server: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    /// The org's active CA certificates: (id, DER, SHA-256 fingerprint).
    pub cas: Vec<(String, Vec<u8>, String)>,
    /// The org's CRLs (DER), checked on every handshake.
    pub crls: Vec<Vec<u8>>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("server", &self.server.as_ref().map(|(c, _)| c.len()))
            .field("cas", &self.cas.len())
            .finish()
    }
}

impl Registry {
    /// The TLS material of `org`, or `None` when the org does not exist.
    pub fn tls_material(&self, org: &OrgId) -> Result<Option<TlsMaterial>> {
        if self.store.get(&layout::org(org))?.is_none() {
            return Ok(None);
        }
        let server = match self
            .scan_json::<ServerCert>(&layout::server_certs(org))?
            .into_iter()
            .find(|c| c.active)
        {
            Some(rec) => Some(self.open_server(&rec)?),
            None => None,
        };
        let mut cas = Vec::new();
        for ca in self.scan_json::<CaCert>(&layout::cas(org))? {
            if ca.active {
                let der = cert::read_single(ca.pem.as_bytes())?;
                let fp = cert::fingerprint(&der);
                cas.push((ca.id, der, fp));
            }
        }
        let crls = self.crl_ders(org)?;
        Ok(Some(TlsMaterial { server, cas, crls }))
    }
}
