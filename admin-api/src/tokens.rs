//! `/orgs/{org}/tokens`: org-scoped API tokens.
//!
//! The platform admin and the org's own tokens may create, list and delete the org's
//! tokens (so an org can rotate its tokens without the platform admin). The token is in
//! the creation answer only; lists show id, name and creation time.

use axum::extract::State;
use axum::http::{header, StatusCode};
use registry::{NewToken, TokenView};
use serde::Deserialize;

use crate::audit::AuditNote;
use crate::extract::{ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

/// `POST /orgs/{org}/tokens` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewTokenBody {
    name: String,
}

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

pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    Ok(Json(state.registry(move |r| r.list_tokens(&org)).await?))
}

/// Revokes the token: requests presenting it get 401 from now on.
pub(crate) async fn delete(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.delete_token(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
