//! `/orgs/{org}/bridges` and `/orgs/{org}/webhooks`: where certmq sends an org's
//! messages over mutual TLS. The registry keeps the configuration; the broker runs it
//! and reports `state`, `last_error` and counters, which every answer carries.

use axum::extract::State;
use axum::http::StatusCode;
use registry::live::{DestinationState, DestinationStatus};
use registry::{
    BridgeRequest, Destination, DestinationKind, DestinationPatch, ForwardRule, OrgId, ReceiveRule,
    WebhookRequest,
};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::error::ErrorBody;
use crate::extract::{ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

/// What bridges and webhooks share: where they connect and with which identity and
/// trust.
#[derive(Serialize, ToSchema)]
pub(crate) struct DestinationSettings {
    id: String,
    org: OrgId,
    name: String,
    url: String,
    server_name: Option<String>,
    client_cert: Option<String>,
    ca_certificates: String,
    trust_system_roots: bool,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

/// A bridge with what the broker reports about it.
#[derive(Serialize, ToSchema)]
pub(crate) struct BridgeView {
    #[serde(flatten)]
    settings: DestinationSettings,
    /// The MQTT client id used at the remote.
    client_id: String,
    forward: Vec<ForwardRule>,
    receive: Vec<ReceiveRule>,
    #[serde(flatten)]
    status: DestinationStatus,
}

/// A webhook with what the broker reports about it.
#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookView {
    #[serde(flatten)]
    settings: DestinationSettings,
    filter: String,
    qos: u8,
    #[serde(flatten)]
    status: DestinationStatus,
}

/// The broker's report on `d`, or "connecting" before it has one.
fn status_of(state: &AppState, d: &Destination) -> DestinationStatus {
    state
        .connections
        .destination_status(&d.org, &d.id)
        .unwrap_or(DestinationStatus {
            state: DestinationState::Connecting,
            last_error: None,
            last_error_at: None,
            connected_since: None,
            forwarded: 0,
            received: 0,
            queued: 0,
            failures: 0,
            last_http_status: None,
        })
}

/// `d` taken apart for a view: its settings, its status, and its rules (forward,
/// receive).
fn parts(
    state: &AppState,
    d: Destination,
) -> (
    DestinationSettings,
    DestinationStatus,
    Vec<ForwardRule>,
    Vec<ReceiveRule>,
) {
    let status = status_of(state, &d);
    let Destination {
        id,
        org,
        kind: _,
        name,
        url,
        server_name,
        client_cert,
        ca_certificates,
        trust_system_roots,
        client_id: _,
        forward,
        receive,
        created_at,
        updated_at,
    } = d;
    let settings = DestinationSettings {
        id,
        org,
        name,
        url,
        server_name,
        client_cert,
        ca_certificates,
        trust_system_roots,
        created_at,
        updated_at,
    };
    (settings, status, forward, receive)
}

fn bridge_view(state: &AppState, d: Destination) -> BridgeView {
    let client_id = d.remote_client_id();
    let (settings, status, forward, receive) = parts(state, d);
    BridgeView {
        settings,
        client_id,
        forward,
        receive,
        status,
    }
}

fn webhook_view(state: &AppState, d: Destination) -> WebhookView {
    let (settings, status, forward, _) = parts(state, d);
    let (filter, qos) = forward
        .into_iter()
        .next()
        .map(|r| (r.filter, r.qos))
        .unwrap_or_default();
    WebhookView {
        settings,
        filter,
        qos,
        status,
    }
}

/// Refuses filters the org's topic rules do not give an application (400).
fn check_filters<'a>(
    state: &AppState,
    org: &OrgId,
    filters: impl IntoIterator<Item = &'a str>,
) -> Result<(), ApiError> {
    for f in filters {
        state
            .connections
            .check_destination_filter(org, f)
            .map_err(|e| ApiError::BadRequest(format!("filter {f:?}: {e}")))?;
    }
    Ok(())
}

const ERRORS_400: &str = "`bad_request`: a field is wrong; the message names it (a URL that is not mqtts:// or https://, a filter the org's topic rules do not allow an application, a placeholder the filter's topics lack, an unknown client_cert, an unreadable ca_certificates bundle).";

