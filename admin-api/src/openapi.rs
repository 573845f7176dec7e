//! The OpenAPI 3 document of the admin API, served at `GET /api/v1/openapi.json`
//! without a token: it describes the API and holds no data.
//!
//! The document is built from the code. Every route is registered with
//! `utoipa_axum::routes!`, which takes the path and method from the handler's
//! `#[utoipa::path]`, so a route cannot be served undocumented nor documented where it
//! is not served (`tests/openapi.rs` checks both against the router). Request and
//! response schemas derive from the types the handlers read and return — the registry's
//! view types through its `openapi` feature. This module adds what every operation
//! shares: the bearer scheme, the error shape and the error answers common to all.

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Extension;
use registry::cert::Rule;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr};
use utoipa::{OpenApi as _, PartialSchema, ToSchema};

use crate::error::{ErrorBody, CODES};

/// What the derive contributes: info, tags, the global bearer requirement and the error
/// schema. Paths come from the router (see [`document`]).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "certmq admin API",
        description = "Orgs, their CA and server certificates, tokens, revocation and \
            security policy of a certmq broker, and its live sessions. Every route needs \
            `Authorization: Bearer <token>` (the platform admin token, or an org token \
            that sees its own org only: other orgs answer 404) except `/healthz` and this \
            document. Errors are `{\"error\":{\"code\",\"message\"}}`; request bodies are \
            limited to 1 MiB. Walkthrough and examples: docs/api.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    tags(
        (name = "orgs", description = "Organizations (tenants). Creating and deleting them needs the platform admin token."),
        (name = "ca-certs", description = "The CAs whose client certificates an org admits."),
        (name = "server-certs", description = "The certificates the broker presents for an org's host name."),
        (name = "csrs", description = "Key pairs generated on the broker and their PKCS#10 requests; the signed certificate becomes a server certificate."),
        (name = "connections", description = "The broker's live MQTT sessions of an org."),
        (name = "tokens", description = "Org-scoped API tokens."),
        (name = "domains", description = "An org's custom domains."),
        (name = "audit", description = "Who changed what, when."),
        (name = "security-policy", description = "How an org's devices must authenticate."),
        (name = "topic-policy", description = "Which MQTT topics an org's clients use: Watson IoT's scheme or the org's own rules."),
        (name = "limits", description = "An org's connection, message, subscription and queue limits. Org tokens may lower them; raising needs the platform admin token."),
        (name = "device-tokens", description = "MQTT passwords of identities (username `use-token-auth`)."),
        (name = "blocked-devices", description = "Identities refused at CONNECT whatever their credentials."),
        (name = "crls", description = "Certificate revocation lists of an org's CAs, checked on every handshake."),
        (name = "authz", description = "What the broker would decide for a client certificate, client id and topic."),
        (name = "ops", description = "Health, Prometheus metrics and this document."),
    ),
)]
struct ApiDoc;

/// The whole document, serialized for [`serve`]: [`ApiDoc`] with the paths of the
/// routes under `/api/v1` (`api`, relative to it) and of those beside it (`root`), the
/// bearer scheme, and the shared error answers added to every operation.
pub(crate) fn document(api: OpenApi, root: impl IntoIterator<Item = OpenApi>) -> Document {
    let mut doc = ApiDoc::openapi().nest("/api/v1", api);
    for other in root {
        doc.merge(other);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The platform admin token (`CERTMQ_ADMIN_TOKEN`, or generated on first \
                     start into `<data-dir>/admin-token`) or an org token \
                     (`POST /api/v1/orgs/{org}/tokens`).",
                ))
                .build(),
        ),
    );
    for (status, code) in CODES {
        if let Some(text) = common_answer(status) {
            components
                .responses
                .insert(code.to_owned(), RefOr::T(error_response(code, text)));
        }
    }
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            add_common_answers(op);
        }
    }
    let json = doc.to_json().expect("an OpenAPI document serializes");
    Document(Bytes::from(json))
}

