//! `/orgs/{org}/connections`: the broker's live sessions of an org, through
//! [`crate::ConnectionsView`].

use axum::extract::State;
use axum::http::StatusCode;
use registry::{Identity, Kind, OrgId, Transport};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ErrorBody;
use crate::extract::{ItemPath, OrgPath};
use crate::{blocking, ApiError, AppState, Json};

/// A live MQTT session.
// The broker's `SessionInfo` as it serializes; this crate does not depend on the broker,
// so this is a copy for the schema, which `tests/revocation.rs` compares with the real one.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // a schema only: sessions pass through as JSON
pub(crate) struct Session {
    /// The MQTT client id, e.g. `d:acme:sensor:dev1`.
    client_id: String,
    org: OrgId,
    identity: Identity,
    kind: Kind,
    /// `certificate`, `token` or `certificate+token`.
    auth: String,
    transport: Transport,
    /// The CA that admitted the client certificate; empty without one.
    ca_id: String,
    /// That CA's SHA-256 fingerprint; empty without a client certificate.
    ca_fingerprint: String,
    /// The client certificate's serial, lowercase hex with colons; empty without one.
    cert_serial: String,
    /// When the client certificate expires; `1970-01-01T00:00:00Z` without one.
    #[schema(format = DateTime)]
    cert_not_after: String,
    /// The client's address and port.
    #[schema(example = "127.0.0.1:53412")]
    remote_addr: String,
    /// `mqtt4-tls`, `mqtt5-tls`, or on the plain listener `mqtt4`, `mqtt5`.
    protocol: String,
    /// When the session was admitted.
    #[schema(format = DateTime)]
    since: String,
}

/// List the org's live MQTT sessions.
///
/// An unknown org is a 404, not an empty list.
#[utoipa::path(
    get,
    path = "/orgs/{org}/connections",
    tag = "connections",
    operation_id = "list_connections",
    params(OrgPath),
    responses((status = 200, description = "The live sessions.", body = Vec<Session>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let sessions = blocking(move || -> Result<_, ApiError> {
        state.registry.get_org(&org)?;
        Ok(state.connections.list(&org))
    })
    .await??;
    Ok(Json(sessions))
}

/// Kick a client: close its session.
///
/// MQTT v5 clients get DISCONNECT 0x98 (administrative action); a will is published.
/// The client may reconnect: block its identity to keep it out.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/connections/{id}",
    tag = "connections",
    operation_id = "kick_connection",
    params(OrgPath, ("id" = String, Path, description = "The client id, e.g. `d:acme:sensor:dev1`.")),
    responses(
        (status = 204, description = "Closed."),
        (status = 404, description = "`not_found`: no such org, or no live session with this client id in it.", body = ErrorBody),
    ),
)]
pub(crate) async fn kick(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    blocking(move || -> Result<_, ApiError> {
        state.registry.get_org(&org)?;
        if state.connections.kick(&org, &id) {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::NotFound(format!(
                "no live session with client id {id} in org {org}"
            )))
        }
    })
    .await?
}
