//! `/orgs/{org}/ca-certs`: the CAs whose client certificates an org admits.

use axum::extract::State;
use axum::http::StatusCode;
use registry::cert::CertDetails;
use registry::CaView;
use serde::Deserialize;

use crate::extract::{CertUpload, ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

pub(crate) async fn upload(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    upload: CertUpload,
) -> Result<(StatusCode, Json<CaView>), ApiError> {
    let ca = state
        .registry(move |r| r.add_ca(&org, &upload.bytes, &upload.description))
        .await?;
    Ok((StatusCode::CREATED, Json(ca)))
}

/// Runs the upload checks and stores nothing. The org must exist, like for an upload.
pub(crate) async fn preview(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    upload: CertUpload,
) -> Result<Json<CertDetails>, ApiError> {
    let details = state
        .registry(move |r| {
            r.get_org(&org)?;
            r.preview_ca(&upload.bytes)
        })
        .await?;
    Ok(Json(details))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<CaView>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_cas(&org)).await?))
}

pub(crate) async fn show(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Json<CaView>, ApiError> {
    Ok(Json(state.registry(move |r| r.get_ca(&org, &id)).await?))
}

/// `PATCH` body: each field present is changed, absent ones are kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CaPatch {
    active: Option<bool>,
    description: Option<String>,
}

pub(crate) async fn update(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
    Json(patch): Json<CaPatch>,
) -> Result<Json<CaView>, ApiError> {
    let ca = state
        .registry(move |r| r.update_ca(&org, &id, patch.active, patch.description))
        .await?;
    Ok(Json(ca))
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_ca(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
