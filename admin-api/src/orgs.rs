//! `/orgs` and `/orgs/{org}`. Creating and deleting orgs is for the platform admin
//! (403 for org tokens); an org token lists and shows its own org only.

use axum::extract::State;
use axum::http::StatusCode;
use registry::Org;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::AuditNote;
use crate::auth::{Caller, PlatformAdmin};
use crate::error::ErrorBody;
use crate::extract::OrgPath;
use crate::{ApiError, AppState, Json};

/// `POST /orgs` body; an empty or missing name defaults to the id.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "acme", "name": "Acme Corp"}))]
pub(crate) struct NewOrg {
    /// 1-32 characters a-z 0-9, starting with a letter: the first label of the org's
    /// host name `<org>.<domain>`.
    id: String,
    /// Display name, at most 200 characters, no control or bidi-control characters;
    /// empty or missing: the id.
    #[serde(default)]
    name: String,
}

/// Create an org.
///
/// Platform admin token only.
#[utoipa::path(
    post,
    path = "/orgs",
    tag = "orgs",
    operation_id = "create_org",
    request_body = NewOrg,
    responses(
        (status = 201, description = "Created.", body = Org),
        (status = 403, description = "`forbidden`: an org token cannot create orgs.", body = ErrorBody),
        (status = 409, description = "`conflict`: the org exists.", body = ErrorBody),
    ),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    _: PlatformAdmin,
    Json(body): Json<NewOrg>,
) -> Result<(StatusCode, AuditNote, Json<Org>), ApiError> {
    let org = state
        .registry(move |r| r.create_org(&body.id, &body.name))
        .await?;
    let note = AuditNote(format!("create org {}", org.id));
    Ok((StatusCode::CREATED, note, Json(org)))
}

/// List orgs.
///
/// Every org for the platform admin; the token's own org for an org token.
#[utoipa::path(
    get,
    path = "/orgs",
    tag = "orgs",
    operation_id = "list_orgs",
    responses((status = 200, description = "The orgs the token sees.", body = Vec<Org>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Org>>, ApiError> {
    let orgs = state
        .registry(move |r| match &caller.org {
            None => r.list_orgs(),
            Some(own) => Ok(vec![r.get_org(own)?]),
        })
        .await?;
    Ok(Json(orgs))
}

/// An org with the broker's view of its health.
#[derive(Serialize, ToSchema)]
pub(crate) struct OrgDetail {
    #[serde(flatten)]
    org: Org,
    /// `null` when the org's TLS configuration is in force; otherwise why the latest
    /// change could not be applied to it — the broker keeps serving the org with its
    /// last good configuration until the cause is fixed.
    tls_error: Option<String>,
}

/// Show an org.
///
/// With `tls_error`: why the broker could not apply the org's latest configuration, if
/// it could not (it then keeps serving the last good one).
#[utoipa::path(
    get,
    path = "/orgs/{org}",
    tag = "orgs",
    operation_id = "show_org",
    params(OrgPath),
    responses((status = 200, description = "The org.", body = OrgDetail)),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<OrgDetail>, ApiError> {
    let broker = state.connections.clone();
    let detail = state
        .registry(move |r| {
            let org = r.get_org(&org)?;
            let tls_error = broker.tls_error(&org.id);
            Ok(OrgDetail { org, tls_error })
        })
        .await?;
    Ok(Json(detail))
}

/// Delete an org.
///
/// Deletes the org with everything it owns: certificates, tokens, domains, audit log;
/// its live sessions are closed. Platform admin token only.
#[utoipa::path(
    delete,
    path = "/orgs/{org}",
    tag = "orgs",
    operation_id = "delete_org",
    params(OrgPath),
    responses(
        (status = 204, description = "Deleted."),
        (status = 403, description = "`forbidden`: an org token cannot delete orgs, its own included.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    _: PlatformAdmin,
    OrgPath(org): OrgPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_org(&org)).await?;
    Ok(StatusCode::NO_CONTENT)
}
