//! `/orgs` and `/orgs/{org}`. Creating and deleting orgs is for the platform admin
//! (403 for org tokens); an org token lists and shows its own org only.

use axum::extract::State;
use axum::http::StatusCode;
use registry::Org;
use serde::Deserialize;

use crate::audit::AuditNote;
use crate::auth::{Caller, PlatformAdmin};
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
    _: PlatformAdmin,
    Json(body): Json<NewOrg>,
) -> Result<(StatusCode, AuditNote, Json<Org>), ApiError> {
    let org = state
        .registry(move |r| r.create_org(&body.id, &body.name))
        .await?;
    let note = AuditNote(format!("create org {}", org.id));
    Ok((StatusCode::CREATED, note, Json(org)))
}

/// Every org for the platform admin; the token's own org for an org token.
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Org>>, ApiError> {
    let orgs = state
        .registry(move |r| match &caller.org {
            None => r.list_orgs(),
            Some(own) => Ok(vec![r.get_org(own)?]),
        })
        .await?;
    Ok(Json(orgs))
}

pub(crate) async fn show(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Org>, ApiError> {
    Ok(Json(state.registry(move |r| r.get_org(&org)).await?))
}

/// Deletes the org with everything it owns: certificates, tokens, domains, audit log.
pub(crate) async fn delete(
    State(state): State<AppState>,
    _: PlatformAdmin,
    OrgPath(org): OrgPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_org(&org)).await?;
    Ok(StatusCode::NO_CONTENT)
}
