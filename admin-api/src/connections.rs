//! `/orgs/{org}/connections`: the broker's live sessions of an org, through
//! [`crate::ConnectionsView`].

use axum::extract::State;
use axum::http::StatusCode;

use crate::extract::{ItemPath, OrgPath};
use crate::{blocking, ApiError, AppState, Json};

/// Lists live sessions; an unknown org is a 404, not an empty list.
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

/// Closes the session of client id `{id}`.
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
