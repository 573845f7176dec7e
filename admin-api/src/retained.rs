//! `/orgs/{org}/retained`: the org's retained messages, as the broker keeps them
//! (through [`crate::ConnectionsView`]): list them, remove one.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use registry::live::RetainedMessage;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ErrorBody;
use crate::extract::OrgPath;
use crate::{blocking, ApiError, AppState, Json};

/// List the org's retained messages.
///
/// Topics are the org's own names (as its clients publish them), sorted; sizes are
/// payload bytes.
#[utoipa::path(
    get,
    path = "/orgs/{org}/retained",
    tag = "retained",
    operation_id = "list_retained",
    params(OrgPath),
    responses((status = 200, description = "The retained messages.", body = Vec<RetainedMessage>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<RetainedMessage>>, ApiError> {
    let retained = blocking(move || -> Result<_, ApiError> {
        state.registry.get_org(&org)?;
        Ok(state.connections.retained(&org))
    })
    .await??;
    Ok(Json(retained))
}

/// `?topic=<topic>`: the retained message to remove.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TopicQuery {
    /// The topic, as the org's clients name it (no wildcards).
    topic: String,
}

/// Remove one retained message.
///
/// Subscribers no longer get it, and it is gone from the disk.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/retained",
    tag = "retained",
    operation_id = "delete_retained",
    params(OrgPath, TopicQuery),
    responses(
        (status = 204, description = "Removed."),
        (status = 400, description = "`bad_request`: no topic, or a topic filter instead of a topic.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such org, or no retained message at this topic.", body = ErrorBody),
    ),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    query: Result<Query<TopicQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let Query(TopicQuery { topic }) = query.map_err(ApiError::from_rejection)?;
    if topic.is_empty() || topic.contains(['+', '#', '\0']) || topic.len() > 65_535 {
        return Err(ApiError::BadRequest(format!(
            "topic {topic:?} is not a topic: it must be non-empty, at most 65535 bytes, without wildcards"
        )));
    }
    blocking(move || -> Result<_, ApiError> {
        state.registry.get_org(&org)?;
        if state.connections.delete_retained(&org, &topic) {
            Ok(StatusCode::NO_CONTENT)
        } else {
            Err(ApiError::NotFound(format!(
                "no retained message at topic {topic:?} in org {org}"
            )))
        }
    })
    .await?
}
