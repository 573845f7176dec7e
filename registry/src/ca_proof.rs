//! Proof of possession of a CA's private key (AWS IoT's verification certificate,
//! Azure DPS's verification code), required when the org's security policy has
//! `require_ca_proof`. Without it any org could upload a CA it does not control (a
//! public or another tenant's CA) and admit devices it never issued.
//!
//! The flow: `POST /orgs/{org}/ca-certs/verification-code` gives a random code, valid
//! for [`CODE_TTL`]; the CA's owner issues a certificate with that code as its subject
//! CN, signed by the CA, and uploads the CA with it as `verification_certificate`. The
//! upload is refused with 422 `proof_of_possession_required` without one and
//! `proof_of_possession_failed` when the CA did not sign it or its CN is not a live
//! code of this org. A code is used up by the upload it proves.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::cert::{self, CertError, Rule};
use crate::error::Result;
use crate::layout;
use crate::names::OrgId;
use crate::registry::Registry;
use crate::store::Op;

/// How long a verification code is valid.
pub const CODE_TTL: time::Duration = time::Duration::hours(1);

/// The most unexpired codes an org may hold at once.
pub const MAX_CODES: usize = 100;

/// A verification code, shown when it is made.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VerificationCode {
    /// Put it in the verification certificate's subject CN.
    pub code: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

fn failed(message: impl std::fmt::Display) -> crate::Error {
    CertError::new(Rule::ProofOfPossessionFailed, message).into()
}

impl Registry {
    /// A new verification code for the org (expired codes are dropped on the way).
    pub fn create_ca_verification_code(&self, org: &OrgId) -> Result<VerificationCode> {
        let _g = self.lock();
        self.get_org(org)?;
        let now = OffsetDateTime::now_utc();
        let mut ops = Vec::new();
        let mut live = 0;
        for (key, value) in self.store.scan(&layout::ca_proof_codes(org))? {
            match serde_json::from_slice::<VerificationCode>(&value) {
                Ok(c) if c.expires_at > now => live += 1,
                _ => ops.push(Op::Delete(key)),
            }
        }
        if live >= MAX_CODES {
            return Err(crate::Error::Conflict(format!(
                "the org already has {live} unexpired verification codes; use one or wait for them to expire"
            )));
        }
        let code = VerificationCode {
            code: hex::encode(crate::seal::random_bytes::<16>()),
            expires_at: now + CODE_TTL,
        };
        ops.push(Self::put(layout::ca_proof_code(org, &code.code), &code));
        self.store.apply(ops)?;
        Ok(code)
    }

    /// Checks the proof of possession for the CA `ca_der` if the org requires one; the
    /// code's key to delete with the upload when a proof was checked. Called under the
    /// registry's write lock.
    pub(crate) fn check_ca_proof(
        &self,
        org: &OrgId,
        ca_der: &[u8],
        proof: Option<&[u8]>,
    ) -> Result<Option<String>> {
        let policy: crate::SecurityPolicy =
            self.get_json(&layout::policy(org))?.unwrap_or_default();
        if !policy.require_ca_proof {
            return Ok(None);
        }
        let Some(proof) = proof else {
            return Err(CertError::new(
                Rule::ProofOfPossessionRequired,
                format!(
                    "org {org} requires proof of possession of the CA's key: get a code from \
                     POST /orgs/{org}/ca-certs/verification-code, sign a certificate with CN = \
                     the code with this CA, and upload the CA as JSON with it in \
                     verification_certificate"
                ),
            )
            .into());
        };
        let der = cert::read_single(proof)
            .map_err(|e| failed(format!("the verification certificate: {e}")))?;
        if !cert::issued_by(&der, ca_der) {
            return Err(failed(
                "the verification certificate is not signed by the uploaded CA",
            ));
        }
        let (_, parsed) = X509Certificate::from_der(&der)
            .map_err(|e| failed(format!("the verification certificate: {e}")))?;
        let cn = parsed
            .subject()
            .iter_common_name()
            .find_map(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        let valid = cn.len() == 32
            && cn.bytes().all(|b| b.is_ascii_hexdigit())
            && self
                .get_json::<VerificationCode>(&layout::ca_proof_code(org, &cn))?
                .is_some_and(|c| c.expires_at > OffsetDateTime::now_utc());
        if !valid {
            return Err(failed(format!(
                "the verification certificate's CN {cn:?} is not an unexpired verification code of org {org}"
            )));
        }
        Ok(Some(layout::ca_proof_code(org, &cn)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        (p.self_signed(&key).unwrap(), key)
    }

    fn signed_by(cn: &str, ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let issuer = rcgen::Issuer::from_ca_cert_der(ca.der(), ca_key).unwrap();
        p.signed_by(&key, &issuer).unwrap().pem()
    }

    fn rule(r: Result<crate::CaView>) -> Rule {
        match r {
            Err(Error::Rejected(e)) => e.rule,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_required_proof_must_be_signed_by_the_ca_with_a_live_code() {
        let dir = tempfile::tempdir().unwrap();
        let r = crate::registry::tests::registry(dir.path());
        let acme = r.create_org("acme", "").unwrap().id;
        let mut policy = r.security_policy(&acme).unwrap();
        policy.require_ca_proof = true;
        r.set_security_policy(&acme, policy).unwrap();
        let (root, key) = ca("root");
        let (other, other_key) = ca("other");
        let pem = root.pem();
        assert_eq!(
            rule(r.add_ca(&acme, pem.as_bytes(), "")),
            Rule::ProofOfPossessionRequired
        );
        let code = r.create_ca_verification_code(&acme).unwrap().code;
        let wrong_ca = signed_by(&code, &other, &other_key);
        let wrong_cn = signed_by("0123456789abcdef0123456789abcdef", &root, &key);
        for bad in [wrong_ca, wrong_cn, "garbage".to_owned()] {
            assert_eq!(
                rule(r.add_ca_with_proof(&acme, pem.as_bytes(), "", Some(bad.as_bytes()))),
                Rule::ProofOfPossessionFailed
            );
        }
        assert!(r.list_cas(&acme).unwrap().is_empty(), "nothing stored");
        let good = signed_by(&code, &root, &key);
        r.add_ca_with_proof(&acme, pem.as_bytes(), "", Some(good.as_bytes()))
            .unwrap();
        // The code is used up.
        let (second, second_key) = ca("second");
        let reuse = signed_by(&code, &second, &second_key);
        assert_eq!(
            rule(r.add_ca_with_proof(&acme, second.pem().as_bytes(), "", Some(reuse.as_bytes()))),
            Rule::ProofOfPossessionFailed
        );
    }
}
