//! `/orgs/{org}/security-policy` and `/orgs/{org}/device-tokens`: how devices of an org
//! must authenticate. Changes apply to live sessions at once (the broker re-checks them).

use axum::extract::State;
use axum::http::StatusCode;
use registry::{DeviceToken, Identity, SecurityPolicy};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::error::ErrorBody;
use crate::extract::{ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

/// Show the org's security policy.
#[utoipa::path(
    get,
    path = "/orgs/{org}/security-policy",
    tag = "security-policy",
    operation_id = "show_security_policy",
    params(OrgPath),
    responses((status = 200, description = "The policy (the default `tls_client_cert` until set).", body = SecurityPolicy)),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<SecurityPolicy>, ApiError> {
    Ok(Json(
        state.registry(move |r| r.security_policy(&org)).await?,
    ))
}

/// Replace the org's security policy.
///
/// Applies at once: live sessions the new policy no longer admits are closed before
/// the answer.
#[utoipa::path(
    put,
    path = "/orgs/{org}/security-policy",
    tag = "security-policy",
    operation_id = "set_security_policy",
    params(OrgPath),
    request_body(content = SecurityPolicy, content_type = "application/json", example = json!({
        "level": "tls_client_cert",
        "device_types": {"legacy": "tls_optional"},
        "gateway_device_types": {"gw": ["sensor"]}
    })),
    responses((status = 200, description = "The policy as stored.", body = SecurityPolicy)),
)]
pub(crate) async fn set(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(policy): Json<SecurityPolicy>,
) -> Result<Json<SecurityPolicy>, ApiError> {
    Ok(Json(
        state
            .registry(move |r| r.set_security_policy(&org, policy))
            .await?,
    ))
}

/// `POST /orgs/{org}/device-tokens` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"identity": "d:sensor:dev1"}))]
pub(crate) struct TokenRequest {
    /// `d:<type>:<id>`, `g:<type>:<id>` or `a:<appId>`.
    identity: String,
    /// 16-128 printable characters (no control or bidi-control characters). Omitted:
    /// the broker generates one (40 hex, 160 random bits).
    token: Option<String>,
}

/// Set an identity's MQTT token.
///
/// Replaces any token it had (sessions admitted by the old one are closed). Devices
/// connect with username `use-token-auth` and the token as password, where the
/// security policy admits tokens. The token is stored as a salted HMAC and shown in
/// this answer only.
#[utoipa::path(
    post,
    path = "/orgs/{org}/device-tokens",
    tag = "device-tokens",
    operation_id = "set_device_token",
    params(OrgPath),
    request_body = TokenRequest,
    responses((status = 201, description = "Set; `token` is shown this once.", body = DeviceToken)),
)]
pub(crate) async fn set_token(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(req): Json<TokenRequest>,
) -> Result<(StatusCode, Json<DeviceToken>), ApiError> {
    let t = state
        .registry(move |r| r.set_device_token(&org, &req.identity, req.token))
        .await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// List the identities that have a token (never the tokens).
#[utoipa::path(
    get,
    path = "/orgs/{org}/device-tokens",
    tag = "device-tokens",
    operation_id = "list_device_tokens",
    params(OrgPath),
    responses((status = 200, description = "Identities with a token.", body = Vec<Identity>)),
)]
pub(crate) async fn list_tokens(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<Identity>>, ApiError> {
    Ok(Json(
        state.registry(move |r| r.list_device_tokens(&org)).await?,
    ))
}

/// Delete an identity's token.
///
/// Sessions it admitted are closed.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/device-tokens/{id}",
    tag = "device-tokens",
    operation_id = "delete_device_token",
    params(OrgPath, ("id" = String, Path, description = "The identity, e.g. `d:sensor:dev1`.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "`bad_request`: not an identity.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete_token(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state
        .registry(move |r| r.delete_device_token(&org, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
