//! Who may connect (SPEC sections 3 and 5): from what TLS established and what the
//! CONNECT says, decide the org, the identity and whether the org's security policy
//! admits these credentials. Used by every session and re-applied to live sessions
//! when an org changes.

use std::sync::Arc;

use registry::{names, Identity, OrgId, Registry, Transport};
use time::OffsetDateTime;

use crate::acl::Principal;
use crate::tls::{OrgTls, OrgTlsCache};

/// The username that announces token authentication (Watson's convention).
pub(crate) const TOKEN_USERNAME: &str = "use-token-auth";

/// What the transport established before CONNECT.
pub(crate) struct Arrival {
    pub transport: Transport,
    /// The org's TLS state when SNI chose it (TLS); `None` on plain MQTT.
    pub org_tls: Option<Arc<OrgTls>>,
    /// Whether a verified client certificate was presented.
    pub has_cert: bool,
    /// The identity in that certificate, if it has one.
    pub cert_identity: Option<Identity>,
}

/// An admitted client.
pub(crate) struct Admitted {
    pub principal: Principal,
    /// Set when a valid token was presented: the token's version.
    pub token_version: Option<OffsetDateTime>,
}

/// Why a CONNECT is refused; the text goes to the log (and status reason).
pub(crate) enum Refusal {
    /// CONNACK 5 / 0x87.
    NotAuthorized(String),
    /// CONNACK 4 / 0x86: a token was presented and is wrong.
    BadCredentials(String),
}

/// Decides a CONNECT.
pub(crate) fn admit(
    registry: &Registry,
    tls: &OrgTlsCache,
    arrival: &Arrival,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Result<Admitted, Refusal> {
    let deny = |m: String| Err(Refusal::NotAuthorized(m));
    let from_client_id = names::parse_client_id(client_id);
    let org_tls = match &arrival.org_tls {
        Some(t) => t.clone(),
        None => {
            // Plain MQTT: the org comes from the client id.
            let Some((org, _)) = &from_client_id else {
                return deny(format!("client id {client_id:?} names no org"));
            };
            match tls.get(org) {
                Ok(Some(t)) => t,
                _ => return deny(format!("no org {org}")),
            }
        }
    };
    let org: &OrgId = &org_tls.org;
    let identity = match (&arrival.cert_identity, arrival.has_cert, &from_client_id) {
        (Some(i), _, _) => i.clone(),
        (None, true, _) => {
            return deny(
                "the client certificate carries no identity in its CN or an email SAN".into(),
            )
        }
        (None, false, Some((_, i))) => i.clone(),
        (None, false, None) => return deny(format!("client id {client_id:?} is not an identity")),
    };
    // SPEC 3.4: the client id must be the one the identity implies in this org.
    if !identity.admits_client_id(org, client_id) {
        return deny(format!(
            "client id {client_id:?} does not match identity {identity} (expected {:?})",
            identity.client_id(org)
        ));
    }
    let token_version = match (username, password) {
        (Some(TOKEN_USERNAME), Some(token)) => registry
            .verify_device_token(org, &identity, token)
            .unwrap_or(None),
        _ => None,
    };
    let level = org_tls.policy.level_for(&identity);
    if !level.admits(arrival.transport, arrival.has_cert, token_version.is_some()) {
        let presented_token = username == Some(TOKEN_USERNAME);
        let m = format!(
            "security level {level:?} does not admit {} over {:?}",
            match (arrival.has_cert, presented_token) {
                (true, _) => "a certificate without a valid token",
                (false, true) => "this token",
                (false, false) => "a connection without certificate or token",
            },
            arrival.transport
        );
        return Err(if presented_token && token_version.is_none() {
            Refusal::BadCredentials(m)
        } else {
            Refusal::NotAuthorized(m)
        });
    }
    // A blocked identity is refused whatever its credentials (fail closed on errors).
    if registry.is_blocked(org, &identity).unwrap_or(true) {
        return deny(format!("{identity} is blocked"));
    }
    let mut principal = Principal::new(org.clone(), identity);
    if let Identity::Gateway { gateway_type, .. } = &principal.identity {
        principal.gateway_scope = org_tls.policy.gateway_scope(gateway_type);
    }
    principal.scalable = client_id.starts_with("A:");
    Ok(Admitted {
        principal,
        token_version,
    })
}
