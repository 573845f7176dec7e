//! The audit log: [`record`] writes one entry for every `POST`, `PUT`, `PATCH` and
//! `DELETE` under `/api/v1`, whatever its outcome; `GET /orgs/{org}/audit` and
//! `GET /audit` (platform) read it.
//!
//! Which log an entry goes to: the org named in the path when the caller may see it and
//! it exists after the request; the caller's own org when an org token reached for
//! another org (so probing cannot flood, or even touch, someone else's log); else the
//! platform log (org creation and deletion, unknown orgs). What an org token does is
//! copied into the platform log as well ([`Actor::OrgToken`]), so the platform admin
//! keeps it after the org is deleted. Requests without a valid
//! token are answered 401 before this layer and are not recorded, so anonymous clients
//! cannot fill the store.

use axum::extract::{OriginalUri, Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponseParts, Response, ResponseParts};
use registry::{Actor, AuditEntry, AuditEvent, AuditLog, OrgId};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Caller, PlatformAdmin};
use crate::error::{ErrorBody, ErrorCode};
use crate::extract::OrgPath;
use crate::{blocking, ApiError, AppState, Json};

/// Longest path and summary kept in an entry, in characters.
const MAX_TEXT: usize = 256;

/// What a handler says it did, for the audit entry's summary (e.g. the id of the token it
/// created, which the path cannot tell). Without one, the summary is derived from the
/// method and path.
#[derive(Debug, Clone)]
pub(crate) struct AuditNote(pub(crate) String);

impl IntoResponseParts for AuditNote {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        res.extensions_mut().insert(self);
        Ok(res)
    }
}

/// Middleware (inside [`crate::auth::authenticate`]): runs the request, then records it.
/// A failure to record is logged, not turned into an error: the change is already made.
pub(crate) async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return next.run(req).await;
    }
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return next.run(req).await;
    };
    let method = req.method().clone();
    // Inside the nested router the URI is relative to /api/v1; record the full path.
    let route = req.uri().path().to_owned();
    let path = req
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| route.clone(), |u| u.path().to_owned());

    let resp = next.run(req).await;

    let named = named_org(&route);
    let log = match &named {
        Some(org) if caller.sees(org) => Some(org.clone()),
        _ => caller.org.clone(),
    };
    let actor = match &caller.org {
        None => Actor::PlatformAdmin,
        Some(_) => Actor::OrgToken,
    };
    let summary = match resp.extensions().get::<AuditNote>() {
        Some(note) => note.0.clone(),
        None => summarize(&method, &route),
    };
    let event = AuditEvent {
        token_id: caller.token_id,
        method: method.to_string(),
        path: truncate(path),
        org: route_org_segment(&route).map(|s| truncate(s.to_owned())),
        summary: truncate(summary),
        status: resp.status().as_u16(),
        error: resp.extensions().get::<ErrorCode>().map(|c| c.0.to_owned()),
    };
    let registry = state.registry.clone();
    match blocking(move || registry.record_audit(log.as_ref(), actor, event)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(cause = %e, "could not write the audit log"),
        Err(e) => tracing::error!(cause = ?e, "could not write the audit log"),
    }
    resp
}

/// The `{org}` segment of a path relative to `/api/v1`, as written.
fn route_org_segment(route: &str) -> Option<&str> {
    let mut segs = route.trim_start_matches('/').split('/');
    (segs.next() == Some("orgs")).then(|| segs.next()).flatten()
}

/// The org a path names, if its `{org}` segment is a valid org id.
fn named_org(route: &str) -> Option<OrgId> {
    route_org_segment(route).and_then(|s| OrgId::try_from(s).ok())
}