/// Create a bridge to a remote MQTT broker.
///
/// certmq connects over mutual TLS with `client_cert`, checks the remote's certificate
/// against `ca_certificates` (and the name `server_name`, default the URL's host), and
/// publishes every message of the org matching a rule's `filter` on the rule's
/// `topic`. QoS 1 is forwarded at least once through a queue on disk.
#[utoipa::path(
    post,
    path = "/orgs/{org}/bridges",
    tag = "bridges",
    operation_id = "create_bridge",
    params(OrgPath),
    request_body(content = BridgeRequest, content_type = "application/json", example = json!({
        "name": "upstream",
        "url": "mqtts://broker.example.com:8883",
        "client_cert": "4f1c2a9be0d37c15",
        "ca_certificates": "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n",
        "forward": [{"filter": "iot-2/type/+/id/+/evt/+/fmt/+", "topic": "fleet/{org}/{type}/{id}/{event}", "qos": 1}]
    })),
    responses(
        (status = 201, description = "Created; the broker connects at once.", body = BridgeView),
        (status = 400, description = ERRORS_400, body = ErrorBody),
        (status = 409, description = "`conflict`: another bridge has this name, or the org has 32 destinations.", body = ErrorBody),
    ),
)]
pub(crate) async fn create_bridge(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(req): Json<BridgeRequest>,
) -> Result<(StatusCode, Json<BridgeView>), ApiError> {
    check_filters(&state, &org, req.forward.iter().map(|r| r.filter.as_str()))?;
    let d = state.registry(move |r| r.create_bridge(&org, req)).await?;
    Ok((StatusCode::CREATED, Json(bridge_view(&state, d))))
}

/// List the org's bridges, with their state.
#[utoipa::path(
    get,
    path = "/orgs/{org}/bridges",
    tag = "bridges",
    operation_id = "list_bridges",
    params(OrgPath),
    responses((status = 200, description = "Every bridge of the org, oldest first.", body = Vec<BridgeView>)),
)]
pub(crate) async fn list_bridges(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<BridgeView>>, ApiError> {
    let all = state
        .registry(move |r| r.list_destinations(&org, DestinationKind::Bridge))
        .await?;
    Ok(Json(
        all.into_iter().map(|d| bridge_view(&state, d)).collect(),
    ))
}

/// Show a bridge: its settings, `state`, `last_error` and counters.
#[utoipa::path(
    get,
    path = "/orgs/{org}/bridges/{id}",
    tag = "bridges",
    operation_id = "get_bridge",
    params(OrgPath, ("id" = String, Path, description = "The bridge's id.")),
    responses((status = 200, description = "The bridge.", body = BridgeView)),
)]
pub(crate) async fn show_bridge(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Json<BridgeView>, ApiError> {
    let d = state
        .registry(move |r| r.get_destination(&org, DestinationKind::Bridge, &id))
        .await?;
    Ok(Json(bridge_view(&state, d)))
}

/// Change a bridge; it reconnects with the new settings.
///
/// Absent fields stay; `null` removes `server_name`, `client_cert` or `client_id`.
/// Messages queued for it are kept.
#[utoipa::path(
    patch,
    path = "/orgs/{org}/bridges/{id}",
    tag = "bridges",
    operation_id = "update_bridge",
    params(OrgPath, ("id" = String, Path, description = "The bridge's id.")),
    request_body = DestinationPatch,
    responses(
        (status = 200, description = "Changed.", body = BridgeView),
        (status = 400, description = ERRORS_400, body = ErrorBody),
    ),
)]
pub(crate) async fn update_bridge(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
    Json(patch): Json<DestinationPatch>,
) -> Result<Json<BridgeView>, ApiError> {
    if let Some(rules) = &patch.forward {
        check_filters(&state, &org, rules.iter().map(|r| r.filter.as_str()))?;
    }
    let d = state
        .registry(move |r| r.update_destination(&org, DestinationKind::Bridge, &id, patch))
        .await?;
    Ok(Json(bridge_view(&state, d)))
}

