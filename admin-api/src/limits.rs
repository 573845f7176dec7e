//! `/orgs/{org}/limits`: the org's message-state limits (docs/limits.md). An org token
//! may lower them; raising one needs the platform admin token (403
//! `raise_needs_platform_token`). The broker applies a change before the answer.

use axum::extract::State;
use registry::{LimitsUpdate, OrgLimits};

use crate::audit::AuditNote;
use crate::auth::Caller;
use crate::error::ErrorBody;
use crate::extract::OrgPath;
use crate::{ApiError, AppState, Json};

/// Show the org's limits.
#[utoipa::path(
    get,
    path = "/orgs/{org}/limits",
    tag = "limits",
    operation_id = "show_limits",
    params(OrgPath),
    responses((status = 200, description = "The limits in force (the defaults until set).", body = OrgLimits)),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<OrgLimits>, ApiError> {
    Ok(Json(state.registry(move |r| r.org_limits(&org)).await?))
}

/// Change the org's limits.
///
/// The fields given replace their current values; fields left out keep theirs (send
/// the whole object from `GET` to set everything). Every value must be at least 1 and
/// at most its field's bound. An org token may only lower limits; raising any of them
/// needs the platform admin token. Applies before the answer: new connections, and
/// the next packet of live sessions, are held to the new values; lowering
/// `max_connections` closes no live session.
#[utoipa::path(
    put,
    path = "/orgs/{org}/limits",
    tag = "limits",
    operation_id = "set_limits",
    params(OrgPath),
    request_body(content = LimitsUpdate, content_type = "application/json", example = json!({
        "max_connections": 1000,
        "max_message_bytes": 65536
    })),
    responses(
        (status = 200, description = "The limits now in force.", body = OrgLimits),
        (status = 403, description = "`raise_needs_platform_token`: an org token asked to raise a limit.", body = ErrorBody),
        (status = 422, description = "`limit_out_of_range`: a value below 1 or above its field's bound; the message names the field.", body = ErrorBody),
    ),
)]
pub(crate) async fn set(
    State(state): State<AppState>,
    caller: Caller,
    OrgPath(org): OrgPath,
    Json(update): Json<LimitsUpdate>,
) -> Result<(AuditNote, Json<OrgLimits>), ApiError> {
    let may_raise = caller.org.is_none();
    let limits = state
        .registry(move |r| r.update_org_limits(&org, update, may_raise))
        .await?;
    let summary = limits
        .fields()
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(" ");
    Ok((AuditNote(format!("set limits {summary}")), Json(limits)))
}