/// The description of the shared error answer of `status`; `None` for statuses only
/// some operations answer (they document those themselves).
fn common_answer(status: StatusCode) -> Option<&'static str> {
    Some(match status {
        StatusCode::BAD_REQUEST => {
            "The request is malformed: not JSON or not the expected JSON (unknown fields are \
             refused), an invalid field, or an invalid query parameter."
        }
        StatusCode::UNAUTHORIZED => {
            "No bearer token, or not a valid one (the answer carries `WWW-Authenticate: Bearer`)."
        }
        StatusCode::NOT_FOUND => {
            "No such org — also for an org the token does not see, so org tokens cannot \
             probe other orgs — or no such resource in it."
        }
        StatusCode::PAYLOAD_TOO_LARGE => "The body is over 1 MiB (1048576 bytes).",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "The body needs `Content-Type: application/json` (or another `application/*+json`)."
        }
        StatusCode::INTERNAL_SERVER_ERROR => {
            "Internal error; the detail is in the server log, never in the answer."
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            "The registry is in PostgreSQL and this node cannot reach it (docs/cluster.md): \
             nothing was changed; changes are refused until it is back."
        }
        _ => return None,
    })
}

fn error_response(code: &str, text: &str) -> Response {
    ResponseBuilder::new()
        .description(format!("`{code}`: {text}"))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .example(Some(serde_json::json!({
                    "error": { "code": code, "message": "…" }
                })))
                .build(),
        )
        .build()
}

/// Adds the error answers an operation shares with others, unless it documents that
/// status itself: 401 when it needs a token, 404 when it names an org, 400 and 413 when
/// it reads a body (400 also for query parameters), 415 when that body is JSON only, 500
/// unless it is public.
fn add_common_answers(op: &mut Operation) {
    // `security(())` on the handler: no token needed.
    let public = op
        .security
        .as_ref()
        .is_some_and(|s| s.iter().all(|r| *r == Default::default()));
    let params = op.parameters.as_deref().unwrap_or_default();
    let names_org = params
        .iter()
        .any(|p| p.name == "org" && p.parameter_in == ParameterIn::Path);
    let has_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
    let has_body = op.request_body.is_some();
    let json_only = op
        .request_body
        .as_ref()
        .is_some_and(|b| b.content.len() == 1 && b.content.contains_key("application/json"));
    let wanted = [
        (StatusCode::BAD_REQUEST, has_body || has_query),
        (StatusCode::UNAUTHORIZED, !public),
        (StatusCode::NOT_FOUND, names_org),
        (StatusCode::PAYLOAD_TOO_LARGE, has_body),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, json_only),
        (StatusCode::INTERNAL_SERVER_ERROR, !public),
        (StatusCode::SERVICE_UNAVAILABLE, !public),
    ];
    for (status, applies) in wanted {
        let Some((_, code)) = CODES.iter().find(|(s, _)| *s == status) else {
            continue;
        };
        if applies {
            op.responses
                .responses
                .entry(status.as_u16().to_string())
                .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*code)));
        }
    }
}

/// The schema of `error.code`: every code the API answers with.
pub(crate) fn error_code_schema() -> Object {
    let codes = CODES
        .iter()
        .map(|(_, c)| *c)
        .chain(Rule::ALL.iter().map(|r| r.code()));
    let by_status: Vec<String> = CODES
        .iter()
        .map(|(s, c)| format!("{c} ({})", s.as_u16()))
        .collect();
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(codes))
        .description(Some(format!(
            "{}; with 422 the code of the rule that failed (a certificate rule, or `limit_out_of_range`).",
            by_status.join(", ")
        )))
        .build()
}

/// A DER file (certificate or CRL) as a request body: raw bytes.
pub(crate) struct DerFile;

impl PartialSchema for DerFile {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("The DER file, raw bytes."))
            .into()
    }
}

impl ToSchema for DerFile {}

/// The serialized document, made once per router and handed to [`serve`] as a request
/// extension.
#[derive(Clone)]
pub(crate) struct Document(pub(crate) Bytes);

/// This document.
///
/// Served without a token: it describes the API and holds no data.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "ops",
    operation_id = "openapi",
    security(()),
    responses((status = 200, description = "The OpenAPI document (this one).", body = Object)),
)]
pub(crate) async fn serve(Extension(doc): Extension<Document>) -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], doc.0)
}
