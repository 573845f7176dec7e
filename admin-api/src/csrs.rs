//! `/orgs/{org}/csrs`: certificate signing requests whose keys are generated and kept on
//! the broker. Create one, download `{id}.pem` for a CA, upload what the CA signed to
//! `{id}/certificate`: the CSR becomes an inactive server certificate.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use registry::{CsrCompletion, CsrRequest, CsrView, OrgId};

use crate::audit::AuditNote;
use crate::error::ErrorBody;
use crate::extract::{CertUpload, ItemPath, JsonUpload, OrgPath};
use crate::server_certs::pem_file;
use crate::{ApiError, AppState, Json};

/// Generate a key pair and a CSR on the broker.
///
/// The key (ECDSA P-256 unless `key_type` says otherwise) never leaves the broker. The
/// SANs must cover one of the org's host names, since the certificate could not be
/// activated otherwise.
#[utoipa::path(
    post,
    path = "/orgs/{org}/csrs",
    tag = "csrs",
    operation_id = "create_csr",
    params(OrgPath),
    request_body(content = CsrRequest, content_type = "application/json", example = json!({
        "subject": {"common_name": "acme.messaging.localhost", "organization": "Acme Corp", "country": "DE"},
        "sans": ["acme.messaging.localhost"],
        "key_type": "ecdsa-p256"
    })),
    responses(
        (status = 201, description = "Created, `pending`.", body = CsrView),
        (status = 409, description = "`name_taken`: a SAN (or a name a wildcard SAN covers) belongs to another org.", body = ErrorBody),
        (status = 422, description = "`hostname_mismatch`: no SAN covers the org's host names.", body = ErrorBody),
    ),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(request): Json<CsrRequest>,
) -> Result<(StatusCode, AuditNote, Json<CsrView>), ApiError> {
    let csr = state.registry(move |r| r.create_csr(&org, request)).await?;
    let note = AuditNote(format!("create csrs {}", csr.id));
    Ok((StatusCode::CREATED, note, Json(csr)))
}

/// List the org's CSRs.
#[utoipa::path(
    get,
    path = "/orgs/{org}/csrs",
    tag = "csrs",
    operation_id = "list_csrs",
    params(OrgPath),
    responses((status = 200, description = "Oldest first.", body = Vec<CsrView>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<CsrView>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_csrs(&org)).await?))
}

/// Show a CSR.
///
/// The PEM alone, as a file: `GET .../csrs/{id}.pem`.
// That is [`download`]: axum path segments cannot carry a suffix, so this route serves
// both.
#[utoipa::path(
    get,
    path = "/orgs/{org}/csrs/{id}",
    tag = "csrs",
    operation_id = "show_csr",
    params(OrgPath, ("id" = String, Path, description = "The CSR's id.")),
    responses((status = 200, description = "The CSR, with its PEM in `csr_pem`.", body = CsrView)),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Response, ApiError> {
    if let Some(id) = id.strip_suffix(".pem") {
        return download(state, org, id.to_owned()).await;
    }
    let csr = state.registry(move |r| r.get_csr(&org, &id)).await?;
    Ok(Json(csr).into_response())
}

/// Download a CSR as a PEM file.
///
/// Hand it to the CA that is to sign it.
#[utoipa::path(
    get,
    path = "/orgs/{org}/csrs/{id}.pem",
    tag = "csrs",
    operation_id = "download_csr",
    params(OrgPath, ("id" = String, Path, description = "The CSR's id.")),
    responses((
        status = 200,
        description = "The PKCS#10 request (`Content-Disposition: attachment; filename=\"<id>.csr.pem\"`).",
        body = String,
        content_type = "application/x-pem-file",
    )),
)]
async fn download(state: AppState, org: OrgId, id: String) -> Result<Response, ApiError> {
    let csr = state.registry(move |r| r.get_csr(&org, &id)).await?;
    Ok(pem_file(&format!("{}.csr.pem", csr.id), csr.csr_pem).into_response())
}

/// [`download`]'s path: it has no route of its own (see [`show`]), so it is added to the
/// OpenAPI document apart from the routes.
#[derive(utoipa::OpenApi)]
#[openapi(paths(download))]
pub(crate) struct DownloadDoc;

/// Delete a CSR.
///
/// A pending CSR's key is destroyed with it; the server certificate of a completed one
/// stays.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/csrs/{id}",
    tag = "csrs",
    operation_id = "delete_csr",
    params(OrgPath, ("id" = String, Path, description = "The CSR's id.")),
    responses((status = 204, description = "Deleted.")),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_csr(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Upload the signed certificate of a CSR.
///
/// The certificate (+ intermediates) as the raw PEM body, or JSON `{"certificate"}`. It
/// must hold the CSR's key and pass the server certificate rules; the CSR becomes
/// `completed` and the answer is the new server certificate, inactive until activated.
#[utoipa::path(
    post,
    path = "/orgs/{org}/csrs/{id}/certificate",
    tag = "csrs",
    operation_id = "complete_csr",
    params(OrgPath, ("id" = String, Path, description = "The CSR's id.")),
    request_body(content(
        (String = "application/x-pem-file"),
        (JsonUpload = "application/json"),
    )),
    responses(
        (status = 201, description = "The new server certificate, inactive (purpose `server`), or the new client certificate (purpose `client`).", body = CsrCompletion),
        (status = 409, description = "`conflict`: the CSR is already completed, or the leaf is already stored. `name_taken`: a DNS name of the leaf (or a name a wildcard covers) belongs to another org.", body = ErrorBody),
        (status = 422, description = "The certificate broke a rule; `code` names it: `key_mismatch` (not the CSR's key), `not_pem_or_der`, `unexpected_private_key`, `chain_order`, `expired`, `not_yet_valid`, `weak_key`, `leaf_is_ca`, `not_for_server_auth` (server), `hostname_mismatch` (server), `not_for_client_auth` (client).", body = ErrorBody),
    ),
)]
pub(crate) async fn complete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
    upload: CertUpload,
) -> Result<(StatusCode, AuditNote, Json<CsrCompletion>), ApiError> {
    let csr_id = id.clone();
    let cert = state
        .registry(move |r| r.complete_csr(&org, &id, &upload.bytes))
        .await?;
    let made = match &cert {
        CsrCompletion::Server(c) => format!("server-certs {}", c.cert.id),
        CsrCompletion::Client(c) => format!("client-certs {}", c.cert.id),
    };
    let note = AuditNote(format!("complete csrs {csr_id} as {made}"));
    Ok((StatusCode::CREATED, note, Json(cert)))
}