/// Delete a bridge; its queue is discarded.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/bridges/{id}",
    tag = "bridges",
    operation_id = "delete_bridge",
    params(OrgPath, ("id" = String, Path, description = "The bridge's id.")),
    responses((status = 204, description = "Deleted; the connection is closed.")),
)]
pub(crate) async fn delete_bridge(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state
        .registry(move |r| r.delete_destination(&org, DestinationKind::Bridge, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a webhook.
///
/// certmq POSTs every message of the org matching `filter` to `url` as JSON
/// (`topic`, `payload`, `payload_encoding`, `qos`, `retain`, `client_id`,
/// `received_at`), presenting `client_cert` when given and checking the server against
/// `ca_certificates`. Non-2xx answers and failures are retried with backoff.
#[utoipa::path(
    post,
    path = "/orgs/{org}/webhooks",
    tag = "webhooks",
    operation_id = "create_webhook",
    params(OrgPath),
    request_body(content = WebhookRequest, content_type = "application/json", example = json!({
        "name": "archive",
        "url": "https://hooks.example.com/certmq",
        "client_cert": "4f1c2a9be0d37c15",
        "ca_certificates": "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n",
        "filter": "iot-2/type/+/id/+/evt/+/fmt/+"
    })),
    responses(
        (status = 201, description = "Created.", body = WebhookView),
        (status = 400, description = ERRORS_400, body = ErrorBody),
        (status = 409, description = "`conflict`: another webhook has this name, or the org has 32 destinations.", body = ErrorBody),
    ),
)]
pub(crate) async fn create_webhook(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(req): Json<WebhookRequest>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    check_filters(&state, &org, [req.filter.as_str()])?;
    let d = state.registry(move |r| r.create_webhook(&org, req)).await?;
    Ok((StatusCode::CREATED, Json(webhook_view(&state, d))))
}

/// List the org's webhooks, with their state.
#[utoipa::path(
    get,
    path = "/orgs/{org}/webhooks",
    tag = "webhooks",
    operation_id = "list_webhooks",
    params(OrgPath),
    responses((status = 200, description = "Every webhook of the org, oldest first.", body = Vec<WebhookView>)),
)]
pub(crate) async fn list_webhooks(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    let all = state
        .registry(move |r| r.list_destinations(&org, DestinationKind::Webhook))
        .await?;
    Ok(Json(
        all.into_iter().map(|d| webhook_view(&state, d)).collect(),
    ))
}

/// Show a webhook: its settings, `state`, `last_error`, the last HTTP status and
/// counters.
#[utoipa::path(
    get,
    path = "/orgs/{org}/webhooks/{id}",
    tag = "webhooks",
    operation_id = "get_webhook",
    params(OrgPath, ("id" = String, Path, description = "The webhook's id.")),
    responses((status = 200, description = "The webhook.", body = WebhookView)),
)]
pub(crate) async fn show_webhook(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Json<WebhookView>, ApiError> {
    let d = state
        .registry(move |r| r.get_destination(&org, DestinationKind::Webhook, &id))
        .await?;
    Ok(Json(webhook_view(&state, d)))
}

/// Change a webhook; the next delivery uses the new settings.
#[utoipa::path(
    patch,
    path = "/orgs/{org}/webhooks/{id}",
    tag = "webhooks",
    operation_id = "update_webhook",
    params(OrgPath, ("id" = String, Path, description = "The webhook's id.")),
    request_body = DestinationPatch,
    responses(
        (status = 200, description = "Changed.", body = WebhookView),
        (status = 400, description = ERRORS_400, body = ErrorBody),
    ),
)]
pub(crate) async fn update_webhook(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
    Json(patch): Json<DestinationPatch>,
) -> Result<Json<WebhookView>, ApiError> {
    if let Some(f) = &patch.filter {
        check_filters(&state, &org, [f.as_str()])?;
    }
    let d = state
        .registry(move |r| r.update_destination(&org, DestinationKind::Webhook, &id, patch))
        .await?;
    Ok(Json(webhook_view(&state, d)))
}

/// Delete a webhook; its queue is discarded.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/webhooks/{id}",
    tag = "webhooks",
    operation_id = "delete_webhook",
    params(OrgPath, ("id" = String, Path, description = "The webhook's id.")),
    responses((status = 204, description = "Deleted.")),
)]
pub(crate) async fn delete_webhook(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state
        .registry(move |r| r.delete_destination(&org, DestinationKind::Webhook, &id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
