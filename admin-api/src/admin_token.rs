//! The platform admin token, and its rotation: `POST /admin-token/rotate`.
//!
//! The token lives in memory for authentication and, when certmq generated it or read
//! it from `<data-dir>/admin-token`, in that file. A rotation makes a new random token,
//! writes it to a temporary file beside the old one and renames it over (the file is
//! never half-written), then swaps it in: the old token is refused from the next
//! request on, and the new one is in the answer only. A token set by
//! `CERTMQ_ADMIN_TOKEN` belongs to whoever set the variable: certmq cannot make the
//! new one survive a restart, so it refuses (409) and says so.

use std::path::PathBuf;
use std::sync::RwLock;

use axum::extract::State;
use axum::http::{header, StatusCode};
use serde::Serialize;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::audit::AuditNote;
use crate::auth::PlatformAdmin;
use crate::error::ErrorBody;
use crate::{blocking, ApiError, AppState, Json};

/// The platform admin token, replaceable while the API serves.
pub struct AdminToken {
    current: RwLock<String>,
    /// The file that keeps it across restarts; `None` when `CERTMQ_ADMIN_TOKEN` sets it.
    file: Option<PathBuf>,
}

impl AdminToken {
    /// `token`, kept in `file` (rotation rewrites it) or, with `None`, set from outside
    /// (rotation is refused). An empty token admits nobody.
    pub fn new(token: String, file: Option<PathBuf>) -> AdminToken {
        AdminToken {
            current: RwLock::new(token),
            file,
        }
    }

    /// Whether `presented` is the current token, compared in constant time (only the
    /// length can leak, which a generated token makes moot).
    pub(crate) fn matches(&self, presented: &str) -> bool {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        !current.is_empty() && bool::from(current.as_bytes().ct_eq(presented.as_bytes()))
    }

    /// A new random platform admin token (`cmq_` and 48 hex characters).
    pub fn generate() -> String {
        let bytes: [u8; 24] = registry::seal::random_bytes();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("cmq_{hex}")
    }

    /// Replaces the token with a new random one, kept in the token file first; the new
    /// token.
    fn rotate(&self) -> Result<String, ApiError> {
        let Some(file) = &self.file else {
            return Err(ApiError::Conflict(
                "the platform admin token comes from CERTMQ_ADMIN_TOKEN: set a new value \
                 there and restart certmq (certmq cannot change the variable)"
                    .into(),
            ));
        };
        let token = Self::generate();
        let tmp = file.with_extension("new");
        registry::seal::write_private_file(&tmp, token.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                ApiError::Internal(format!("writing {}: {e}", file.display()))
            })?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = token.clone();
        Ok(token)
    }
}

/// The answer to a rotation.
#[derive(Serialize, ToSchema)]
pub(crate) struct RotatedToken {
    /// The new platform admin token, shown this once. The old one no longer works.
    token: String,
}

/// Rotate the platform admin token.
///
/// Platform admin only. A new token replaces the current one at once (the token used
/// for this request stops working) and is written to `<data-dir>/admin-token`; it is
/// in this answer only (`Cache-Control: no-store`). Audited in the platform log.
/// 409 when the token comes from `CERTMQ_ADMIN_TOKEN`.
#[utoipa::path(
    post,
    path = "/admin-token/rotate",
    tag = "tokens",
    operation_id = "rotate_admin_token",
    responses(
        (status = 200, description = "Rotated; `token` is shown this once.", body = RotatedToken,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 403, description = "`forbidden`: an org token.", body = ErrorBody),
        (status = 409, description = "`conflict`: the token is set by `CERTMQ_ADMIN_TOKEN`.", body = ErrorBody),
    ),
)]
pub(crate) async fn rotate(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<
    (
        StatusCode,
        [(header::HeaderName, &'static str); 1],
        AuditNote,
        Json<RotatedToken>,
    ),
    ApiError,
> {
    let holder = state.admin_token.clone();
    let token = blocking(move || holder.rotate()).await??;
    tracing::info!("platform admin token rotated; the old one is refused from now on");
    Ok((
        StatusCode::OK,
        [(header::CACHE_CONTROL, "no-store")],
        AuditNote("rotated the platform admin token".into()),
        Json(RotatedToken { token }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_and_rotates_through_the_file() {
        let t = AdminToken::new("secret".into(), None);
        assert!(t.matches("secret"));
        assert!(!t.matches("secreT"));
        assert!(!t.matches("secret2"));
        assert!(!AdminToken::new(String::new(), None).matches(""));
        assert!(
            t.rotate().is_err(),
            "a token from the variable is not rotated"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin-token");
        std::fs::write(&file, "old-token-0123456789").unwrap();
        let t = AdminToken::new("old-token-0123456789".into(), Some(file.clone()));
        let new = t.rotate().unwrap();
        assert!(t.matches(&new) && !t.matches("old-token-0123456789"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), new);
    }
}
