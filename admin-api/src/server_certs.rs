//! `/orgs/{org}/server-certs`: the certificates the broker presents for an org's host.

use axum::extract::State;
use axum::http::StatusCode;
use registry::ServerCertView;

use crate::extract::{ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

/// Generates a self-signed certificate for `<org>.<domain>`; it becomes active only
/// when the org has no active one yet.
pub(crate) async fn create_self_signed(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<(StatusCode, Json<ServerCertView>), ApiError> {
    let cert = state.registry(move |r| r.create_self_signed(&org)).await?;
    Ok((StatusCode::CREATED, Json(cert)))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<ServerCertView>>, ApiError> {
    Ok(Json(
        state.registry(move |r| r.list_server_certs(&org)).await?,
    ))
}

pub(crate) async fn show(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Json<ServerCertView>, ApiError> {
    Ok(Json(
        state
            .registry(move |r| r.get_server_cert(&org, &id))
            .await?,
    ))
}

/// Makes this certificate the one presented; the previous one stays, inactive.
pub(crate) async fn activate(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Json<ServerCertView>, ApiError> {
    Ok(Json(
        state
            .registry(move |r| r.activate_server_cert(&org, &id))
            .await?,
    ))
}

/// Deletes an inactive certificate; the active one is a 409.
pub(crate) async fn delete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state
        .registry(move |r| r.delete_server_cert(&org, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
