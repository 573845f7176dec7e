//! `/orgs/{org}/security-policy` and `/orgs/{org}/device-tokens`: how devices of an org
//! must authenticate. Changes apply to live sessions at once (the broker re-checks them).

use axum::extract::State;
use axum::http::StatusCode;
use registry::{DeviceToken, Identity, SecurityPolicy};
use serde::Deserialize;

use crate::extract::{ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

pub(crate) async fn show(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<SecurityPolicy>, ApiError> {
    Ok(Json(
        state.registry(move |r| r.security_policy(&org)).await?,
    ))
}

pub(crate) async fn set(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(policy): Json<SecurityPolicy>,
) -> Result<Json<SecurityPolicy>, ApiError> {
    Ok(Json(
        state
            .registry(move |r| r.set_security_policy(&org, policy))
            .await?,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenRequest {
    identity: String,
    /// Omitted: the broker generates one.
    token: Option<String>,
}

/// Sets an identity's token; the answer shows it once.
pub(crate) async fn set_token(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(req): Json<TokenRequest>,
) -> Result<(StatusCode, Json<DeviceToken>), ApiError> {
    let t = state
        .registry(move |r| r.set_device_token(&org, &req.identity, req.token))
        .await?;
    Ok((StatusCode::CREATED, Json(t)))
}

pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<Identity>>, ApiError> {
    Ok(Json(
        state.registry(move |r| r.list_device_tokens(&org)).await?,
    ))
}

pub(crate) async fn delete_token(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state
        .registry(move |r| r.delete_device_token(&org, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
