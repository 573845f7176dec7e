//! certmq's admin REST API (SPEC section 5): HTTP in front of the [`Registry`] and the
//! broker's live sessions.
//!
//! This crate owns the HTTP layer only — routes, bearer-token auth, request parsing,
//! the JSON error shape and status codes. It owns no state and no rules: orgs and
//! certificates live in (and are validated by) the `registry` crate, live sessions in the
//! broker, reached through [`ConnectionsView`]. It does not bind sockets either; the
//! `certmq` binary serves [`router`] on its listener.
//!
//! Every route under `/api/v1` needs `Authorization: Bearer <token>`; `/healthz` does
//! not. The token is the platform admin token, which sees everything, or an org token
//! (`POST /orgs/{org}/tokens`), which sees its org only: other orgs are 404, creating
//! and deleting orgs is 403 (see `auth`). Every mutating request is recorded in the
//! audit log (see `audit`).

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use registry::{OrgId, Registry};

mod audit;
mod auth;
mod ca_certs;
mod connections;
mod console;
mod csrs;
mod domains;
mod error;
mod extract;
mod ops;
mod orgs;
mod policy;
mod revocation;
mod server_certs;
mod tokens;

use error::ApiError;
use extract::Json;

/// The largest request body accepted; larger bodies get 413 `payload_too_large`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the API needs from the broker about live MQTT sessions.
///
/// The broker implements it; the admin API calls it from a blocking thread, so an
/// implementation may take short locks but should not wait on the network.
pub trait ConnectionsView: Send + Sync + 'static {
    /// The live sessions of `org`, one JSON object each (client id, identity, CA
    /// fingerprint, cert serial, remote address, since).
    fn list(&self, org: &OrgId) -> Vec<serde_json::Value>;
    /// Closes the session of `client_id` in `org`; `false` when there is none.
    fn kick(&self, org: &OrgId, client_id: &str) -> bool;
    /// The Prometheus text exposition of the broker's metrics.
    fn metrics(&self) -> String {
        String::new()
    }
    /// The authorization dry run of `org` (`POST /orgs/{org}/authz/check`): the JSON
    /// request in, the broker's decision out.
    fn authz_check(
        &self,
        _org: &OrgId,
        _request: serde_json::Value,
    ) -> Result<serde_json::Value, DryRunError> {
        Err(DryRunError::Unavailable)
    }
}

/// Why a dry run did not produce a decision.
#[derive(Debug)]
pub enum DryRunError {
    /// The request was malformed (400).
    BadRequest(String),
    /// The org does not exist (404).
    NotFound(String),
    /// The broker could not answer (500).
    Internal(String),
    /// This deployment has no broker behind the API (501).
    Unavailable,
}

/// Everything the handlers share: cheap to clone, all `Arc`s.
#[derive(Clone)]
pub struct AppState {
    /// Orgs, CA and server certificates.
    pub registry: Arc<Registry>,
    /// The platform admin token, which sees every org. An empty token admits nobody.
    /// (Org tokens live in the registry.)
    pub admin_token: Arc<String>,
    /// The broker's live sessions.
    pub connections: Arc<dyn ConnectionsView>,
}

impl AppState {
    /// Runs a registry call on the blocking pool: it does disk I/O and runs the
    /// registry's change listeners (the broker's) before returning.
    pub(crate) async fn registry<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Registry) -> registry::Result<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let registry = Arc::clone(&self.registry);
        Ok(blocking(move || f(&registry)).await??)
    }
}

/// Runs `f` on the blocking pool; a panic in it becomes a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("blocking task failed: {e}")))
}

/// The whole admin API: `/healthz` and the authenticated `/api/v1` routes, with the
/// body limit and JSON error fallbacks applied.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/orgs", post(orgs::create).get(orgs::list))
        .route("/orgs/{org}", get(orgs::show).delete(orgs::delete))
        .route(
            "/orgs/{org}/ca-certs",
            post(ca_certs::upload).get(ca_certs::list),
        )
        .route("/orgs/{org}/ca-certs/preview", post(ca_certs::preview))
        .route(
            "/orgs/{org}/ca-certs/{id}",
            get(ca_certs::show)
                .patch(ca_certs::update)
                .delete(ca_certs::delete),
        )
        .route(
            "/orgs/{org}/server-certs",
            post(server_certs::upload).get(server_certs::list),
        )
        .route(
            "/orgs/{org}/server-certs/self-signed",
            post(server_certs::create_self_signed),
        )
        .route(
            "/orgs/{org}/server-certs/{id}",
            get(server_certs::show).delete(server_certs::delete),
        )
        .route(
            "/orgs/{org}/server-certs/{id}/activate",
            post(server_certs::activate),
        )
        .route(
            "/orgs/{org}/server-certs/{id}/chain.pem",
            get(server_certs::chain_pem),
        )
        .route("/orgs/{org}/csrs", post(csrs::create).get(csrs::list))
        .route(
            "/orgs/{org}/csrs/{id}",
            get(csrs::show).delete(csrs::delete),
        )
        .route("/orgs/{org}/csrs/{id}/certificate", post(csrs::complete))
        .route("/orgs/{org}/connections", get(connections::list))
        .route("/orgs/{org}/connections/{id}", delete(connections::kick))
        .route("/orgs/{org}/tokens", post(tokens::create).get(tokens::list))
        .route("/orgs/{org}/tokens/{id}", delete(tokens::delete))
        .route("/orgs/{org}/domains", get(domains::show).put(domains::set))
        .route("/orgs/{org}/audit", get(audit::list))
        .route("/orgs/{org}/authz/check", post(ops::authz_check))
        .route(
            "/orgs/{org}/security-policy",
            get(policy::show).put(policy::set),
        )
        .route(
            "/orgs/{org}/device-tokens",
            post(policy::set_token).get(policy::list_tokens),
        )
        .route(
            "/orgs/{org}/device-tokens/{id}",
            delete(policy::delete_token),
        )
        .route(
            "/orgs/{org}/blocked-devices",
            post(revocation::block).get(revocation::list_blocked),
        )
        .route(
            "/orgs/{org}/blocked-devices/{id}",
            delete(revocation::unblock),
        )
        .route(
            "/orgs/{org}/crls",
            post(revocation::upload_crl).get(revocation::list_crls),
        )
        .route("/orgs/{org}/crls/{id}", delete(revocation::delete_crl))
        .route("/audit", get(audit::list_platform))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        // `layer`, not `route_layer`: every request is audited (unknown routes too) and
        // unknown paths under /api/v1 are 401 without a token, so the route table is not
        // probeable anonymously. The last layer runs first: authenticate, then audit.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::record,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));

    let metrics = Router::new()
        .route("/metrics", get(ops::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));

    Router::new()
        .route("/healthz", get(healthz))
        .merge(metrics)
        .nest("/api/v1", api)
        .merge(console::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
