//! The path a client chain was verified along, and revocation checked along that path.
//!
//! webpki verifies a client chain but does not say which path it took, and it refuses
//! CRLs that RFC 5280 allows (version 1, version 2 without extensions, no nextUpdate):
//! one such CRL used to fail the whole org's TLS config. So certmq verifies the chain
//! with webpki *without* CRLs and checks revocation itself, here, with the same code
//! at the handshake and when an org changes (`Broker::reconcile`):
//!
//! - [`verified_path`] walks from the leaf to an active CA of the org through the
//!   certificates the client sent, matching issuer to subject and checking the
//!   signature wherever a name is ambiguous — so a client cannot have itself recorded
//!   under a CA that did not admit it;
//! - [`Crls`] indexes the org's CRLs by the issuer they speak for; a certificate of the
//!   path is revoked when the CRL of *its* issuer lists its serial. A root's CRL that
//!   lists an intermediate revokes every device below it; an intermediate's CRL (the
//!   intermediate uploaded as an org CA) revokes its devices.
//!
//! CRL signatures are checked when a CRL is uploaded (the registry refuses one no org
//! CA signed). An expired CRL (past nextUpdate) still counts: revocation is permanent.

use std::collections::{HashMap, HashSet};

use registry::cert;
use ring::digest::{digest, SHA256};
use x509_parser::prelude::*;

/// Most certificates a path may have below the CA (leaf + intermediates).
const MAX_DEPTH: usize = 8;

/// A digest of a raw (DER) distinguished name: issuers are matched by it.
pub(crate) type NameKey = [u8; 32];

fn name_key(raw: &[u8]) -> NameKey {
    let mut k = [0; 32];
    k.copy_from_slice(digest(&SHA256, raw).as_ref());
    k
}

/// One certificate of a verified path: the name of its issuer and its serial
/// (lowercase hex with colons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub issuer: NameKey,
    pub serial: String,
}

/// A CA the path may end at: its subject and certificate.
pub(crate) trait Anchor {
    fn subject_raw(&self) -> &[u8];
    fn der(&self) -> &[u8];
}

struct Parsed<'a> {
    der: &'a [u8],
    cert: X509Certificate<'a>,
}

/// The path from `chain[0]` (the leaf) to one of `anchors`, through the other
/// certificates of `chain`, and the index of the anchor it ends at. The path lists
/// the leaf first and stops below the anchor. `None` when no such path exists (or a
/// certificate does not parse).
pub(crate) fn verified_path<A: Anchor>(
    chain: &[impl AsRef<[u8]>],
    anchors: &[A],
) -> Option<(Vec<Link>, usize)> {
    let parsed: Vec<Parsed<'_>> = chain
        .iter()
        .map(|d| {
            let der = d.as_ref();
            X509Certificate::from_der(der)
                .ok()
                .map(|(_, cert)| Parsed { der, cert })
        })
        .collect::<Option<_>>()?;
    let mut current = parsed.first()?;
    let mut path = Vec::new();
    let mut used = vec![false; parsed.len()];
    used[0] = true;
    for _ in 0..MAX_DEPTH {
        let issuer = current.cert.issuer().as_raw();
        path.push(Link {
            issuer: name_key(issuer),
            serial: current.cert.raw_serial_as_string().to_lowercase(),
        });
        // An anchor of that name that signed it ends the path.
        let named: Vec<usize> = (0..anchors.len())
            .filter(|i| anchors[*i].subject_raw() == issuer)
            .collect();
        let anchor = match named.as_slice() {
            [] => None,
            [only] => Some(*only),
            several => several
                .iter()
                .copied()
                .find(|i| cert::issued_by(current.der, anchors[*i].der())),
        };
        if let Some(i) = anchor {
            return Some((path, i));
        }
        // Else the next certificate up: one the client sent, of that name, unused.
        let named: Vec<usize> = (0..parsed.len())
            .filter(|i| !used[*i] && parsed[*i].cert.subject().as_raw() == issuer)
            .collect();
        let next = match named.as_slice() {
            [] => return None,
            [only] => *only,
            several => several
                .iter()
                .copied()
                .find(|i| cert::issued_by(current.der, parsed[*i].der))?,
        };
        used[next] = true;
        current = &parsed[next];
    }
    None
}

/// An org's CRLs, by the issuer they speak for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Crls {
    revoked: HashMap<NameKey, HashSet<String>>,
}

impl Crls {
    /// Indexes `crls` (DER). A CRL that does not parse is skipped and named in the
    /// returned errors (the registry parses every CRL it stores, so this does not
    /// happen short of a corrupt store).
    pub(crate) fn new(crls: &[Vec<u8>]) -> (Crls, Vec<String>) {
        let mut index = Crls::default();
        let mut errors = Vec::new();
        for der in crls {
            match parse_x509_crl(der) {
                Ok((_, crl)) => {
                    index
                        .revoked
                        .entry(name_key(crl.issuer().as_raw()))
                        .or_default()
                        .extend(
                            crl.iter_revoked_certificates()
                                .map(|r| r.raw_serial_as_string().to_lowercase()),
                        );
                }
                Err(e) => errors.push(format!("a stored CRL does not parse: {e}")),
            }
        }
        (index, errors)
    }

    /// Marks `serial` of a certificate issued by `issuer` revoked (tests).
    #[cfg(test)]
    pub(crate) fn insert(&mut self, issuer: NameKey, serial: &str) {
        self.revoked
            .entry(issuer)
            .or_default()
            .insert(serial.to_owned());
    }

