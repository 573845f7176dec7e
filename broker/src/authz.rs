//! The authorization dry run (`POST /orgs/{org}/authz/check`): given a client chain, a
//! client id, a token and a topic, what would the broker decide, and which rule decided.
//!
//! It runs what a connection runs, in the same order and with the same code: the org's
//! client verifier (CAs, validity, CRLs) as the handshake does, the certificate facts
//! as `tls.rs` reads them after a handshake, the one admission decision
//! (`admission::decide`) as CONNECT does, then the topic rules as a PUBLISH or
//! SUBSCRIBE would. So its answer cannot drift from what a device gets.

use registry::live::{Action, AuthzDecision, AuthzRequest, Stage};
use registry::{cert, OrgId, Transport};
use rustls::pki_types::{CertificateDer, UnixTime};

use crate::admission::{self, Facts};
use crate::server::Broker;

/// Why a dry run could not run at all (as opposed to a deny).
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("org {0} not found")]
    NoOrg(OrgId),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

impl Broker {
    /// Decides `req` for `org` exactly as a connection would be decided.
    pub fn authz_check(
        &self,
        org: &OrgId,
        req: &AuthzRequest,
    ) -> Result<AuthzDecision, AuthzError> {
        let tls = self
            .tls()
            .get(org)
            .map_err(|e| AuthzError::Internal(e.to_string()))?
            .ok_or_else(|| AuthzError::NoOrg(org.clone()))?;
        let chain = cert::read_chain(req.certificate.as_bytes())
            .map_err(|e| AuthzError::BadRequest(format!("certificate: {e}")))?;
        let chain: Vec<CertificateDer<'static>> =
            chain.into_iter().map(CertificateDer::from).collect();
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| AuthzError::BadRequest("no certificate".into()))?;

        if let Err(e) = tls
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            let why = crate::hints::certificate_refusal(&e);
            let reason = if tls.cas.is_empty() {
                format!("the org has no active CA certificate ({why})")
            } else {
                format!("TLS would refuse the certificate: {why}")
            };
            return Ok(AuthzDecision::deny(Stage::Certificate, reason));
        }
        let peer = tls.peer_cert(&chain);
        let mut d = AuthzDecision::deny(Stage::Identity, String::new());
        if let Some(p) = &peer {
            d.ca_id = Some(p.ca_id.clone()).filter(|s| !s.is_empty());
            d.ca_fingerprint = Some(p.ca_fingerprint.clone()).filter(|s| !s.is_empty());
            d.identity = p.identity.as_ref().map(|i| i.to_string());
            // In custom topic mode the rule that applies may ask for another client id
            // (`*`: any, shown as none expected).
            d.expected_client_id = p
                .identity
                .as_ref()
                .and_then(|i| tls.rules.topics.client_id_rule(i).expected(i, org));
        }
        let facts = Facts {
            transport: Transport::Tls,
            cert: peer.as_ref(),
            client_id: req.client_id.as_deref(),
        };
        let token = admission::presented_token(&self.ctx.registry, org, req.token.as_deref());
        let principal = match admission::decide(&tls.rules, &facts, token) {
            Ok(admitted) => admitted.principal,
            Err(refusal) => {
                d.stage = refusal.stage;
                d.reason = refusal.reason;
                return Ok(d);
            }
        };
        if let Some(topic) = &req.topic {
            // The same calls a PUBLISH or SUBSCRIBE makes, with the rule that decided
            // in words (in custom mode: which rule of the policy and which of its
            // filters, or why none).
            let mapped = match req.action.unwrap_or_default() {
                Action::Publish => principal.publish_explained(topic),
                Action::Subscribe => principal.subscribe_explained(topic),
            };
            match mapped {
                Ok((internal, why)) => {
                    d.internal_topic = Some(internal);
                    d.reason = why;
                }
                Err(denied) => {
                    d.stage = Stage::Topic;
                    d.reason = denied.0;
                    return Ok(d);
                }
            }
        } else {
            d.reason = "certificate admitted by the org's CA and identity read".into();
        }
        d.allowed = true;
        d.stage = Stage::Admitted;
        Ok(d)
    }
}
