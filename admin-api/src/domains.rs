//! `/orgs/{org}/domains`: the org's custom domains. `PUT` replaces the whole list;
//! `GET` and `PUT` answer `{"domains":[...]}`, the shape `PUT` takes, so a read-modify-
//! write round trip needs no reshaping. Rules are in `registry::domains`.

use axum::extract::State;
use registry::DomainName;
use serde::{Deserialize, Serialize};

use crate::audit::AuditNote;
use crate::extract::OrgPath;
use crate::{ApiError, AppState, Json};

/// Body of `PUT` and answer of both methods.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DomainsBody {
    domains: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct Domains {
    domains: Vec<DomainName>,
}

pub(crate) async fn show(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Domains>, ApiError> {
    let domains = state.registry(move |r| r.domains(&org)).await?;
    Ok(Json(Domains { domains }))
}

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
