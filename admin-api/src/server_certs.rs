//! `/orgs/{org}/server-certs`: the certificates the broker presents for an org's host.

use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use base64::Engine;
use registry::{NewServerCert, ServerCertView, UploadServerCert};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::audit::AuditNote;
use crate::error::ErrorBody;
use crate::extract::{is_json, ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

/// Upload a server certificate chain with its private key, or a PKCS#12 file.
///
/// JSON (a PEM chain + key, or a base64 PKCS#12 file) or a `multipart/form-data` form
/// with the same field names. Stored inactive (activate it to present it); `notes` in
/// the answer say what was fixed on the way, e.g. the chain order.
#[utoipa::path(
    post,
    path = "/orgs/{org}/server-certs",
    tag = "server-certs",
    operation_id = "upload_server_cert",
    params(OrgPath),
    request_body(content(
        (ServerCertJson = "application/json"),
        (ServerCertForm = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored, inactive.", body = NewServerCert),
        (status = 409, description = "`conflict`: the same leaf certificate is already stored in this org. `name_taken`: a DNS name of the leaf (or a name a wildcard covers) belongs to another org.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: neither JSON nor a form.", body = ErrorBody),
        (status = 422, description = "The chain or key broke a rule; `code` names it: `not_pem_or_der`, `unexpected_private_key`, `unsupported_key_format`, `bad_passphrase`, `malformed_pkcs12`, `key_mismatch`, `chain_order`, `expired`, `not_yet_valid`, `weak_key`, `leaf_is_ca`, `not_for_server_auth`, `hostname_mismatch`.", body = ErrorBody),
    ),
)]
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

/// Download the certificate chain as a PEM file.
///
/// Leaf first, then the intermediates; never the key.
#[utoipa::path(
    get,
    path = "/orgs/{org}/server-certs/{id}/chain.pem",
    tag = "server-certs",
    operation_id = "download_server_cert_chain",
    params(OrgPath, ("id" = String, Path, description = "The server certificate's id.")),
    responses((
        status = 200,
        description = "The chain (`Content-Disposition: attachment; filename=\"<id>-chain.pem\"`).",
        body = String,
        content_type = "application/x-pem-file",
    )),
)]
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
pub(crate) struct ServerCertUpload(pub(crate) UploadServerCert);

/// A server certificate upload as JSON: a PEM chain with its key, or a PKCS#12 file.
// The documented shapes; [`UploadFields`] reads them (the tests below keep the two in
// step).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // a schema only (and the tests' check of it)
pub(crate) enum ServerCertJson {
    Pem(PemUpload),
    Pkcs12(Pkcs12Upload),
}

/// A PEM chain and its private key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // a schema only
pub(crate) struct PemUpload {
    /// The chain, PEM: the leaf and its intermediates (any order; the root may be
    /// included), at most 10 certificates.
    certificate: String,
    /// PEM: PKCS#8 (`PRIVATE KEY`, or `ENCRYPTED PRIVATE KEY` under PBES2), SEC1
    /// (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    private_key: String,
    /// The passphrase of an encrypted `private_key`.
    passphrase: Option<String>,
}

/// A PKCS#12 (`.p12`, `.pfx`) file holding one private key and its chain.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // a schema only
pub(crate) struct Pkcs12Upload {
    /// The file, base64 (line breaks are ignored).
    #[schema(content_encoding = "base64")]
    pkcs12: String,
    /// The file's password; missing: empty.
    password: Option<String>,
}

/// A server certificate upload as a form: the PKCS#12 file with its password, or
/// `certificate`, `private_key` and `passphrase` (as text or files).
#[derive(ToSchema)]
#[allow(dead_code)] // a schema only: `read_multipart` reads the form
pub(crate) struct ServerCertForm {
    /// The PKCS#12 file itself (not base64).
    #[schema(value_type = Option<String>, format = Binary)]
    pkcs12: Option<Vec<u8>>,
    password: Option<String>,
    certificate: Option<String>,
    private_key: Option<String>,
    passphrase: Option<String>,
}

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

