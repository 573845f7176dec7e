//! `/orgs/{org}/client-certs`: the identities certmq presents when it connects to
//! others (bridges, webhooks). Uploaded in the same forms as a server certificate, or
//! made from a CSR of purpose `client`; keys are sealed and never returned.

use axum::extract::State;
use axum::http::StatusCode;
use registry::{ClientCertPreview, ClientCertView, NewClientCert};

use crate::audit::AuditNote;
use crate::error::ErrorBody;
use crate::extract::{ItemPath, OrgPath};
use crate::server_certs::{ServerCertForm, ServerCertJson, ServerCertUpload};
use crate::{ApiError, AppState, Json};

/// Upload a client certificate with its private key, or a PKCS#12 file.
///
/// The same forms as a server certificate upload: JSON (a PEM chain + key with an
/// optional passphrase, or a base64 PKCS#12 file with its password) or a
/// `multipart/form-data` form. The leaf must be valid now, have a strong key, not be a
/// CA and allow clientAuth.
#[utoipa::path(
    post,
    path = "/orgs/{org}/client-certs",
    tag = "client-certs",
    operation_id = "upload_client_cert",
    params(OrgPath),
    request_body(content(
        (ServerCertJson = "application/json"),
        (ServerCertForm = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored.", body = NewClientCert),
        (status = 409, description = "`conflict`: the same leaf certificate is already stored in this org, or the org has 100 client certificates.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: neither JSON nor a form.", body = ErrorBody),
        (status = 422, description = "The chain or key broke a rule; `code` names it: `not_pem_or_der`, `unexpected_private_key`, `unsupported_key_format`, `bad_passphrase`, `malformed_pkcs12`, `key_mismatch`, `chain_order`, `expired`, `not_yet_valid`, `weak_key`, `leaf_is_ca`, `not_for_client_auth`.", body = ErrorBody),
    ),
)]
pub(crate) async fn upload(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    ServerCertUpload(upload): ServerCertUpload,
) -> Result<(StatusCode, AuditNote, Json<NewClientCert>), ApiError> {
    let cert = state
        .registry(move |r| r.upload_client_cert(&org, upload))
        .await?;
    let note = AuditNote(format!("upload client-certs {}", cert.cert.id));
    Ok((StatusCode::CREATED, note, Json(cert)))
}

/// Check a client certificate upload without storing it.
///
/// The same body and the same checks as the upload; the answer is what would be stored
/// (the leaf's details, the chain's length, what would be fixed), or the 422 of the rule
/// it breaks. Nothing is kept, not even the key.
#[utoipa::path(
    post,
    path = "/orgs/{org}/client-certs/preview",
    tag = "client-certs",
    operation_id = "preview_client_cert",
    params(OrgPath),
    request_body(content(
        (ServerCertJson = "application/json"),
        (ServerCertForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "It would be accepted.", body = ClientCertPreview),
        (status = 415, description = "`unsupported_media_type`: neither JSON nor a form.", body = ErrorBody),
        (status = 422, description = "A rule failed; `code` names it, as for the upload.", body = ErrorBody),
    ),
)]
pub(crate) async fn preview(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    ServerCertUpload(upload): ServerCertUpload,
) -> Result<Json<ClientCertPreview>, ApiError> {
    Ok(Json(
        state
            .registry(move |r| r.preview_client_cert(&org, upload))
            .await?,
    ))
}

/// List the org's client certificates, newest first.
#[utoipa::path(
    get,
    path = "/orgs/{org}/client-certs",
    tag = "client-certs",
    operation_id = "list_client_certs",
    params(OrgPath),
    responses((status = 200, description = "Every client certificate of the org, with the destinations using it.", body = Vec<ClientCertView>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<ClientCertView>>, ApiError> {
    Ok(Json(
        state.registry(move |r| r.list_client_certs(&org)).await?,
    ))
}

/// Show one client certificate.
#[utoipa::path(
    get,
    path = "/orgs/{org}/client-certs/{id}",
    tag = "client-certs",
    operation_id = "get_client_cert",
    params(OrgPath, ("id" = String, Path, description = "The client certificate's id.")),
    responses((status = 200, description = "The certificate (never its key).", body = ClientCertView)),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Json<ClientCertView>, ApiError> {
    Ok(Json(
        state
            .registry(move |r| r.get_client_cert(&org, &id))
            .await?,
    ))
}

/// Delete a client certificate and its key.
///
/// Refused while a bridge or webhook uses it: give those another `client_cert` first.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/client-certs/{id}",
    tag = "client-certs",
    operation_id = "delete_client_cert",
    params(OrgPath, ("id" = String, Path, description = "The client certificate's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 409, description = "`conflict`: a destination uses it (the message names them).", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state
        .registry(move |r| r.delete_client_cert(&org, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
