//! The authorization dry run (`POST /orgs/{org}/authz/check`): given a client chain, a
//! client id and a topic, what would the broker decide, and which rule decided.
//!
//! It runs the broker's own steps in the broker's order — the org's client verifier
//! (CAs, validity, CRLs), identity extraction, the admitting CA, the block list, the
//! client-id rule, the topic rules — so its answer cannot drift from what a device gets.

use registry::{cert, OrgId};
use rustls::pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};

use crate::acl::Principal;
use crate::server::Broker;

/// What to check.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthzRequest {
    /// Client certificate chain, PEM, leaf first.
    pub certificate: String,
    pub client_id: Option<String>,
    pub topic: Option<String>,
    /// `publish` or `subscribe`.
    pub action: Option<String>,
}

/// The decision and how it was reached.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct AuthzDecision {
    pub allowed: bool,
    /// The rule that decided, in words.
    pub reason: String,
    /// The step that decided: `certificate`, `identity`, `blocked`, `client_id`, `topic`
    /// or `admitted` (everything asked for passed).
    pub stage: &'static str,
    pub identity: Option<String>,
    pub ca_id: Option<String>,
    pub ca_fingerprint: Option<String>,
    /// The client id the certificate must use in this org.
    pub expected_client_id: Option<String>,
    /// The topic or filter the broker would use internally.
    pub internal_topic: Option<String>,
}

impl AuthzDecision {
    fn deny(stage: &'static str, reason: String) -> AuthzDecision {
        AuthzDecision {
            allowed: false,
            reason,
            stage,
            identity: None,
            ca_id: None,
            ca_fingerprint: None,
            expected_client_id: None,
            internal_topic: None,
        }
    }
}

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
            let reason = if tls.cas.is_empty() {
                format!("the org has no active CA certificate ({e})")
            } else {
                format!("TLS would refuse the certificate: {e}")
            };
            return Ok(AuthzDecision::deny("certificate", reason));
        }
        let ca = tls.admitting_ca(&chain);
        let mut d = AuthzDecision::deny("identity", String::new());
        d.ca_id = ca.map(|c| c.id.clone());
        d.ca_fingerprint = ca.map(|c| c.fingerprint.clone());

        let Some(identity) = cert::identity_of(leaf) else {
            d.reason = "no identity (d:/g:/a:) in the subject CN or an email SAN: every CONNECT would be refused".into();
            return Ok(d);
        };
        d.identity = Some(identity.to_string());
        d.expected_client_id = Some(identity.client_id(org));
        match self.ctx.registry.is_blocked(org, &identity) {
            Ok(false) => {}
            Ok(true) => {
                d.stage = "blocked";
                d.reason = format!("{identity} is blocked in org {org}");
                return Ok(d);
            }
            Err(e) => return Err(AuthzError::Internal(e.to_string())),
        }
        if let Some(client_id) = &req.client_id {
            if !identity.admits_client_id(org, client_id) {
                d.stage = "client_id";
                d.reason = format!(
                    "client id {client_id:?} does not match the certificate: expected {:?}",
                    identity.client_id(org)
                );
                return Ok(d);
            }
        }
        let mut principal = Principal::new(org.clone(), identity);
        if let registry::Identity::Gateway { gateway_type, .. } = &principal.identity {
            principal.gateway_scope = tls.policy.gateway_scope(gateway_type);
        }
        principal.scalable = req
            .client_id
            .as_deref()
            .is_some_and(|c| c.starts_with("A:"));
        if let Some(topic) = &req.topic {
            let mapped = match req.action.as_deref().unwrap_or("publish") {
                "publish" => principal.publish_topic(topic),
                "subscribe" => principal.subscribe_filter(topic),
                other => {
                    return Err(AuthzError::BadRequest(format!(
                        "action must be publish or subscribe, not {other:?}"
                    )))
                }
            };
            match mapped {
                Ok(internal) => {
                    d.internal_topic = Some(internal);
                    d.reason = format!(
                        "topic rule for {} allows it",
                        principal.identity.kind().as_str()
                    );
                }
                Err(denied) => {
                    d.stage = "topic";
                    d.reason = denied.0;
                    return Ok(d);
                }
            }
        } else {
            d.reason = "certificate admitted by the org's CA and identity read".into();
        }
        d.allowed = true;
        d.stage = "admitted";
        Ok(d)
    }
}
