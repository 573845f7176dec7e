//! `/orgs/{org}/security-policy` and `/orgs/{org}/device-tokens`: how devices of an org
//! must authenticate; `/orgs/{org}/topic-policy`: which topics they use. Changes apply
//! to live sessions at once (the broker re-checks them).

use axum::extract::State;
use axum::http::StatusCode;
use registry::{DeviceToken, Identity, SecurityPolicy, TopicMode, TopicPolicy};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::audit::AuditNote;
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

/// Show the org's topic policy.
#[utoipa::path(
    get,
    path = "/orgs/{org}/topic-policy",
    tag = "topic-policy",
    operation_id = "show_topic_policy",
    params(OrgPath),
    responses((status = 200, description = "The policy (`{\"mode\":\"watson\"}` until set).", body = TopicPolicy)),
)]
pub(crate) async fn show_topics(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<TopicPolicy>, ApiError> {
    Ok(Json(state.registry(move |r| r.topic_policy(&org)).await?))
}

/// Replace the org's topic policy.
///
/// `watson` (the default): Watson IoT's `iot-2/…` topics. `custom`: the first rule
/// whose `who` matches a client's identity says what it may publish and subscribe to
/// (no rule: nothing), with `{type}`, `{id}` and `{app}` filled from its certificate;
/// topics stay within the org. Applies at once: live sessions lose subscriptions the
/// new rules no longer allow and their next publishes are checked with them; a switch
/// between `watson` and `custom` closes the org's live sessions (v5 DISCONNECT 0x98).
/// Walkthrough: docs/topic-policies.md.
#[utoipa::path(
    put,
    path = "/orgs/{org}/topic-policy",
    tag = "topic-policy",
    operation_id = "set_topic_policy",
    params(OrgPath),
    request_body(content = TopicPolicy, content_type = "application/json", example = json!({
        "mode": "custom",
        "rules": [
            {"who": "d:*:*", "publish": ["devices/{type}/{id}/#"], "subscribe": ["devices/{type}/{id}/cmd/#"]},
            {"who": "a:*", "client_id": "*", "publish": ["devices/+/+/cmd/#"], "subscribe": ["devices/#"]}
        ]
    })),
    responses(
        (status = 200, description = "The policy as stored.", body = TopicPolicy),
        (status = 422, description = "`invalid_topic_rule`: the message names what is wrong by its path (e.g. `rules[1].publish[0]: {app} is not defined for device rules`); nothing changed.", body = ErrorBody),
    ),
)]
pub(crate) async fn set_topics(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(policy): Json<TopicPolicy>,
) -> Result<(AuditNote, Json<TopicPolicy>), ApiError> {
    let stored = state
        .registry(move |r| r.set_topic_policy(&org, policy))
        .await?;
    let note = match stored.mode {
        TopicMode::Watson => "topic policy set: watson".to_owned(),
        TopicMode::Custom => format!("topic policy set: custom, {} rules", stored.rules.len()),
    };
    Ok((AuditNote(note), Json(stored)))
}