/// A short description from the method and the path relative to `/api/v1`:
/// `POST /orgs/acme/ca-certs` → `create ca-certs`,
/// `PATCH /orgs/acme/ca-certs/3f` → `update ca-certs 3f`,
/// `POST /orgs/acme/ca-certs/preview` → `preview ca-certs`,
/// `POST /orgs/acme/server-certs/3f/activate` → `activate server-certs 3f`.
fn summarize(method: &Method, route: &str) -> String {
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "set",
        Method::PATCH => "update",
        Method::DELETE => "delete",
        _ => method.as_str(),
    };
    let segs: Vec<&str> = route.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["orgs"] => format!("{verb} org"),
        ["orgs", org] => format!("{verb} org {org}"),
        ["orgs", _, coll] => format!("{verb} {coll}"),
        ["orgs", _, coll, item] if *method == Method::POST => format!("{item} {coll}"),
        ["orgs", _, coll, item] => format!("{verb} {coll} {item}"),
        ["orgs", _, coll, item, action] => format!("{action} {coll} {item}"),
        _ => format!("{method} {route}"),
    }
}

fn truncate(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_TEXT) {
        s.truncate(i);
    }
    s
}

/// `?limit=100&before=<seq>`: a page of entries, newest first.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct Page {
    /// Entries per page, 1-1000.
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: usize,
    /// Only entries older than this `seq` (the next page back).
    before: Option<u64>,
}

fn default_limit() -> usize {
    100
}

async fn list_log(
    state: AppState,
    log: AuditLog,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let Query(page) = page.map_err(ApiError::from_rejection)?;
    let entries = state
        .registry(move |r| r.list_audit(&log, page.limit, page.before))
        .await?;
    Ok(Json(entries))
}

/// Read the org's audit log.
///
/// Every `POST`, `PUT`, `PATCH` and `DELETE` under `/api/v1` with a valid token, failed
/// ones included, newest first. Entries are kept for the server's audit retention
/// (`--audit-retention-days`, default 90), however many there are.
#[utoipa::path(
    get,
    path = "/orgs/{org}/audit",
    tag = "audit",
    operation_id = "list_org_audit",
    params(OrgPath, Page),
    responses((status = 200, description = "A page of entries, newest first.", body = Vec<AuditEntry>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    list_log(state, AuditLog::Org(org), page).await
}

/// Read the platform audit log.
///
/// Org creation and deletion, requests naming orgs that do not exist, and a copy of
/// every org token's request (kept after its org is deleted). Platform admin token only.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    operation_id = "list_platform_audit",
    params(Page),
    responses(
        (status = 200, description = "A page of entries, newest first.", body = Vec<AuditEntry>),
        (status = 403, description = "`forbidden`: an org token cannot read the platform log.", body = ErrorBody),
    ),
)]
pub(crate) async fn list_platform(
    State(state): State<AppState>,
    _: PlatformAdmin,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    list_log(state, AuditLog::Platform, page).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let s = |m: Method, r: &str| summarize(&m, r);
        assert_eq!(s(Method::POST, "/orgs"), "create org");
        assert_eq!(s(Method::DELETE, "/orgs/acme"), "delete org acme");
        assert_eq!(s(Method::POST, "/orgs/acme/ca-certs"), "create ca-certs");
        assert_eq!(s(Method::PUT, "/orgs/acme/domains"), "set domains");
        assert_eq!(
            s(Method::PATCH, "/orgs/acme/ca-certs/3f"),
            "update ca-certs 3f"
        );
        assert_eq!(
            s(Method::POST, "/orgs/acme/ca-certs/preview"),
            "preview ca-certs"
        );
        assert_eq!(
            s(Method::POST, "/orgs/acme/server-certs/3f/activate"),
            "activate server-certs 3f"
        );
        assert_eq!(s(Method::POST, "/nope/x/y/z/w/v"), "POST /nope/x/y/z/w/v");
    }

    #[test]
    fn org_segments() {
        assert_eq!(route_org_segment("/orgs/acme/ca-certs"), Some("acme"));
        assert_eq!(route_org_segment("/orgs/Bad!"), Some("Bad!"));
        assert_eq!(named_org("/orgs/Bad!"), None);
        assert_eq!(route_org_segment("/orgs"), None);
        assert_eq!(route_org_segment("/audit"), None);
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("é".repeat(300)).chars().count(), MAX_TEXT);
        assert_eq!(truncate("short".into()), "short");
    }
}
