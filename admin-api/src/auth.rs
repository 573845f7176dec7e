//! Bearer-token authentication for `/api/v1`, and who the caller is.
//!
//! Two kinds of token are accepted: the platform admin token ([`crate::AppState::admin_token`]),
//! which sees everything, and org tokens (`POST /orgs/{org}/tokens`), which see one org.
//! [`authenticate`] turns the token into a [`Caller`] request extension; the org scope
//! is then enforced in one place, the `{org}` path extractors (`crate::extract`), which
//! answer 404 for an org the caller does not see, exactly as for an org that does not
//! exist. The few platform-only operations take [`PlatformAdmin`] (403).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use registry::OrgId;

use crate::{ApiError, AppState};

/// The token id the audit log records for the platform admin token.
pub(crate) const PLATFORM_TOKEN_ID: &str = "platform";

/// Who made a request: set by [`authenticate`] on every `/api/v1` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    /// [`PLATFORM_TOKEN_ID`] or the org token's id (never the token itself).
    pub(crate) token_id: String,
    /// The one org an org token sees; `None` for the platform admin.
    pub(crate) org: Option<OrgId>,
}

impl Caller {
    fn platform() -> Caller {
        Caller {
            token_id: PLATFORM_TOKEN_ID.into(),
            org: None,
        }
    }

    /// Whether this caller may see `org` at all.
    pub(crate) fn sees(&self, org: &OrgId) -> bool {
        match &self.org {
            None => true,
            Some(own) => own == org,
        }
    }

    /// The caller of a request that went through [`authenticate`].
    pub(crate) fn of(parts: &Parts) -> Result<&Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .ok_or_else(|| ApiError::Internal("route outside the authentication layer".into()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Caller::of(parts).cloned()
    }
}

/// Extractor for operations only the platform admin may do (create and delete orgs,
/// read the platform audit log): an org token gets 403 `forbidden`. A 404 would be the
/// wrong answer here: the caller sees the resource, it just may not change it.
pub(crate) struct PlatformAdmin;

impl<S: Send + Sync> FromRequestParts<S> for PlatformAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match Caller::of(parts)?.org {
            None => Ok(PlatformAdmin),
            Some(_) => Err(ApiError::Forbidden(
                "this operation needs the platform admin token; org tokens cannot do it".into(),
            )),
        }
    }
}

/// Middleware: admits `Authorization: Bearer <platform admin token | org token>` and
/// records the [`Caller`]; anything else is a 401. Runs before any extractor, so
/// unauthenticated bodies are never read.
pub(crate) async fn authenticate(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_owned)
        .ok_or(ApiError::Unauthorized)?;
    let caller = if state.admin_token.matches(&presented) {
        Caller::platform()
    } else {
        let token = state
            .registry(move |r| r.authenticate_token(&presented))
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Caller {
            token_id: token.id,
            org: Some(token.org),
        }
    };
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// The token of an `Authorization` value with the `Bearer` scheme (case-insensitive,
/// RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_values() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearerabc"), None);
    }

    #[test]
    fn org_scope() {
        let acme = OrgId::try_from("acme").unwrap();
        let beta = OrgId::try_from("beta").unwrap();
        assert!(Caller::platform().sees(&acme));
        let t = Caller {
            token_id: "t1".into(),
            org: Some(acme.clone()),
        };
        assert!(t.sees(&acme));
        assert!(!t.sees(&beta));
    }
}
