//! Uploaded server certificates: a chain with its private key (PEM, encrypted PEM or
//! PKCS#12), checked against the server-certificate rules, stored inactive.
//!
//! The rules (each a [`Rule`] code, docs/contract.md, section 6): the key matches the leaf; the
//! certificates form one path leaf → intermediates (→ root), reordered when given out of
//! order; the leaf is currently valid, has a strong key, is not a CA, may be used for
//! serverAuth and covers one of the org's host names. The same checks complete a CSR
//! (see [`crate::csr`]).
//!
//! The sealed key and the chain are one record written in one batch, so a crash at any
//! point leaves either both or neither.

use ::time::OffsetDateTime;
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::cert::{self, CertError, Rule};
use crate::error::{Error, Result};
use crate::keys::{self, PrivateKey};
use crate::layout;
use crate::names::OrgId;
use crate::registry::{Change, Registry};
use crate::server_certs::{ServerCert, ServerCertView};

/// The longest chain accepted (leaf included). Real chains have 2–4 certificates.
const MAX_CHAIN: usize = 10;

/// What an operator uploads as a server certificate.
pub enum UploadServerCert {
    /// A certificate chain (PEM, leaf first; DER for a lone leaf) and its private key
    /// (PEM: PKCS#8, encrypted PKCS#8 with `passphrase`, SEC1 or PKCS#1).
    Pem {
        certificate: String,
        private_key: String,
        passphrase: Option<String>,
    },
    /// A PKCS#12 (`.p12`/`.pfx`) file holding one key and its chain.
    Pkcs12 { data: Vec<u8>, password: String },
}

impl UploadServerCert {
    /// The key and the certificates of the upload, read but not yet checked against
    /// any rule (a wrong passphrase or an unreadable file is already a 422 here).
    pub(crate) fn read(&self) -> Result<(PrivateKey, Vec<Vec<u8>>)> {
        Ok(match self {
            UploadServerCert::Pem {
                certificate,
                private_key,
                passphrase,
            } => {
                let certs = cert::read_chain(certificate.as_bytes())?;
                let key = keys::from_pem(private_key.as_bytes(), passphrase.as_deref())?;
                (key, certs)
            }
            UploadServerCert::Pkcs12 { data, password } => keys::from_pkcs12(data, password)?,
        })
    }
}

impl std::fmt::Debug for UploadServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, the passphrase or the PKCS#12 bytes.
        match self {
            UploadServerCert::Pem { .. } => f.write_str("UploadServerCert::Pem(..)"),
            UploadServerCert::Pkcs12 { data, .. } => {
                write!(f, "UploadServerCert::Pkcs12({} bytes)", data.len())
            }
        }
    }
}

/// A server certificate just created, with what certmq did to the input along the way
/// (a reordered chain, dropped duplicates, expired intermediates).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewServerCert {
    #[serde(flatten)]
    pub cert: ServerCertView,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A chain that passed the server-certificate rules: leaf first.
pub(crate) struct CheckedChain {
    pub(crate) chain: Vec<Vec<u8>>,
    pub(crate) notes: Vec<String>,
    /// The leaf's subjectAltName DNS names, lowercase: the names it would claim.
    pub(crate) dns_names: Vec<String>,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| CertError::new(Rule::NotPemOrDer, format!("malformed certificate: {e}")))
}

pub(crate) fn subject(der: &[u8]) -> String {
    parse(der).map_or_else(
        |_| "(unparsable)".into(),
        |c| format!("\"{}\"", c.subject()),
    )
}

pub(crate) fn public_key_of(der: &[u8]) -> Vec<u8> {
    parse(der).map_or_else(
        |_| Vec::new(),
        |c| c.public_key().subject_public_key.data.to_vec(),
    )
}

