//! `/orgs/{org}/tokens`: org-scoped API tokens.
//!
//! The platform admin and the org's own tokens may create, list and delete the org's
//! tokens (so an org can rotate its tokens without the platform admin). The token is in
//! the creation answer only; lists show id, name and creation time.

use axum::extract::State;
use axum::http::{header, StatusCode};
use registry::{NewToken, TokenView};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::audit::AuditNote;
use crate::error::ErrorBody;
use crate::extract::{ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

/// `POST /orgs/{org}/tokens` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "ops"}))]
pub(crate) struct NewTokenBody {
    /// What the token is for: 1-100 characters, no control or bidi-control characters.
    name: String,
}

/// Create an org token.
///
/// The platform admin, or a token of the same org. The token is in this answer only
/// (`Cache-Control: no-store`); certmq keeps a salted HMAC of it. An org holds at most
/// 100 tokens.
#[utoipa::path(
    post,
    path = "/orgs/{org}/tokens",
    tag = "tokens",
    operation_id = "create_token",
    params(OrgPath),
    request_body = NewTokenBody,
    responses(
        (status = 201, description = "Created; `token` is shown this once.", body = NewToken,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 409, description = "`conflict`: the org already holds 100 tokens.", body = ErrorBody),
    ),
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(body): Json<NewTokenBody>,
) -> Result<
    (
        StatusCode,
        [(header::HeaderName, &'static str); 1],
        AuditNote,
        Json<NewToken>,
    ),
    ApiError,
> {
    let token = state
        .registry(move |r| r.create_token(&org, &body.name))
        .await?;
    let note = AuditNote(format!(
        "create token {} ({})",
        token.view.id, token.view.name
    ));
    // The secret is in this body: no cache may keep it.
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    Ok((StatusCode::CREATED, no_store, note, Json(token)))
}

/// List the org's tokens (never the tokens themselves).
#[utoipa::path(
    get,
    path = "/orgs/{org}/tokens",
    tag = "tokens",
    operation_id = "list_tokens",
    params(OrgPath),
    responses((status = 200, description = "Id, name and creation time of each token.", body = Vec<TokenView>)),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_tokens(&org)).await?))
}

/// Revoke an org token.
///
/// Requests presenting it get 401 from now on. An org token may revoke itself.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/tokens/{id}",
    tag = "tokens",
    operation_id = "delete_token",
    params(OrgPath, ("id" = String, Path, description = "The token's id (not the token).")),
    responses((status = 204, description = "Revoked.")),
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_token(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