/// Generate a self-signed server certificate.
///
/// For trials and bootstrap: ECDSA P-256, valid 397 days, for `<org>.<domain>` and
/// `<org>.<custom domain>` of each custom domain. It becomes active only when the org
/// has no active one yet.
#[utoipa::path(
    post,
    path = "/orgs/{org}/server-certs/self-signed",
    tag = "server-certs",
    operation_id = "create_self_signed_server_cert",
    params(OrgPath),
    responses(
        (status = 201, description = "Created.", body = ServerCertView),
        (status = 409, description = "`name_taken`: one of the org's host names belongs to another org.", body = ErrorBody),
    ),
)]
pub(crate) async fn create_self_signed(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<(StatusCode, Json<ServerCertView>), ApiError> {
    let cert = state.registry(move |r| r.create_self_signed(&org)).await?;
    Ok((StatusCode::CREATED, Json(cert)))
}

/// List the org's server certificates.
#[utoipa::path(
    get,
    path = "/orgs/{org}/server-certs",
    tag = "server-certs",
    operation_id = "list_server_certs",
    params(OrgPath),
    responses((status = 200, description = "Every server certificate of the org; at most one is active.", body = Vec<ServerCertView>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<ServerCertView>>, ApiError> {
    Ok(Json(
        state.registry(move |r| r.list_server_certs(&org)).await?,
    ))
}

/// Show a server certificate.
#[utoipa::path(
    get,
    path = "/orgs/{org}/server-certs/{id}",
    tag = "server-certs",
    operation_id = "show_server_cert",
    params(OrgPath, ("id" = String, Path, description = "The server certificate's id.")),
    responses((status = 200, description = "The server certificate (chain, never the key).", body = ServerCertView)),
)]
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

/// Activate a server certificate.
///
/// Makes it the one presented from the next handshake; the previous one stays, inactive
/// (rolling back is activating it again).
#[utoipa::path(
    post,
    path = "/orgs/{org}/server-certs/{id}/activate",
    tag = "server-certs",
    operation_id = "activate_server_cert",
    params(OrgPath, ("id" = String, Path, description = "The server certificate's id.")),
    responses(
        (status = 200, description = "Now active.", body = ServerCertView),
        (status = 409, description = "`name_taken`: a DNS name of the leaf (or a name a wildcard covers) belongs to another org. Activating claims the leaf's names; the first org to claim a name keeps it.", body = ErrorBody),
        (status = 422, description = "The leaf is not (or no longer) valid now: `expired`, `not_yet_valid`.", body = ErrorBody),
    ),
)]
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

/// Delete a server certificate.
///
/// Inactive ones only, with their key.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/server-certs/{id}",
    tag = "server-certs",
    operation_id = "delete_server_cert",
    params(OrgPath, ("id" = String, Path, description = "The server certificate's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 409, description = "`conflict`: it is the active certificate.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state
        .registry(move |r| r.delete_server_cert(&org, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    use utoipa::PartialSchema;

    fn properties(schema: RefOr<Schema>) -> Vec<String> {
        match schema {
            RefOr::T(Schema::Object(o)) => o.properties.into_keys().collect(),
            _ => panic!("not an object schema"),
        }
    }

    /// The documented upload shapes are what [`UploadFields`] reads: a body with every
    /// documented field of a shape parses and builds the upload it describes.
    #[test]
    fn documented_shapes_are_read() {
        let body = |names: Vec<String>| {
            let obj: serde_json::Map<_, _> = names
                .into_iter()
                .map(|n| (n, serde_json::Value::from("AAAA")))
                .collect();
            let doc: ServerCertJson = serde_json::from_value(obj.clone().into()).unwrap();
            let fields: UploadFields = serde_json::from_value(obj.into()).unwrap();
            (doc, fields)
        };
        let (doc, fields) = body(properties(PemUpload::schema()));
        assert!(matches!(doc, ServerCertJson::Pem(_)));
        assert!(matches!(
            fields.build(None),
            Ok(UploadServerCert::Pem { .. })
        ));
        let (doc, mut fields) = body(properties(Pkcs12Upload::schema()));
        assert!(matches!(doc, ServerCertJson::Pkcs12(_)));
        let data = fields.pkcs12.take().map(String::into_bytes);
        assert!(matches!(
            fields.build(data),
            Ok(UploadServerCert::Pkcs12 { .. })
        ));
        // The form has the same names.
        let form: serde_json::Map<_, _> = properties(ServerCertForm::schema())
            .into_iter()
            .map(|n| (n, serde_json::Value::from("x")))
            .collect();
        serde_json::from_value::<UploadFields>(form.into()).unwrap();
    }
}