    /// Whether any certificate of `path` is revoked by its issuer's CRL.
    pub(crate) fn revokes(&self, path: &[Link]) -> bool {
        path.iter().any(|l| {
            self.revoked
                .get(&l.issuer)
                .is_some_and(|s| s.contains(&l.serial))
        })
    }
}

/// Single certificates the org revoked (`/orgs/{org}/revoked-certs`): by the leaf's
/// SHA-256 fingerprint, or by the org CA the path ends at and the leaf's serial.
#[derive(Debug, Clone, Default)]
pub(crate) struct Revoked {
    fingerprints: HashSet<String>,
    by_ca: HashSet<(String, String)>,
}

impl Revoked {
    pub(crate) fn new(list: &[registry::revoked_certs::RevokedCert]) -> Revoked {
        let mut r = Revoked::default();
        for c in list {
            if let Some(fp) = &c.fingerprint_sha256 {
                r.fingerprints.insert(fp.clone());
            }
            r.by_ca.insert((c.ca_id.clone(), c.serial.clone()));
        }
        r
    }

    /// Whether the leaf of `fingerprint`, admitted by the org CA `ca_id` with `serial`,
    /// is revoked.
    pub(crate) fn revokes(&self, fingerprint: &str, ca_id: &str, serial: &str) -> bool {
        !self.is_empty()
            && (self.fingerprints.contains(fingerprint)
                || self.by_ca.contains(&(ca_id.to_owned(), serial.to_owned())))
    }

    /// Whether nothing is revoked (the handshake then skips the fingerprint).
    pub(crate) fn is_empty(&self) -> bool {
        self.fingerprints.is_empty() && self.by_ca.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use device_sim::certs::{ClientCertOptions, TestCa};

    struct Ca(Vec<u8>, Vec<u8>);
    impl Anchor for Ca {
        fn subject_raw(&self) -> &[u8] {
            &self.0
        }
        fn der(&self) -> &[u8] {
            &self.1
        }
    }
    fn anchor(ca: &TestCa) -> Ca {
        let (_, c) = X509Certificate::from_der(ca.der()).unwrap();
        Ca(c.subject().as_raw().to_vec(), ca.der().to_vec())
    }
    fn ders(pem: &str) -> Vec<Vec<u8>> {
        cert::read_chain(pem.as_bytes()).unwrap()
    }

    #[test]
    fn the_path_goes_through_the_intermediate_to_its_root() {
        let root = TestCa::new("root").unwrap();
        let other = TestCa::new("other root").unwrap();
        let inter = root.issue_intermediate("inter").unwrap();
        let leaf = inter
            .issue_client("d:t:d", ClientCertOptions::default())
            .unwrap();
        let chain = ders(&leaf.chain_pem);
        assert_eq!(chain.len(), 2);
        let (path, i) = verified_path(&chain, &[anchor(&other), anchor(&root)]).unwrap();
        assert_eq!(i, 1, "admitted by the root that signed the intermediate");
        assert_eq!(path.len(), 2);
        // A junk certificate naming the other root does not change the answer.
        let junk = other
            .issue_client("d:t:junk", ClientCertOptions::default())
            .unwrap();
        let mut with_junk = chain.clone();
        with_junk.insert(1, ders(&junk.cert_pem).remove(0));
        let (_, i) = verified_path(&with_junk, &[anchor(&other), anchor(&root)]).unwrap();
        assert_eq!(i, 1);
        // Without the intermediate there is no path.
        assert!(verified_path(&chain[..1], &[anchor(&root)]).is_none());
    }

    #[test]
    fn revocation_follows_the_issuer_of_each_certificate() {
        let root = TestCa::new("root").unwrap();
        let inter = root.issue_intermediate("inter").unwrap();
        let leaf = inter
            .issue_client("d:t:d", ClientCertOptions::default())
            .unwrap();
        let (path, _) = verified_path(&ders(&leaf.chain_pem), &[anchor(&root)]).unwrap();
        let (leaf_link, inter_link) = (&path[0], &path[1]);

        // The root's CRL listing the leaf's serial says nothing about the leaf.
        let mut crls = Crls::default();
        crls.insert(inter_link.issuer, &leaf_link.serial);
        assert!(!crls.revokes(&path));
        // The intermediate's CRL listing the leaf revokes it.
        let mut crls = Crls::default();
        crls.insert(leaf_link.issuer, &leaf_link.serial);
        assert!(crls.revokes(&path));
        // The root's CRL listing the intermediate revokes everything below it.
        let mut crls = Crls::default();
        crls.insert(inter_link.issuer, &inter_link.serial);
        assert!(crls.revokes(&path));
    }

    #[test]
    fn crls_are_indexed_by_their_issuer() {
        let root = TestCa::new("root").unwrap();
        let leaf = root
            .issue_client("d:t:d", ClientCertOptions::default())
            .unwrap();
        let (path, _) = verified_path(&ders(&leaf.chain_pem), &[anchor(&root)]).unwrap();
        let serial = X509Certificate::from_der(&ders(&leaf.cert_pem)[0])
            .unwrap()
            .1
            .raw_serial()
            .to_vec();
        let crl = root.crl_pem(&[&serial], 1).unwrap();
        let der = cert::pem_blocks(crl.as_bytes()).unwrap().remove(0).1;
        let (crls, errors) = Crls::new(&[der, b"garbage".to_vec()]);
        assert!(crls.revokes(&path));
        assert_eq!(errors.len(), 1);
    }
}
