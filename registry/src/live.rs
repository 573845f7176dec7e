//! What the broker reports about its live state, as the admin API shows it: live
//! sessions and authorization decisions.
//!
//! These types are produced by the broker and served by the admin API. They live here,
//! beside the other domain types, so both crates share one definition (and one OpenAPI
//! schema) without the admin API depending on the broker.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::names::{Identity, Kind, OrgId};
use crate::policy::Transport;

/// Which credentials admitted a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Auth {
    /// A client certificate.
    #[serde(rename = "certificate")]
    Certificate,
    /// A device token (`use-token-auth`).
    #[serde(rename = "token")]
    Token,
    /// Both.
    #[serde(rename = "certificate+token")]
    CertificateAndToken,
}

impl Auth {
    /// The credentials a session presented.
    pub fn of(has_cert: bool, has_token: bool) -> Auth {
        match (has_cert, has_token) {
            (true, true) => Auth::CertificateAndToken,
            (true, false) => Auth::Certificate,
            (false, _) => Auth::Token,
        }
    }
}

/// A live MQTT session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = Session))]
pub struct SessionInfo {
    /// The MQTT client id, e.g. `d:acme:sensor:dev1`.
    pub client_id: String,
    pub org: OrgId,
    pub identity: Identity,
    pub kind: Kind,
    /// `certificate`, `token` or `certificate+token`.
    pub auth: Auth,
    pub transport: Transport,
    /// The CA that admitted the client certificate; empty without one.
    pub ca_id: String,
    /// That CA's SHA-256 fingerprint; empty without a client certificate.
    pub ca_fingerprint: String,
    /// The client certificate's serial, lowercase hex with colons; empty without one.
    pub cert_serial: String,
    /// When the client certificate expires; `1970-01-01T00:00:00Z` without one.
    #[serde(with = "time::serde::rfc3339")]
    pub cert_not_after: OffsetDateTime,
    /// The client's address and port.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "127.0.0.1:53412"))]
    pub remote_addr: SocketAddr,
    /// `mqtt4-tls`, `mqtt5-tls`, or on the plain listener `mqtt4`, `mqtt5`.
    pub protocol: String,
    /// When the session was admitted.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// The node serving the session (`--node-id`; in a cluster, sessions of every node
    /// are listed).
    #[serde(default)]
    pub node: String,
    /// The version of the token that admitted the session, if one did: a session
    /// whose token was replaced since is no longer admitted. Never shown.
    #[serde(skip)]
    pub token_version: Option<OffsetDateTime>,
}

impl SessionInfo {
    /// Whether a client certificate admitted (or helped admit) the session.
    pub fn has_cert(&self) -> bool {
        self.auth != Auth::Token
    }
}

/// What the authorization dry run checks: a client certificate chain, and optionally a
/// client id, a device token and a topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = AuthzCheck))]
#[serde(deny_unknown_fields)]
pub struct AuthzRequest {
    /// The client certificate chain, PEM, leaf first.
    pub certificate: String,
    /// The client id to check against the certificate's identity.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The device token the client would send as password with username
    /// `use-token-auth`, for orgs whose security level asks for one.
    #[serde(default)]
    pub token: Option<String>,
    /// A topic (publish) or topic filter (subscribe) as the client would send it.
    #[serde(default)]
    pub topic: Option<String>,
    /// What to check `topic` for; default `publish`.
    #[serde(default)]
    pub action: Option<Action>,
}

/// What a client does with a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Publish,
    Subscribe,
}

/// The step of admission and authorization that decided, in the broker's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = AuthzStage))]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// TLS refuses the chain: no active CA of the org issued it, expired, revoked by a
    /// CRL (or, for a live session, its CA was deactivated or its serial revoked since).
    Certificate,
    /// No identity in the subject CN or an email SAN (or, without a certificate, in the
    /// client id).
    Identity,
    /// The client id does not match the identity.
    ClientId,
    /// The org's security level does not admit these credentials on this transport
    /// (e.g. a certificate alone where a token is required, or a wrong token).
    SecurityLevel,
    /// The identity is blocked.
    Blocked,
    /// The topic rules refuse the topic.
    Topic,
    /// Everything asked for passed.
    Admitted,
}

