//! `/orgs/{org}/ca-certs`: the CAs whose client certificates an org admits.

use axum::extract::State;
use axum::http::StatusCode;
use registry::cert::CertDetails;
use registry::CaView;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ErrorBody;
use crate::extract::{CertUpload, ItemPath, JsonUpload, OrgPath, UploadQuery};
use crate::openapi::DerFile;
use crate::{ApiError, AppState, Json};

/// Upload a CA certificate.
///
/// Exactly one certificate, PEM or DER, with basicConstraints CA:TRUE, currently valid.
/// Active at once: client certificates it issued are admitted from the next handshake.
#[utoipa::path(
    post,
    path = "/orgs/{org}/ca-certs",
    tag = "ca-certs",
    operation_id = "upload_ca_cert",
    params(OrgPath, UploadQuery),
    request_body(
        description = "The certificate: the raw PEM or DER file (any content type but JSON is read as the file), or JSON.",
        content(
            (String = "application/x-pem-file"),
            (inline(DerFile) = "application/pkix-cert"),
            (JsonUpload = "application/json"),
        ),
    ),
    responses(
        (status = 201, description = "Stored, active.", body = CaView),
        (status = 409, description = "`conflict`: the same certificate is already uploaded to this org.", body = ErrorBody),
        (status = 422, description = "The certificate broke a rule; `code` names it: `not_pem_or_der`, `multiple_certificates`, `unexpected_private_key`, `not_a_ca`, `expired`, `not_yet_valid`, `weak_key`, `bad_signature`; `too_many_cas` when the org would have more than 64 active CAs or their subjects would take more than 60000 bytes in the TLS handshake; with `require_ca_proof`, `proof_of_possession_required` (no `verification_certificate`) or `proof_of_possession_failed` (not signed by this CA, or its CN is not an unexpired code of the org).", body = ErrorBody),
    ),
)]
pub(crate) async fn upload(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    upload: CertUpload,
) -> Result<(StatusCode, Json<CaView>), ApiError> {
    let ca = state
        .registry(move |r| {
            r.add_ca_with_proof(
                &org,
                &upload.bytes,
                &upload.description,
                upload.verification_certificate.as_deref(),
            )
        })
        .await?;
    Ok((StatusCode::CREATED, Json(ca)))
}

/// Get a CA verification code.
///
/// For proof of possession (security policy `require_ca_proof`): issue a certificate
/// with this code as its subject CN, signed by the CA to upload, and send it as the
/// upload's `verification_certificate`. Valid for one hour and for one upload.
#[utoipa::path(
    post,
    path = "/orgs/{org}/ca-certs/verification-code",
    tag = "ca-certs",
    operation_id = "create_ca_verification_code",
    params(OrgPath),
    responses(
        (status = 201, description = "A new code.", body = registry::ca_proof::VerificationCode),
        (status = 409, description = "`conflict`: the org already has 100 unexpired codes.", body = ErrorBody),
    ),
)]
pub(crate) async fn verification_code(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<(StatusCode, Json<registry::ca_proof::VerificationCode>), ApiError> {
    let code = state
        .registry(move |r| r.create_ca_verification_code(&org))
        .await?;
    Ok((StatusCode::CREATED, Json(code)))
}

/// Check a CA certificate without storing it.
///
/// Runs the upload checks and stores nothing. The org must exist, like for an upload.
#[utoipa::path(
    post,
    path = "/orgs/{org}/ca-certs/preview",
    tag = "ca-certs",
    operation_id = "preview_ca_cert",
    params(OrgPath),
    request_body(
        description = "The certificate: the raw PEM or DER file (any content type but JSON is read as the file), or JSON.",
        content(
            (String = "application/x-pem-file"),
            (inline(DerFile) = "application/pkix-cert"),
            (JsonUpload = "application/json"),
        ),
    ),
    responses(
        (status = 200, description = "The certificate passes; its parsed details.", body = CertDetails),
        (status = 422, description = "The certificate broke a rule; `code` names it: `not_pem_or_der`, `multiple_certificates`, `unexpected_private_key`, `not_a_ca`, `expired`, `not_yet_valid`, `weak_key`, `bad_signature`.", body = ErrorBody),
    ),
)]
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

/// List the org's CA certificates.
#[utoipa::path(
    get,
    path = "/orgs/{org}/ca-certs",
    tag = "ca-certs",
    operation_id = "list_ca_certs",
    params(OrgPath),
    responses((status = 200, description = "Every CA certificate of the org, active or not.", body = Vec<CaView>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<CaView>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_cas(&org)).await?))
}

/// Show a CA certificate.
#[utoipa::path(
    get,
    path = "/orgs/{org}/ca-certs/{id}",
    tag = "ca-certs",
    operation_id = "show_ca_cert",
    params(OrgPath, ("id" = String, Path, description = "The CA certificate's id.")),
    responses((status = 200, description = "The CA certificate.", body = CaView)),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Json<CaView>, ApiError> {
    Ok(Json(state.registry(move |r| r.get_ca(&org, &id)).await?))
}

/// `PATCH` body: each field present is changed, absent ones are kept.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"active": false}))]
pub(crate) struct CaPatch {
    /// Whether the CA admits client certificates. Deactivating closes the live sessions
    /// it admitted.
    active: Option<bool>,
    /// At most 500 characters, no control or bidi-control characters.
    description: Option<String>,
}

/// Activate or deactivate a CA certificate, or change its description.
#[utoipa::path(
    patch,
    path = "/orgs/{org}/ca-certs/{id}",
    tag = "ca-certs",
    operation_id = "update_ca_cert",
    params(OrgPath, ("id" = String, Path, description = "The CA certificate's id.")),
    request_body(content = CaPatch, content_type = "application/json"),
    responses(
        (status = 200, description = "The CA certificate as changed.", body = CaView),
        (status = 422, description = "`too_many_cas`: re-activating it would take the org over 64 active CAs or 60000 bytes of CA subjects in the TLS handshake.", body = ErrorBody),
    ),
)]
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

/// Delete a CA certificate.
///
/// The live sessions it admitted are closed.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/ca-certs/{id}",
    tag = "ca-certs",
    operation_id = "delete_ca_cert",
    params(OrgPath, ("id" = String, Path, description = "The CA certificate's id.")),
    responses((status = 204, description = "Deleted.")),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_ca(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
