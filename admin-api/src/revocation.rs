//! `/orgs/{org}/blocked-devices` and `/orgs/{org}/crls`: revocation. Every change closes
//! the affected live sessions before the response (the registry's listeners run first).

use axum::extract::State;
use axum::http::StatusCode;
use registry::{BlockedDevice, Crl};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ErrorBody;
use crate::extract::{CertUpload, ItemPath, JsonUpload, OrgPath};
use crate::openapi::DerFile;
use crate::{ApiError, AppState, Json};

/// `POST /orgs/{org}/blocked-devices` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"identity": "d:sensor:dev2", "reason": "stolen"}))]
pub(crate) struct BlockRequest {
    /// `d:<type>:<id>`, `g:<type>:<id>` or `a:<appId>`.
    identity: String,
    /// Free text, at most 500 characters, no control or bidi-control characters.
    #[serde(default)]
    reason: String,
}

/// Block an identity.
///
/// Refused at CONNECT (*not authorized*) whatever its certificate or token; its live
/// session is closed before the answer.
#[utoipa::path(
    post,
    path = "/orgs/{org}/blocked-devices",
    tag = "blocked-devices",
    operation_id = "block_device",
    params(OrgPath),
    request_body = BlockRequest,
    responses(
        (status = 201, description = "Blocked.", body = BlockedDevice),
        (status = 409, description = "`conflict`: already blocked.", body = ErrorBody),
    ),
)]
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

/// List the blocked identities.
#[utoipa::path(
    get,
    path = "/orgs/{org}/blocked-devices",
    tag = "blocked-devices",
    operation_id = "list_blocked_devices",
    params(OrgPath),
    responses((status = 200, description = "The blocked identities.", body = Vec<BlockedDevice>)),
)]
pub(crate) async fn list_blocked(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<BlockedDevice>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_blocked(&org)).await?))
}

/// Unblock an identity.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/blocked-devices/{id}",
    tag = "blocked-devices",
    operation_id = "unblock_device",
    params(OrgPath, ("id" = String, Path, description = "The identity, e.g. `d:sensor:dev2`.")),
    responses(
        (status = 204, description = "Unblocked."),
        (status = 400, description = "`bad_request`: not an identity.", body = ErrorBody),
    ),
)]
pub(crate) async fn unblock(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.unblock_device(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Upload a CRL.
///
/// The raw PEM (`X509 CRL`) or DER file, or JSON `{"certificate":"<pem>"}`. It must be
/// signed by one of the org's CAs (active or not). A newer CRL of the same CA replaces
/// the stored one. Checked on every handshake (a revoked client gets the TLS alert
/// `certificate_revoked`); live sessions it revokes are closed before the answer.
#[utoipa::path(
    post,
    path = "/orgs/{org}/crls",
    tag = "crls",
    operation_id = "upload_crl",
    params(OrgPath),
    request_body(content(
        (String = "application/x-pem-file"),
        (inline(DerFile) = "application/pkix-crl"),
        (JsonUpload = "application/json"),
    )),
    responses(
        (status = 201, description = "Stored.", body = Crl),
        (status = 422, description = "Refused; `code` names the rule: `not_a_crl`, `multiple_certificates` (more than one CRL in the file), `crl_not_from_org_ca` (no CA of the org signed it), `crl_outdated` (a newer CRL of that CA is stored).", body = ErrorBody),
    ),
)]
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

/// List the org's CRLs (one per CA at most).
#[utoipa::path(
    get,
    path = "/orgs/{org}/crls",
    tag = "crls",
    operation_id = "list_crls",
    params(OrgPath),
    responses((status = 200, description = "The stored CRLs.", body = Vec<Crl>)),
)]
pub(crate) async fn list_crls(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<Crl>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_crls(&org)).await?))
}

/// Delete a CRL.
///
/// The certificates it revoked are admitted again from the next handshake.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/crls/{id}",
    tag = "crls",
    operation_id = "delete_crl",
    params(OrgPath, ("id" = String, Path, description = "The CRL's id.")),
    responses((status = 204, description = "Deleted.")),
)]
pub(crate) async fn delete_crl(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_crl(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
