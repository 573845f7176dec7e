//! Operations endpoints backed by the broker: `GET /metrics` (Prometheus text, platform
//! token) and the authorization dry run `POST /orgs/{org}/authz/check`.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

use crate::auth::PlatformAdmin;
use crate::extract::OrgPath;
use crate::{blocking, ApiError, AppState, DryRunError, Json};

/// Prometheus scrape. Needs the platform token (`bearer_token` in the scrape config):
/// the series name every org.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<impl IntoResponse, ApiError> {
    let text = blocking(move || state.connections.metrics()).await?;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// What the broker would decide for a client chain, client id and topic, and why.
pub(crate) async fn authz_check(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(body): Json<serde_json::Value>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let answer = blocking(move || state.connections.authz_check(&org, body)).await?;
    match answer {
        Ok(v) => Ok(Json(v)),
        Err(DryRunError::BadRequest(m)) => Err(ApiError::BadRequest(m)),
        Err(DryRunError::NotFound(m)) => Err(ApiError::NotFound(m)),
        Err(DryRunError::Internal(m)) => Err(ApiError::Internal(m)),
        Err(DryRunError::Unavailable) => {
            Err(ApiError::Internal("no broker behind this admin API".into()))
        }
    }
}
