//! `/orgs` and `/orgs/{org}`.

use axum::extract::State;
use axum::http::StatusCode;
use registry::Org;
use serde::Deserialize;

use crate::extract::OrgPath;
use crate::{ApiError, AppState, Json};

/// `POST /orgs` body; an empty or missing name defaults to the id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewOrg {
    id: String,
    #[serde(default)]
    name: String,
}

pub(crate) async fn create(
    State(state): State<AppState>,
    Json(body): Json<NewOrg>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    let org = state
        .registry(move |r| r.create_org(&body.id, &body.name))
        .await?;
    Ok((StatusCode::CREATED, Json(org)))
}

pub(crate) async fn list(State(state): State<AppState>) -> Result<Json<Vec<Org>>, ApiError> {
    Ok(Json(state.registry(|r| r.list_orgs()).await?))
}

pub(crate) async fn show(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Org>, ApiError> {
    Ok(Json(state.registry(move |r| r.get_org(&org)).await?))
}

/// Deletes the org with all its certificates.
pub(crate) async fn delete(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_org(&org)).await?;
    Ok(StatusCode::NO_CONTENT)
}