/// Puts `certs` in leaf-first order: the leaf is a certificate that issues none of the
/// others (preferring the one holding `key_public`, then a non-CA), then each next
/// certificate is the issuer of the previous one (names and signature). Everything
/// uploaded must lie on that one path. Returns the ordered chain and notes on what
/// was changed.
pub(crate) fn order_chain(
    certs: Vec<Vec<u8>>,
    key_public: &[u8],
) -> Result<(Vec<Vec<u8>>, Vec<String>), CertError> {
    let mut notes = Vec::new();
    let given = certs.len();
    let mut unique: Vec<Vec<u8>> = Vec::with_capacity(given);
    for c in certs {
        if !unique.contains(&c) {
            unique.push(c);
        }
    }
    if unique.len() < given {
        notes.push(format!(
            "{} duplicate certificate(s) dropped from the chain",
            given - unique.len()
        ));
    }
    if unique.is_empty() {
        return Err(CertError::new(Rule::NotPemOrDer, "no certificate uploaded"));
    }
    if unique.len() > MAX_CHAIN {
        return Err(CertError::new(
            Rule::ChainOrder,
            format!(
                "the chain holds {} certificates; at most {MAX_CHAIN} are accepted",
                unique.len()
            ),
        ));
    }
    for der in &unique {
        parse(der)?;
    }
    let n = unique.len();
    // issues[i][j]: certificate i issued certificate j.
    let issues: Vec<Vec<bool>> = (0..n)
        .map(|i| {
            (0..n)
                .map(|j| i != j && cert::issued_by(&unique[j], &unique[i]))
                .collect()
        })
        .collect();
    let mut candidates: Vec<usize> = (0..n).filter(|&i| !issues[i].contains(&true)).collect();
    if candidates.is_empty() {
        return Err(CertError::new(
            Rule::ChainOrder,
            "every certificate issues another one (a cycle); upload the leaf and its issuers",
        ));
    }
    // Stable sort: key holder first, then non-CAs, then upload order.
    candidates.sort_by_key(|&i| {
        let is_ca = parse(&unique[i]).is_ok_and(|c| c.is_ca());
        (public_key_of(&unique[i]) != key_public, is_ca)
    });
    let mut order = vec![candidates[0]];
    let mut remaining: Vec<usize> = (0..n).filter(|&i| i != candidates[0]).collect();
    while !remaining.is_empty() {
        let current = order[order.len() - 1];
        match remaining.iter().position(|&r| issues[r][current]) {
            Some(pos) => order.push(remaining.remove(pos)),
            None => {
                let other = remaining[0];
                return Err(CertError::new(
                    Rule::ChainOrder,
                    format!(
                        "certificate {} is not issued by {}{}: the chain must be one path from \
                         the leaf up through its issuers",
                        subject(&unique[current]),
                        subject(&unique[other]),
                        if remaining.len() > 1 {
                            " (nor by any other uploaded certificate)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
        }
    }
    if order.iter().enumerate().any(|(pos, &i)| pos != i) {
        notes.push(format!(
            "the chain was not in leaf-first order; stored as {}",
            order
                .iter()
                .map(|&i| subject(&unique[i]))
                .collect::<Vec<_>>()
                .join(" <- ")
        ));
    }
    let ordered = order.into_iter().map(|i| unique[i].clone()).collect();
    Ok((ordered, notes))
}

/// Whether the SAN DNS name `pattern` (possibly `*.suffix`) matches `host`, as TLS
/// clients match it: case-insensitive, a wildcard stands for exactly one leftmost label.
pub(crate) fn covers(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

/// The rules for a leaf that is to be presented as a server certificate: currently
/// valid with a strong key, not a CA, usable for serverAuth, covering one of `hosts`.
pub(crate) fn check_leaf(
    der: &[u8],
    now: OffsetDateTime,
    hosts: &[String],
) -> Result<(), CertError> {
    let details = cert::check_server_leaf(der, now)?;
    let leaf = parse(der)?;
    if leaf.is_ca() {
        return Err(CertError::new(
            Rule::LeafIsCa,
            format!(
                "the leaf certificate {} is a CA certificate (basicConstraints CA:TRUE); TLS \
                 clients refuse a CA as a server certificate. `openssl req -x509` marks \
                 certificates CA:TRUE unless given `-addext basicConstraints=critical,CA:FALSE`",
                subject(der)
            ),
        ));
    }
    if let Ok(Some(eku)) = leaf.extended_key_usage() {
        if !eku.value.server_auth && !eku.value.any {
            return Err(CertError::new(
                Rule::NotForServerAuth,
                "the leaf certificate's extendedKeyUsage does not include serverAuth, so TLS \
                 clients would refuse it as a server certificate",
            ));
        }
    }
    check_covers("the certificate's DNS names", &details.dns_names, hosts, "")
}

/// `hostname_mismatch` unless one of `names` (`whose` they are, for the message) covers
/// one of `hosts`; `hint` ends the message.
pub(crate) fn check_covers(
    whose: &str,
    names: &[String],
    hosts: &[String],
    hint: &str,
) -> Result<(), CertError> {
    if hosts.iter().any(|h| names.iter().any(|n| covers(n, h))) {
        return Ok(());
    }
    Err(CertError::new(
        Rule::HostnameMismatch,
        format!(
            "{whose} [{}] do not cover {}, the name devices connect to{hint}",
            names.join(", "),
            hosts.join(" or ")
        ),
    ))
}

impl Registry {
    /// Orders `certs` and applies every server-certificate rule; `key` must be the
    /// leaf's key (`key_name` says whose key it is, for the message).
    pub(crate) fn check_server_chain(
        &self,
        org: &OrgId,
        certs: Vec<Vec<u8>>,
        key: &PrivateKey,
        key_name: &str,
    ) -> Result<CheckedChain> {
        let (chain, mut notes) = order_chain(certs, &key.public)?;
        if public_key_of(&chain[0]) != key.public {
            return Err(CertError::new(
                Rule::KeyMismatch,
                format!(
                    "{key_name} does not belong to the leaf certificate {}: their public keys differ",
                    subject(&chain[0])
                ),
            )
            .into());
        }
        let now = OffsetDateTime::now_utc();
        check_leaf(&chain[0], now, &self.org_host_names(org))?;
        for der in &chain[1..] {
            if let Ok(c) = parse(der) {
                if c.validity().not_after.to_datetime() < now {
                    notes.push(format!(
                        "chain certificate {} has expired; clients that need it to build a \
                         path will refuse the chain",
                        subject(der)
                    ));
                }
            }
        }
        let dns_names = crate::claims::dns_names(&chain[0])?;
        Ok(CheckedChain {
            chain,
            notes,
            dns_names,
        })
    }

    /// 409 when the org already has a server certificate with this leaf. Call under
    /// the write lock.
    pub(crate) fn ensure_new_server_leaf(&self, org: &OrgId, leaf: &[u8]) -> Result<()> {
        let fp = cert::fingerprint(leaf);
        for c in self.scan_json::<ServerCert>(&layout::server_certs(org))? {
            let same = cert::read_chain(c.pem.as_bytes())
                .is_ok_and(|chain| cert::fingerprint(&chain[0]) == fp);
            if same {
                return Err(Error::Conflict(format!(
                    "this certificate is already uploaded as server certificate {} \
                     (fingerprint {fp})",
                    c.id
                )));
            }
        }
        Ok(())
    }

    /// Uploads a server certificate chain with its key, or a PKCS#12 file. It is checked
    /// against every server-certificate rule and stored **inactive** (`origin:
    /// "uploaded"`): activate it to present it. Errors: 404 no such org, 409 the same
    /// leaf is already uploaded, 409 `name_taken` a name another org owns
    /// ([`crate::claims`]), 422 a rule failed.
    pub fn upload_server_cert(
        &self,
        org: &OrgId,
        upload: UploadServerCert,
    ) -> Result<NewServerCert> {
        self.get_org(org)?;
        let (key, certs) = upload.read()?;
        let checked = self.check_server_chain(org, certs, &key, "the private key")?;
        let rec = self.new_server_record(org, &checked.chain, &key.pkcs8, "uploaded");
        let _g = self.lock();
        self.get_org(org)?;
        self.ensure_new_server_leaf(org, &checked.chain[0])?;
        self.ensure_names_unclaimed(org, &checked.dns_names)?;
        self.store
            .apply(vec![Self::put(layout::server_cert(org, &rec.id), &rec)])?;
        drop(_g);
        for note in &checked.notes {
            tracing::info!(%org, id = %rec.id, note, "server certificate upload");
        }
        self.notify(Change::Org(org.clone()));
        Ok(NewServerCert {
            cert: ServerCertView::try_from(rec)?,
            notes: checked.notes,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
