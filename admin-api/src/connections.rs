//! `/orgs/{org}/connections`: the broker's live sessions of an org, through
//! [`crate::ConnectionsView`].

use axum::extract::State;
use axum::http::StatusCode;
use registry::live::SessionInfo;

use crate::error::ErrorBody;
use crate::extract::{ItemPath, OrgPath};
use crate::{blocking, ApiError, AppState, Json};

/// List the org's live MQTT sessions.
///
/// An unknown org is a 404, not an empty list.
#[utoipa::path(
    get,
    path = "/orgs/{org}/connections",
    tag = "connections",
    operation_id = "list_connections",
    params(OrgPath),
    responses((status = 200, description = "The live sessions.", body = Vec<SessionInfo>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<SessionInfo>>, ApiError> {
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
