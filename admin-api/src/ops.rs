//! Operations endpoints backed by the broker: `GET /metrics` (Prometheus text, platform
//! token) and the authorization dry run `POST /orgs/{org}/authz/check`.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use registry::live::{AuthzDecision, AuthzRequest};

use crate::auth::PlatformAdmin;
use crate::error::ErrorBody;
use crate::extract::OrgPath;
use crate::{blocking, ApiError, AppState, DryRunError, Json};

/// Prometheus metrics.
///
/// The text exposition format. Needs the platform admin token (`bearer_token` in the
/// scrape config): the series name every org. Series: `certmq_connections{org,kind}`,
/// `certmq_handshakes_total{org,result,reason}`, `certmq_publishes_total{org,kind}`,
/// `certmq_deliveries_total{org,kind}`, `certmq_kicks_total{org,reason}`,
/// `certmq_connect_refusals_total{stage}`,
/// `certmq_cert_not_after_seconds{org,kind,id,active}`,
/// `certmq_cert_days_to_expiry{org,kind,id,active}`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4.", body = String,
            content_type = "text/plain; version=0.0.4"),
        (status = 403, description = "`forbidden`: an org token cannot read metrics.", body = ErrorBody),
    ),
)]
pub(crate) async fn metrics(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<impl IntoResponse, ApiError> {
    let text = blocking(move || state.connections.metrics()).await?;
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// Authorization dry run.
///
/// What the broker would decide for a client certificate chain, client id, device token
/// and topic, and which rule decided — the broker's own steps, in its order and with
/// its code: the org's client verifier (CAs, validity, CRLs), identity, client id, the
/// security level (a level that needs a token needs `token` here too), block list, topic
/// rules. A deny is a 200 with `allowed: false`.
#[utoipa::path(
    post,
    path = "/orgs/{org}/authz/check",
    tag = "authz",
    operation_id = "authz_check",
    params(OrgPath),
    request_body(content = AuthzRequest, content_type = "application/json", example = json!({
        "certificate": "-----BEGIN CERTIFICATE-----\n…\n-----END CERTIFICATE-----\n",
        "client_id": "d:acme:sensor:dev1",
        "topic": "iot-2/evt/temp/fmt/json",
        "action": "publish"
    })),
    responses((status = 200, description = "The decision.", body = AuthzDecision, example = json!({
        "allowed": true, "reason": "topic rule for device allows it", "stage": "admitted",
        "identity": "d:sensor:dev1", "ca_id": "3f9c0a1b2c3d4e5f", "ca_fingerprint": "…",
        "expected_client_id": "d:acme:sensor:dev1",
        "internal_topic": "/tenants/acme/iot-2/type/sensor/id/dev1/evt/temp/fmt/json"
    }))),
)]
pub(crate) async fn authz_check(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(body): Json<AuthzRequest>,
) -> Result<Json<AuthzDecision>, ApiError> {
    let answer = blocking(move || state.connections.authz_check(&org, &body)).await?;
    match answer {
        Ok(v) => Ok(Json(v)),
        Err(DryRunError::BadRequest(m)) => Err(ApiError::BadRequest(m)),
        Err(DryRunError::NotFound(m)) => Err(ApiError::NotFound(m)),
        Err(DryRunError::Internal(m)) => Err(ApiError::Internal(m)),
        Err(DryRunError::Unavailable) => {
            Err(ApiError::Internal("no broker behind this admin API".into()))
        }
    }
}
