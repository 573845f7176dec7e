//! `/orgs/{org}/blocked-devices` and `/orgs/{org}/crls`: revocation. Every change closes
//! the affected live sessions before the response (the registry's listeners run first).

use axum::extract::State;
use axum::http::StatusCode;
use registry::{BlockedDevice, Crl};
use serde::Deserialize;

use crate::extract::{CertUpload, ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BlockRequest {
    identity: String,
    #[serde(default)]
    reason: String,
}

pub(crate) async fn block(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(req): Json<BlockRequest>,
) -> Result<(StatusCode, Json<BlockedDevice>), ApiError> {
    let b = state
        .registry(move |r| r.block_device(&org, &req.identity, &req.reason))
        .await?;
    Ok((StatusCode::CREATED, Json(b)))
}

pub(crate) async fn list_blocked(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<BlockedDevice>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_blocked(&org)).await?))
}

/// `DELETE /orgs/{org}/blocked-devices/{identity}` (e.g. `d:sensor:dev2`).
pub(crate) async fn unblock(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.unblock_device(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /orgs/{org}/crls`: the raw PEM or DER CRL.
pub(crate) async fn upload_crl(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    upload: CertUpload,
) -> Result<(StatusCode, Json<Crl>), ApiError> {
    let crl = state
        .registry(move |r| r.add_crl(&org, &upload.bytes))
        .await?;
    Ok((StatusCode::CREATED, Json(crl)))
}

pub(crate) async fn list_crls(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<Crl>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_crls(&org)).await?))
}

pub(crate) async fn delete_crl(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_crl(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
