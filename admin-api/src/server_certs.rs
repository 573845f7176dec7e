//! `/orgs/{org}/server-certs`: the certificates the broker presents for an org's host.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use registry::{NewServerCert, ServerCertView, UploadServerCert};
use serde::Deserialize;

use crate::audit::AuditNote;
use crate::extract::{is_json, ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

/// Uploads a chain with its key, or a PKCS#12 file ([`ServerCertUpload`]). It is stored
/// inactive; `notes` in the answer say what was fixed on the way (e.g. chain order).
pub(crate) async fn upload(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    ServerCertUpload(upload): ServerCertUpload,
) -> Result<(StatusCode, AuditNote, Json<NewServerCert>), ApiError> {
    let cert = state
        .registry(move |r| r.upload_server_cert(&org, upload))
        .await?;
    let note = AuditNote(format!("upload server-certs {}", cert.cert.id));
    Ok((StatusCode::CREATED, note, Json(cert)))
}

/// The certificate chain as a PEM file (leaf first), never the key.
pub(crate) async fn chain_pem(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<impl IntoResponse, ApiError> {
    let cert = state
        .registry(move |r| r.get_server_cert(&org, &id))
        .await?;
    Ok(pem_file(&format!("{}-chain.pem", cert.id), cert.pem))
}

/// A PEM download: `application/x-pem-file`, saved as `filename`.
pub(crate) fn pem_file(filename: &str, pem: String) -> impl IntoResponse {
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        pem,
    )
}

/// The body of a server certificate upload, JSON or `multipart/form-data` with the same
/// field names (`pkcs12` then being the file itself, not base64):
/// `{"certificate":"<pem chain>","private_key":"<pem>","passphrase":".."}` or
/// `{"pkcs12":"<base64>","password":".."}`.
pub(crate) struct ServerCertUpload(UploadServerCert);

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadFields {
    certificate: Option<String>,
    private_key: Option<String>,
    passphrase: Option<String>,
    /// Base64 in JSON; raw bytes in a multipart form (decoded before [`Self::build`]).
    pkcs12: Option<String>,
    password: Option<String>,
}

impl UploadFields {
    fn build(self, pkcs12: Option<Vec<u8>>) -> Result<UploadServerCert, ApiError> {
        let bad = |m: &str| Err(ApiError::BadRequest(m.to_owned()));
        match pkcs12 {
            Some(data) => {
                if self.certificate.is_some()
                    || self.private_key.is_some()
                    || self.passphrase.is_some()
                {
                    return bad("give either `pkcs12` (+ `password`) or `certificate` + `private_key` (+ `passphrase`), not both");
                }
                Ok(UploadServerCert::Pkcs12 {
                    data,
                    password: self.password.unwrap_or_default(),
                })
            }
            None => {
                if self.password.is_some() {
                    return bad("`password` goes with `pkcs12`; an encrypted PEM key's passphrase is `passphrase`");
                }
                match (self.certificate, self.private_key) {
                    (Some(certificate), Some(private_key)) => Ok(UploadServerCert::Pem {
                        certificate,
                        private_key,
                        passphrase: self.passphrase,
                    }),
                    _ => bad("give `certificate` (PEM chain, leaf first) and `private_key` (PEM), or `pkcs12` and `password`"),
                }
            }
        }
    }
}

async fn read_multipart(mut form: Multipart) -> Result<UploadServerCert, ApiError> {
    let mut fields = UploadFields::default();
    let mut pkcs12 = None;
    while let Some(field) = form.next_field().await.map_err(ApiError::from_rejection)? {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(ApiError::from_rejection)?;
        let text = || {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::BadRequest(format!("form field `{name}` is not UTF-8 text")))
        };
        let slot = match name.as_str() {
            "pkcs12" => {
                if pkcs12.replace(bytes.to_vec()).is_some() {
                    return Err(ApiError::BadRequest("form field `pkcs12` given twice".into()));
                }
                continue;
            }
            "certificate" => &mut fields.certificate,
            "private_key" => &mut fields.private_key,
            "passphrase" => &mut fields.passphrase,
            "password" => &mut fields.password,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown form field `{other}`; expected pkcs12, password, certificate, private_key or passphrase"
                )))
            }
        };
        if slot.replace(text()?).is_some() {
            return Err(ApiError::BadRequest(format!(
                "form field `{name}` given twice"
            )));
        }
    }
    fields.build(pkcs12)
}

impl<S: Send + Sync> FromRequest<S> for ServerCertUpload {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if is_json(req.headers()) {
            let Json(mut fields) = Json::<UploadFields>::from_request(req, state).await?;
            let pkcs12 = match fields.pkcs12.take() {
                Some(b64) => {
                    // `base64 file.p12` wraps lines; whitespace is not data.
                    let compact: String = b64.split_ascii_whitespace().collect();
                    Some(
                        base64::engine::general_purpose::STANDARD
                            .decode(compact)
                            .map_err(|e| {
                                ApiError::BadRequest(format!("`pkcs12` is not base64: {e}"))
                            })?,
                    )
                }
                None => None,
            };
            return Ok(ServerCertUpload(fields.build(pkcs12)?));
        }
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
        if multipart {
            let form = Multipart::from_request(req, state)
                .await
                .map_err(ApiError::from_rejection)?;
            return Ok(ServerCertUpload(read_multipart(form).await?));
        }
        Err(ApiError::UnsupportedMediaType(
            "send application/json or multipart/form-data".into(),
        ))
    }
}

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
