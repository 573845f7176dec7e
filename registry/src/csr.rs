//! Certificate signing requests generated on the broker, so an org's private key never
//! leaves it: the key pair is made here and sealed at once, the PKCS#10 CSR goes to any
//! CA, and the signed certificate comes back through [`Registry::complete_csr`], which
//! turns the CSR into an inactive server certificate (origin `csr`) in one batch.
//!
//! Stored as `csr/<org>/<id>`; the key is sealed under `csr-key/<org>/<id>` while the
//! CSR is pending and moves, re-sealed, to the server certificate when it completes.

use std::net::IpAddr;

use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyUsagePurpose};
use rustls_pki_types::PrivatePkcs8KeyDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::cert;
use crate::error::{Error, Result};
use crate::keys::{self, KeyType};
use crate::layout;
use crate::names::OrgId;
use crate::registry::{b64, new_id, Change, Registry};
use crate::seal::{MasterKey, SealError};
use crate::server_certs::ServerCertView;
use crate::server_upload::{check_covers, NewServerCert};
use crate::store::Op;

/// Most SANs one CSR may ask for.
const MAX_SANS: usize = 100;
/// `emailAddress` (PKCS#9), the subject attribute `openssl req` writes for an email.
const OID_EMAIL_ADDRESS: &[u64] = &[1, 2, 840, 113549, 1, 9, 1];

/// The subject of a CSR. Only the common name is required; empty fields are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CsrSubject {
    pub common_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizational_unit: Option<String>,
    /// Two-letter ISO 3166 code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// What the signed certificate will be used for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CsrPurpose {
    /// A server certificate for the org's host names (serverAuth).
    #[default]
    Server,
    /// A client certificate for the org's outgoing connections (clientAuth): bridges
    /// and webhooks.
    Client,
}

/// What to put in a new CSR.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CsrRequest {
    pub subject: CsrSubject,
    /// DNS names (`*.` wildcards allowed) and IP addresses. Empty: the common name.
    #[serde(default)]
    pub sans: Vec<String>,
    #[serde(default)]
    pub key_type: KeyType,
    /// `server` (default) or `client`.
    #[serde(default)]
    pub purpose: CsrPurpose,
}

/// Where a CSR is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CsrStatus {
    /// Waiting for the signed certificate.
    Pending,
    /// The signed certificate was uploaded; `server_cert_id` (or `client_cert_id`)
    /// names it.
    Completed,
}

/// A stored CSR with its sealed key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Csr {
    id: String,
    org: OrgId,
    subject: CsrSubject,
    sans: Vec<String>,
    key_type: KeyType,
    csr_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    status: CsrStatus,
    server_cert_id: Option<String>,
    #[serde(default)]
    purpose: CsrPurpose,
    #[serde(default)]
    client_cert_id: Option<String>,
    /// PKCS#8 DER sealed under `csr-key/<org>/<id>`; empty once completed.
    #[serde(with = "b64")]
    sealed_key: Vec<u8>,
}

impl Csr {
    /// Re-seals the CSR's key under `new` (`rekey`); a completed CSR holds none.
    pub(crate) fn reseal(
        &mut self,
        old: &MasterKey,
        new: &MasterKey,
    ) -> std::result::Result<(), SealError> {
        if self.sealed_key.is_empty() {
            return Ok(());
        }
        let context = csr_context(self.org.as_str(), &self.id);
        let plain = old.open(&context, &self.sealed_key)?;
        self.sealed_key = new.seal(&context, &plain);
        Ok(())
    }
}

/// The API view of a CSR: never the key.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CsrView {
    pub id: String,
    pub org: OrgId,
    pub subject: CsrSubject,
    pub sans: Vec<String>,
    pub key_type: KeyType,
    pub purpose: CsrPurpose,
    pub status: CsrStatus,
    /// The server certificate the CSR became, once completed (purpose `server`).
    pub server_cert_id: Option<String>,
    /// The client certificate the CSR became, once completed (purpose `client`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert_id: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The PKCS#10 request, PEM (`CERTIFICATE REQUEST`).
    pub csr_pem: String,
}

