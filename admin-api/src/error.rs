//! The one error type every handler and extractor returns, and its JSON shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use registry::cert::CertError;
use serde::Serialize;
use utoipa::ToSchema;

/// Everything the admin API answers with when a request fails.
///
/// Its [`IntoResponse`] is the only place that builds an error body, so every failure —
/// handler, extractor, auth, unknown route — has the contract's error shape (docs/api.md):
/// `{"error":{"code":"<machine_code>","message":"<human text>"}}`.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 400: the request is malformed (bad JSON, invalid field).
    BadRequest(String),
    /// 401: no bearer token, or not the right one.
    Unauthorized,
    /// 403: the caller sees the resource but its token may not do this (an org token
    /// creating or deleting orgs).
    Forbidden(String),
    /// 403 `raise_needs_platform_token`: an org token asked to raise one of its org's
    /// limits; only the platform admin may.
    RaiseNeedsPlatformToken(String),
    /// 404: no such resource, including other orgs' resources and invalid ids.
    NotFound(String),
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 409: duplicate, or the change conflicts with the current state.
    Conflict(String),
    /// 409 `name_taken`: a host name another org already uses (docs/security.md).
    NameTaken(String),
    /// 413: the body is over [`crate::MAX_BODY_BYTES`].
    PayloadTooLarge,
    /// 415: the body's content type does not fit the endpoint.
    UnsupportedMediaType(String),
    /// 422: a certificate broke a rule; the code names the rule.
    Rejected(CertError),
    /// 500: the detail is logged, never sent.
    Internal(String),
    /// 503 `store_unavailable`: the registry database (PostgreSQL) cannot be reached,
    /// so no change can be made until it is back; the message says so.
    StoreUnavailable(String),
}

impl ApiError {
    fn status_code_message(self) -> (StatusCode, &'static str, String) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid bearer token".into(),
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::RaiseNeedsPlatformToken(m) => {
                (StatusCode::FORBIDDEN, "raise_needs_platform_token", m)
            }
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this resource does not support the request method".into(),
            ),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::NameTaken(m) => (StatusCode::CONFLICT, "name_taken", m),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is larger than {} bytes",
                    crate::MAX_BODY_BYTES
                ),
            ),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
            ),
            ApiError::Rejected(e) => (StatusCode::UNPROCESSABLE_ENTITY, e.rule.code(), e.message),
            ApiError::Internal(detail) => {
                tracing::error!(cause = %detail, "admin API request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the server log".into(),
                )
            }
            ApiError::StoreUnavailable(m) => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", m)
            }
        }
    }
}

/// The machine code of an error response, as a response extension, so the audit log
/// can record why a request failed without parsing the body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub(crate) &'static str);

/// The body of every error answer: `{"error":{"code":"..","message":".."}}`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"error": {"code": "not_a_ca", "message": "not a CA certificate: basicConstraints CA:TRUE is required"}}))]
pub(crate) struct ErrorBody {
    pub(crate) error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorDetail {
    /// Machine-readable: one of [`CODES`], or with 422 the certificate rule that failed.
    #[schema(schema_with = crate::openapi::error_code_schema)]
    pub(crate) code: &'static str,
    /// For humans: what was wrong and, for a rule, which one.
    pub(crate) message: String,
}

/// The status and code of every [`ApiError`] but [`ApiError::Rejected`], whose code is
/// the rule's (`registry::cert::Rule::code`, always 422). The OpenAPI document lists them.
pub(crate) const CODES: [(StatusCode, &str); 12] = [
    (StatusCode::BAD_REQUEST, "bad_request"),
    (StatusCode::UNAUTHORIZED, "unauthorized"),
    (StatusCode::FORBIDDEN, "forbidden"),
    (StatusCode::FORBIDDEN, "raise_needs_platform_token"),
    (StatusCode::NOT_FOUND, "not_found"),
    (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    (StatusCode::CONFLICT, "conflict"),
    (StatusCode::CONFLICT, "name_taken"),
    (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
    (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
];

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = matches!(self, ApiError::Unauthorized);
        let (status, code, message) = self.status_code_message();
        let body = ErrorBody {
            error: ErrorDetail { code, message },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        resp.extensions_mut().insert(ErrorCode(code));
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<registry::Error> for ApiError {
    fn from(e: registry::Error) -> ApiError {
        match e {
            registry::Error::NotFound(m) => ApiError::NotFound(m),
            registry::Error::Conflict(m) => ApiError::Conflict(m),
            registry::Error::NameTaken(m) => ApiError::NameTaken(m),
            registry::Error::BadRequest(m) => ApiError::BadRequest(m),
            registry::Error::RaiseNeedsPlatformToken(m) => ApiError::RaiseNeedsPlatformToken(m),
            registry::Error::Rejected(c) => ApiError::Rejected(c),
            registry::Error::Store(e) if e.is_unavailable() => ApiError::StoreUnavailable(e.0),
            e @ (registry::Error::Store(_)
            | registry::Error::Seal(_)
            | registry::Error::Corrupt(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

impl ApiError {
    /// Turns an axum extractor rejection into an [`ApiError`], keeping its status class:
    /// body limits stay 413, wrong content types stay 415, the rest is the client's 400.
    pub(crate) fn from_rejection<R: IntoResponse + std::fmt::Display>(r: R) -> ApiError {
        let message = r.to_string();
        match r.into_response().status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(message),
            s if s.is_server_error() => ApiError::Internal(message),
            _ => ApiError::BadRequest(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use registry::cert::Rule;

    /// [`CODES`] is what the variants answer (the OpenAPI document is built from it).
    #[test]
    fn codes_list_every_variant() {
        let m = || String::from("m");
        let all = [
            ApiError::BadRequest(m()),
            ApiError::Unauthorized,
            ApiError::Forbidden(m()),
            ApiError::RaiseNeedsPlatformToken(m()),
            ApiError::NotFound(m()),
            ApiError::MethodNotAllowed,
            ApiError::Conflict(m()),
            ApiError::NameTaken(m()),
            ApiError::PayloadTooLarge,
            ApiError::UnsupportedMediaType(m()),
            ApiError::Rejected(CertError {
                rule: Rule::NotACa,
                message: m(),
            }),
            ApiError::Internal(m()),
            ApiError::StoreUnavailable(m()),
        ];
        let mut listed = Vec::new();
        for e in all {
            // Exhaustive: a new variant does not compile until it is sampled above.
            let rejected = match &e {
                ApiError::Rejected(_) => true,
                ApiError::BadRequest(_)
                | ApiError::Unauthorized
                | ApiError::Forbidden(_)
                | ApiError::RaiseNeedsPlatformToken(_)
                | ApiError::NotFound(_)
                | ApiError::MethodNotAllowed
                | ApiError::Conflict(_)
                | ApiError::NameTaken(_)
                | ApiError::PayloadTooLarge
                | ApiError::UnsupportedMediaType(_)
                | ApiError::Internal(_)
                | ApiError::StoreUnavailable(_) => false,
            };
            let (status, code, _) = e.status_code_message();
            if rejected {
                assert_eq!(
                    (status, code),
                    (StatusCode::UNPROCESSABLE_ENTITY, "not_a_ca")
                );
            } else {
                listed.push((status, code));
            }
        }
        assert_eq!(listed, CODES);
    }
}
