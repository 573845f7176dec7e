//! `/orgs/{org}/csrs`: certificate signing requests whose keys are generated and kept on
//! the broker. Create one, download `{id}.pem` for a CA, upload what the CA signed to
//! `{id}/certificate`: the CSR becomes an inactive server certificate.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use registry::{CsrRequest, CsrView, NewServerCert};

use crate::audit::AuditNote;
use crate::extract::{CertUpload, ItemPath, OrgPath};
use crate::server_certs::pem_file;
use crate::{ApiError, AppState, Json};

/// Generates the key pair (ECDSA P-256 unless `key_type` says otherwise) and the CSR.
pub(crate) async fn create(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(request): Json<CsrRequest>,
) -> Result<(StatusCode, AuditNote, Json<CsrView>), ApiError> {
    let csr = state.registry(move |r| r.create_csr(&org, request)).await?;
    let note = AuditNote(format!("create csrs {}", csr.id));
    Ok((StatusCode::CREATED, note, Json(csr)))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<CsrView>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_csrs(&org)).await?))
}

/// `GET .../csrs/{id}`: the CSR as JSON; `GET .../csrs/{id}.pem`: the PEM file alone.
/// (axum path segments cannot carry a suffix, so one route serves both.)
pub(crate) async fn show(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Response, ApiError> {
    match id.strip_suffix(".pem").map(str::to_owned) {
        Some(id) => {
            let csr = state.registry(move |r| r.get_csr(&org, &id)).await?;
            Ok(pem_file(&format!("{}.csr.pem", csr.id), csr.csr_pem).into_response())
        }
        None => {
            let csr = state.registry(move |r| r.get_csr(&org, &id)).await?;
            Ok(Json(csr).into_response())
        }
    }
}

/// Deletes a CSR; a pending CSR's key is destroyed with it.
pub(crate) async fn delete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_csr(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The signed certificate (+ chain) as the raw PEM body (or JSON `{"certificate"}`);
/// answers 201 with the new server certificate.
pub(crate) async fn complete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
    upload: CertUpload,
) -> Result<(StatusCode, AuditNote, Json<NewServerCert>), ApiError> {
    let csr_id = id.clone();
    let cert = state
        .registry(move |r| r.complete_csr(&org, &id, &upload.bytes))
        .await?;
    let note = AuditNote(format!(
        "complete csrs {csr_id} as server-certs {}",
        cert.cert.id
    ));
    Ok((StatusCode::CREATED, note, Json(cert)))
}