impl From<Csr> for CsrView {
    fn from(c: Csr) -> CsrView {
        CsrView {
            id: c.id,
            org: c.org,
            subject: c.subject,
            sans: c.sans,
            key_type: c.key_type,
            purpose: c.purpose,
            status: c.status,
            server_cert_id: c.server_cert_id,
            client_cert_id: c.client_cert_id,
            created_at: c.created_at,
            csr_pem: c.csr_pem,
        }
    }
}

fn bad(m: impl Into<String>) -> Error {
    Error::BadRequest(m.into())
}

/// Trims an optional field; empty means absent. Checks its length in characters.
fn field(name: &str, v: Option<String>, max: usize) -> Result<Option<String>> {
    let Some(v) = v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    crate::text::check(&format!("subject.{name}"), &v, max)?;
    Ok(Some(v))
}

fn valid_dns_name(name: &str) -> bool {
    let bare = name.strip_prefix("*.").unwrap_or(name);
    !bare.is_empty()
        && name.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl CsrRequest {
    /// Validates and normalizes the request (400 on bad input).
    fn normalize(self) -> Result<CsrRequest> {
        let s = self.subject;
        let common_name = field("common_name", Some(s.common_name), 64)?
            .ok_or_else(|| bad("subject.common_name is required"))?;
        let country = field("country", s.country, 2)?;
        if let Some(c) = &country {
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(bad(
                    "subject.country must be a two-letter ISO 3166 code in capitals, e.g. DE",
                ));
            }
        }
        let email = field("email", s.email, 128)?;
        if let Some(e) = &email {
            if !e.is_ascii() || !e.contains('@') || e.contains(' ') {
                return Err(bad("subject.email is not an email address"));
            }
        }
        let subject = CsrSubject {
            common_name,
            organization: field("organization", s.organization, 64)?,
            organizational_unit: field("organizational_unit", s.organizational_unit, 64)?,
            country,
            state: field("state", s.state, 128)?,
            locality: field("locality", s.locality, 128)?,
            email,
        };
        let mut sans: Vec<String> = Vec::new();
        // A client certificate needs no host name; a server certificate names one.
        let given = if self.sans.is_empty() && self.purpose == CsrPurpose::Client {
            Vec::new()
        } else if self.sans.is_empty() {
            vec![subject.common_name.clone()]
        } else {
            self.sans
        };
        if given.len() > MAX_SANS {
            return Err(bad(format!("at most {MAX_SANS} sans per CSR")));
        }
        for san in given {
            let san = san.trim().trim_end_matches('.').to_ascii_lowercase();
            if san.parse::<IpAddr>().is_err() && !valid_dns_name(&san) {
                return Err(bad(format!(
                    "{san:?} is neither a DNS name nor an IP address{}",
                    if san == subject.common_name.to_ascii_lowercase() {
                        " (with no sans given, the common name is used; give the host names in `sans`)"
                    } else {
                        ""
                    }
                )));
            }
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        Ok(CsrRequest {
            subject,
            sans,
            key_type: self.key_type,
            purpose: self.purpose,
        })
    }

    fn params(&self) -> Result<CertificateParams> {
        let mut params = CertificateParams::new(self.sans.clone())
            .map_err(|e| bad(format!("invalid sans: {e}")))?;
        let s = &self.subject;
        let mut dn = DistinguishedName::new();
        if let Some(c) = &s.country {
            let printable = c
                .as_str()
                .try_into()
                .map_err(|_| bad("subject.country is not printable"))?;
            dn.push(DnType::CountryName, DnValue::PrintableString(printable));
        }
        for (ty, v) in [
            (DnType::StateOrProvinceName, &s.state),
            (DnType::LocalityName, &s.locality),
            (DnType::OrganizationName, &s.organization),
            (DnType::OrganizationalUnitName, &s.organizational_unit),
        ] {
            if let Some(v) = v {
                dn.push(ty, v.as_str());
            }
        }
        dn.push(DnType::CommonName, s.common_name.as_str());
        if let Some(e) = &s.email {
            let ia5 = e
                .as_str()
                .try_into()
                .map_err(|_| bad("subject.email is not ASCII"))?;
            dn.push(
                DnType::CustomDnType(OID_EMAIL_ADDRESS.to_vec()),
                DnValue::Ia5String(ia5),
            );
        }
        params.distinguished_name = dn;
        params.extended_key_usages = vec![match self.purpose {
            CsrPurpose::Server => rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            CsrPurpose::Client => rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if matches!(
            self.key_type,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096
        ) {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        Ok(params)
    }
}

fn csr_context(org: &str, id: &str) -> Vec<u8> {
    format!("csr-key/{org}/{id}").into_bytes()
}

impl Registry {
    /// Generates a key pair on the broker and a PKCS#10 CSR for it. The key is sealed at
    /// once and never leaves the registry. The SANs must cover one of the org's host
    /// names (422 `hostname_mismatch`), since a certificate that does not could never be
    /// activated. RSA keys take seconds to generate; call from a blocking thread.
    pub fn create_csr(&self, org: &OrgId, request: CsrRequest) -> Result<CsrView> {
        self.get_org(org)?;
        let request = request.normalize()?;
        if request.purpose == CsrPurpose::Server {
            check_covers(
                "the CSR's names",
                &request.sans,
                &self.org_host_names(org),
                "; add it to `sans`",
            )?;
            // Early: the certificate could not be uploaded for this CSR either. Checked
            // again under the lock when it is.
            self.ensure_names_unclaimed(org, &request.sans)?;
        }
        let params = request.params()?;
        let key = keys::generate(request.key_type)
            .map_err(|e| Error::Corrupt(format!("key generation failed: {e}")))?;
        let signer = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key.pkcs8.as_slice()),
            key.sign_alg,
        )
        .map_err(|e| Error::Corrupt(format!("generated key unusable: {e}")))?;
        let csr_pem = params
            .serialize_request(&signer)
            .and_then(|csr| csr.pem())
            .map_err(|e| bad(format!("CSR could not be built: {e}")))?;
        let id = new_id();
        let rec = Csr {
            sealed_key: self.key.seal(&csr_context(org.as_str(), &id), &key.pkcs8),
            id,
            org: org.clone(),
            subject: request.subject,
            sans: request.sans,
            key_type: request.key_type,
            csr_pem,
            created_at: OffsetDateTime::now_utc(),
            status: CsrStatus::Pending,
            server_cert_id: None,
            purpose: request.purpose,
            client_cert_id: None,
        };
        let _g = self.lock();
        self.get_org(org)?;
        self.store
            .apply(vec![Self::put(layout::csr(org, &rec.id), &rec)])?;
        drop(_g);
        Ok(rec.into())
    }

    fn csr_record(&self, org: &OrgId, id: &str) -> Result<Csr> {
        self.get_json(&layout::csr(org, id))?
            .ok_or_else(|| Error::NotFound(format!("CSR {id} not found in org {org}")))
    }

    /// The org's CSRs, oldest first.
    pub fn list_csrs(&self, org: &OrgId) -> Result<Vec<CsrView>> {
        self.get_org(org)?;
        let mut all: Vec<Csr> = self.scan_json(&layout::csrs(org))?;
        all.sort_by_key(|c| c.created_at);
        Ok(all.into_iter().map(CsrView::from).collect())
    }

    pub fn get_csr(&self, org: &OrgId, id: &str) -> Result<CsrView> {
        self.get_org(org)?;
        Ok(self.csr_record(org, id)?.into())
    }

    /// The CSR as PEM, to send to a CA.
    pub fn csr_pem(&self, org: &OrgId, id: &str) -> Result<String> {
        Ok(self.get_csr(org, id)?.csr_pem)
    }

    /// Deletes a CSR; a pending one's key is destroyed with it. A completed CSR's server
    /// certificate is not affected.
    pub fn delete_csr(&self, org: &OrgId, id: &str) -> Result<()> {
        let _g = self.lock();
        self.get_org(org)?;
        self.csr_record(org, id)?;
        self.store.apply(vec![Op::Delete(layout::csr(org, id))])?;
        Ok(())
    }

    /// Completes a pending CSR with the certificate its CA signed (PEM, leaf first, then
    /// intermediates; any order is fixed). The leaf must hold the CSR's key and pass every
    /// server-certificate rule. In one batch the CSR becomes an inactive server
    /// certificate (origin `csr`, the key re-sealed under it) and is marked completed.
    /// A completed CSR is a 409.
    pub fn complete_csr(&self, org: &OrgId, id: &str, chain_pem: &[u8]) -> Result<CsrCompletion> {
        self.get_org(org)?;
        let csr = self.csr_record(org, id)?;
        if csr.status == CsrStatus::Completed {
            let (what, made) = match csr.purpose {
                CsrPurpose::Server => ("server", csr.server_cert_id),
                CsrPurpose::Client => ("client", csr.client_cert_id),
            };
            return Err(Error::Conflict(format!(
                "CSR {id} is already completed as {what} certificate {}",
                made.unwrap_or_default()
            )));
        }
        let pkcs8 = self
            .key
            .open(&csr_context(org.as_str(), id), &csr.sealed_key)?;
        let key = keys::load(&pkcs8).map_err(|e| Error::Corrupt(format!("CSR {id} key: {e}")))?;
        let certs = cert::read_chain(chain_pem)?;
        if csr.purpose == CsrPurpose::Client {
            return self.complete_client_csr(org, id, certs, &key);
        }
        let checked = self.check_server_chain(org, certs, &key, "the CSR's key")?;
        let rec = self.new_server_record(org, &checked.chain, &key.pkcs8, "csr");

        let _g = self.lock();
        // Re-read under the lock: a concurrent completion or delete wins.
        let mut csr = self.csr_record(org, id)?;
        if csr.status == CsrStatus::Completed {
            return Err(Error::Conflict(format!("CSR {id} was completed meanwhile")));
        }
        self.ensure_new_server_leaf(org, &checked.chain[0])?;
        self.ensure_names_unclaimed(org, &checked.dns_names)?;
        csr.status = CsrStatus::Completed;
        csr.server_cert_id = Some(rec.id.clone());
        csr.sealed_key = Vec::new();
        self.store.apply(vec![
            Self::put(layout::server_cert(org, &rec.id), &rec),
            Self::put(layout::csr(org, id), &csr),
        ])?;
        drop(_g);
        self.notify(Change::Org(org.clone()));
        Ok(CsrCompletion::Server(NewServerCert {
            cert: ServerCertView::try_from(rec)?,
            notes: checked.notes,
        }))
    }

    /// [`Registry::complete_csr`] for a CSR of purpose `client`: the leaf must hold the
    /// CSR's key and pass every client-certificate rule; it becomes a client
    /// certificate (origin `csr`) in the same batch that marks the CSR completed.
    fn complete_client_csr(
        &self,
        org: &OrgId,
        id: &str,
        certs: Vec<Vec<u8>>,
        key: &keys::PrivateKey,
    ) -> Result<CsrCompletion> {
        let (chain, notes) = self.check_client_chain(certs, key, "the CSR's key")?;
        let rec = self.new_client_record(org, &chain, &key.pkcs8, "csr");
        let mut csr = self.csr_record(org, id)?;
        csr.status = CsrStatus::Completed;
        csr.client_cert_id = Some(rec.id.clone());
        csr.sealed_key = Vec::new();
        // The CSR is re-checked under the lock by the write's guard below: a CSR
        // completed meanwhile has its key gone, and the same leaf is a 409.
        let csr_put = Self::put(layout::csr(org, id), &csr);
        self.store_client_cert(org, &rec, vec![csr_put])?;
        self.notify(Change::Org(org.clone()));
        Ok(CsrCompletion::Client(crate::client_certs::NewClientCert {
            cert: self.get_client_cert(org, &rec.id)?,
            notes,
        }))
    }
}

/// What a completed CSR became: a server or a client certificate (by its purpose).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum CsrCompletion {
    Server(NewServerCert),
    Client(crate::client_certs::NewClientCert),
}

#[cfg(test)]
mod tests;
