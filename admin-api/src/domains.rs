//! `/orgs/{org}/domains`: the org's custom domains. `PUT` replaces the whole list;
//! `GET` and `PUT` answer `{"domains":[...]}`, the shape `PUT` takes, so a read-modify-
//! write round trip needs no reshaping. Rules are in `registry::domains`.

use axum::extract::State;
use registry::DomainName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::AuditNote;
use crate::error::ErrorBody;
use crate::extract::OrgPath;
use crate::{ApiError, AppState, Json};

/// Body of `PUT`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"domains": ["iot.example.com"]}))]
pub(crate) struct DomainsBody {
    /// The whole new list (at most 10); `[]` clears it. Case and a trailing dot are
    /// normalized away, duplicates dropped.
    domains: Vec<String>,
}

/// Answer of `GET` and `PUT`: the shape `PUT` takes.
#[derive(Serialize, ToSchema)]
pub(crate) struct Domains {
    domains: Vec<DomainName>,
}

/// Show the org's custom domains.
#[utoipa::path(
    get,
    path = "/orgs/{org}/domains",
    tag = "domains",
    operation_id = "show_domains",
    params(OrgPath),
    responses((status = 200, description = "The org's custom domains.", body = Domains)),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Domains>, ApiError> {
    let domains = state.registry(move |r| r.domains(&org)).await?;
    Ok(Json(Domains { domains }))
}

/// Replace the org's custom domains.
///
/// Devices then select the org with `<org>.<custom domain>`. A domain must not be the
/// base domain, under it or above it, nor overlap a host name another org owns.
#[utoipa::path(
    put,
    path = "/orgs/{org}/domains",
    tag = "domains",
    operation_id = "set_domains",
    params(OrgPath),
    request_body = DomainsBody,
    responses(
        (status = 200, description = "The list as stored.", body = Domains),
        (status = 409, description = "`name_taken`: a domain equals, is under, or is above a host name another org owns (its custom domains, the names on its active server certificate).", body = ErrorBody),
    ),
)]
pub(crate) async fn set(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(body): Json<DomainsBody>,
) -> Result<(AuditNote, Json<Domains>), ApiError> {
    let domains = state
        .registry(move |r| r.set_domains(&org, &body.domains))
        .await?;
    let list: Vec<&str> = domains.iter().map(DomainName::as_str).collect();
    let note = AuditNote(format!("set domains [{}]", list.join(", ")));
    Ok((note, Json(Domains { domains })))
}
