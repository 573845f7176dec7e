//! Extractors whose rejections are [`ApiError`]s, so malformed requests get the same
//! JSON error shape as everything else.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use registry::OrgId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::ApiError;

/// JSON in and out; a body that is not JSON, or not the expected JSON, is a 400
/// (415 without a JSON content type, 413 over the body limit).
pub(crate) struct Json<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(ApiError::from_rejection(rejection)),
        }
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The path parameters of the matched route, by name.
async fn path_params<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<HashMap<String, String>, ApiError> {
    match Path::<HashMap<String, String>>::from_request_parts(parts, state).await {
        Ok(Path(params)) => Ok(params),
        Err(rejection) => Err(ApiError::from_rejection(rejection)),
    }
}

fn param<'a>(params: &'a HashMap<String, String>, name: &str) -> Result<&'a str, ApiError> {
    params
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| ApiError::Internal(format!("route has no {{{name}}} parameter")))
}

/// The `{org}` segment, checked against the caller's scope: this is the one place the
/// org scope of org tokens is enforced. An invalid org id names no org, and an org
/// token asking for another org must not learn whether it exists, so both are the same
/// 404 as an unknown org, not a 400 or 403.
fn org_param(parts: &Parts, params: &HashMap<String, String>) -> Result<OrgId, ApiError> {
    let raw = param(params, "org")?;
    let not_found = || ApiError::NotFound(format!("org {raw} not found"));
    let org = OrgId::try_from(raw).map_err(|_| not_found())?;
    if Caller::of(parts)?.sees(&org) {
        Ok(org)
    } else {
        Err(not_found())
    }
}

/// The `{org}` path segment, an org the caller may see (see [`org_param`]). Every route
/// under `/orgs/{org}` takes this or [`ItemPath`]; both document `{org}` with this
/// (`params(OrgPath)`).
#[derive(IntoParams)]
#[into_params(names("org"), parameter_in = Path)]
pub(crate) struct OrgPath(
    /// The org id. An org the token does not see answers 404, as one that does not exist.
    pub(crate) OrgId,
);

impl<S: Send + Sync> FromRequestParts<S> for OrgPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = path_params(parts, state).await?;
        Ok(OrgPath(org_param(parts, &params)?))
    }
}

/// The `{org}` and `{id}` path segments of a resource inside an org.
pub(crate) struct ItemPath {
    pub(crate) org: OrgId,
    pub(crate) id: String,
}

impl<S: Send + Sync> FromRequestParts<S> for ItemPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = path_params(parts, state).await?;
        Ok(ItemPath {
            org: org_param(parts, &params)?,
            id: param(&params, "id")?.to_owned(),
        })
    }
}

/// A certificate upload: the raw PEM or DER file with any content type (description
/// from `?description=`), or, with a JSON content type,
/// `{"certificate":"<pem>","description":".."}`.
pub(crate) struct CertUpload {
    pub(crate) bytes: Vec<u8>,
    pub(crate) description: String,
    /// A CA upload's proof of possession (JSON uploads only).
    pub(crate) verification_certificate: Option<Vec<u8>>,
}

/// The JSON form of a certificate (or CRL) upload.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CertificateUpload)]
pub(crate) struct JsonUpload {
    /// The PEM text.
    certificate: String,
    /// Free text kept with a CA certificate (ignored by other uploads).
    #[serde(default)]
    description: String,
    /// A CA upload's proof of possession, when the org's security policy has
    /// `require_ca_proof`: PEM of a certificate signed by the uploaded CA whose subject
    /// CN is a code from `POST /orgs/{org}/ca-certs/verification-code`.
    #[serde(default)]
    verification_certificate: Option<String>,
}

/// The query of a raw certificate upload.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    /// Free text kept with a CA certificate (ignored by other uploads).
    #[serde(default)]
    description: String,
}

impl<S: Send + Sync> FromRequest<S> for CertUpload {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if is_json(req.headers()) {
            let Json(body) = Json::<JsonUpload>::from_request(req, state).await?;
            return Ok(CertUpload {
                bytes: body.certificate.into_bytes(),
                description: body.description,
                verification_certificate: body.verification_certificate.map(String::into_bytes),
            });
        }
        let Query(query) =
            Query::<UploadQuery>::try_from_uri(req.uri()).map_err(ApiError::from_rejection)?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(ApiError::from_rejection)?;
        Ok(CertUpload {
            bytes: bytes.to_vec(),
            description: query.description,
            verification_certificate: None,
        })
    }
}

/// `application/json` or any `application/*+json`, parameters ignored.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn json_content_types() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("application/x-pem-file"));
        assert!(!with("application/pkix-cert"));
        assert!(!with("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