impl Stage {
    /// The stage as its JSON name, e.g. `client_id` (also a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Certificate => "certificate",
            Stage::Identity => "identity",
            Stage::ClientId => "client_id",
            Stage::SecurityLevel => "security_level",
            Stage::Blocked => "blocked",
            Stage::Topic => "topic",
            Stage::Admitted => "admitted",
        }
    }
}

/// The dry run's answer: the decision and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuthzDecision {
    pub allowed: bool,
    /// The rule that decided, in words.
    pub reason: String,
    /// The step that decided.
    pub stage: Stage,
    /// The identity the certificate carries (once read).
    pub identity: Option<String>,
    /// The org CA that admits the certificate (once verified).
    pub ca_id: Option<String>,
    pub ca_fingerprint: Option<String>,
    /// The client id the certificate must use in this org.
    pub expected_client_id: Option<String>,
    /// The topic or filter the broker would use internally.
    pub internal_topic: Option<String>,
}

impl AuthzDecision {
    /// A refusal at `stage`, with nothing else known yet.
    pub fn deny(stage: Stage, reason: impl Into<String>) -> AuthzDecision {
        AuthzDecision {
            allowed: false,
            reason: reason.into(),
            stage,
            identity: None,
            ca_id: None,
            ca_fingerprint: None,
            expected_client_id: None,
            internal_topic: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_serializes_as_the_api_names_it() {
        let names: Vec<String> = [Auth::Certificate, Auth::Token, Auth::CertificateAndToken]
            .iter()
            .map(|a| serde_json::to_string(a).unwrap())
            .collect();
        assert_eq!(
            names,
            ["\"certificate\"", "\"token\"", "\"certificate+token\""]
        );
    }

    #[test]
    fn stage_names_match_serde() {
        for s in [
            Stage::Certificate,
            Stage::Identity,
            Stage::ClientId,
            Stage::SecurityLevel,
            Stage::Blocked,
            Stage::Topic,
            Stage::Admitted,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }

    #[test]
    fn dry_run_request_refuses_unknown_fields_and_actions() {
        let ok: AuthzRequest =
            serde_json::from_str(r#"{"certificate":"x","action":"subscribe"}"#).unwrap();
        assert_eq!(ok.action, Some(Action::Subscribe));
        assert!(serde_json::from_str::<AuthzRequest>(r#"{"certificate":"x","nope":1}"#).is_err());
        assert!(
            serde_json::from_str::<AuthzRequest>(r#"{"certificate":"x","action":"read"}"#).is_err()
        );
    }
}

/// A retained message of an org (`GET /orgs/{org}/retained`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RetainedMessage {
    /// The topic, as the org's clients name it.
    pub topic: String,
    /// Payload size, bytes.
    pub bytes: usize,
    /// The QoS it was published with.
    pub qos: u8,
    /// When it was retained.
    #[serde(with = "time::serde::rfc3339")]
    pub retained_at: OffsetDateTime,
}

/// Where an outgoing destination (bridge or webhook) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DestinationState {
    /// Connected (bridge), or the last delivery succeeded (webhook).
    Connected,
    /// Connecting for the first time, or again after a good connection ended.
    Connecting,
    /// The last attempt failed (`last_error` says why); retried with backoff.
    Failed,
}

/// What the broker reports about one outgoing destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DestinationStatus {
    pub state: DestinationState,
    /// Why the last attempt failed, in words: the TLS alert the remote sent, the
    /// certificate problem, the CONNACK refusal, the HTTP status.
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_error_at: Option<OffsetDateTime>,
    /// Since when the current connection is up (bridges).
    #[serde(with = "time::serde::rfc3339::option")]
    pub connected_since: Option<OffsetDateTime>,
    /// Messages delivered: acknowledged by the remote (QoS 1), written (QoS 0), or
    /// answered 2xx (webhooks).
    pub forwarded: u64,
    /// Messages a bridge brought into the org from the remote (its `receive` rules).
    pub received: u64,
    /// Messages waiting in the destination's queue (stored on disk for QoS 1).
    pub queued: usize,
    /// Connection or delivery attempts that failed since the broker started.
    pub failures: u64,
    /// The HTTP status of the last answer (webhooks).
    pub last_http_status: Option<u16>,
}
