//! certmq's admin REST API (docs/contract.md, section 6; docs/api.md): HTTP in front of the [`Registry`] and the
//! broker's live sessions.
//!
//! This crate owns the HTTP layer only — routes, bearer-token auth, request parsing,
//! the JSON error shape and status codes. It owns no state and no rules: orgs and
//! certificates live in (and are validated by) the `registry` crate, live sessions in the
//! broker, reached through [`ConnectionsView`]. It does not bind sockets either; the
//! `certmq` binary serves [`router`] on its listener.
//!
//! Every route under `/api/v1` needs `Authorization: Bearer <token>`, as does
//! `/metrics`; `/healthz`, `/readyz` and the OpenAPI document `/api/v1/openapi.json` (see
//! `openapi`) do not. The token is the platform admin token, which sees everything, or
//! an org token (`POST /orgs/{org}/tokens`), which sees its org only: other orgs are
//! 404, creating and deleting orgs is 403 (see `auth`). Every mutating request is
//! recorded in the audit log (see `audit`).

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::{Extension, Router};
use registry::live::{AuthzDecision, AuthzRequest, RetainedMessage, SessionInfo};
use registry::{OrgId, Registry};
use serde::Serialize;
use utoipa::{OpenApi as _, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod admin_token;
mod audit;
mod auth;
mod ca_certs;
mod client_certs;
mod connections;
mod console;
mod csrs;
mod destinations;
mod domains;
mod error;
mod extract;
mod fleet;
mod limits;
mod openapi;
mod ops;
mod orgs;
mod policy;
mod retained;
mod revocation;
mod server_certs;
mod tokens;

pub use admin_token::AdminToken;
use error::ApiError;
use extract::Json;

/// The largest request body accepted; larger bodies get 413 `payload_too_large`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the API needs from the broker: its live MQTT sessions, its metrics and its
/// authorization dry run. The types crossing this boundary are the registry's
/// [`registry::live`] types, which the broker produces and the API serves (with their
/// OpenAPI schemas), so the two cannot drift.
///
/// The broker implements it; the admin API calls it from a blocking thread, so an
/// implementation may take short locks but should not wait on the network.
pub trait ConnectionsView: Send + Sync + 'static {
    /// The live sessions of `org`, sorted by client id.
    fn list(&self, org: &OrgId) -> Vec<SessionInfo>;
    /// Closes the session of `client_id` in `org`; `false` when there is none.
    fn kick(&self, org: &OrgId, client_id: &str) -> bool;
    /// The Prometheus text exposition of the broker's metrics.
    fn metrics(&self) -> String {
        String::new()
    }
    /// Why the org's TLS config could not be built, if it could not (the broker then
    /// keeps serving the org with its last good config).
    fn tls_error(&self, _org: &OrgId) -> Option<String> {
        None
    }
    /// Whether the broker can do its work (`GET /readyz`): `Err` says why not.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
    /// The retained messages of `org`, sorted by topic (the org's own names).
    fn retained(&self, _org: &OrgId) -> Vec<RetainedMessage> {
        Vec::new()
    }
    /// Removes the retained message at `topic` (the org's own name); whether there
    /// was one.
    fn delete_retained(&self, _org: &OrgId, _topic: &str) -> bool {
        false
    }
    /// What the broker reports about the outgoing destination `id` of `org`; `None`
    /// before it has started it.
    fn destination_status(
        &self,
        _org: &OrgId,
        _id: &str,
    ) -> Option<registry::live::DestinationStatus> {
        None
    }
    /// Whether an application of `org` may subscribe to `filter` (a destination's
    /// filter, in the application's view of topics); `Err` says why not.
    fn check_destination_filter(&self, _org: &OrgId, _filter: &str) -> Result<(), String> {
        Ok(())
    }
    /// The authorization dry run of `org` (`POST /orgs/{org}/authz/check`).
    fn authz_check(
        &self,
        _org: &OrgId,
        _request: &AuthzRequest,
    ) -> Result<AuthzDecision, DryRunError> {
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
    /// This deployment has no broker behind the API (500).
    Unavailable,
}

/// Everything the handlers share: cheap to clone, all `Arc`s.
#[derive(Clone)]
pub struct AppState {
    /// Orgs, CA and server certificates.
    pub registry: Arc<Registry>,
    /// The platform admin token, which sees every org (rotated at run time by
    /// `POST /admin-token/rotate`). An empty token admits nobody. (Org tokens live in
    /// the registry.)
    pub admin_token: Arc<AdminToken>,
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

/// The whole admin API: `/healthz`, `/metrics`, the authenticated `/api/v1` routes and
/// the OpenAPI document at `/api/v1/openapi.json`, with the body limit and JSON error
/// fallbacks applied.
///
/// Routes are added with `routes!` only: it registers each handler at the path and
/// method of its `#[utoipa::path]`, which is also what puts it in the OpenAPI document
/// (`tests/openapi.rs` fails on a route the document does not describe).
pub fn router(state: AppState) -> Router {
    let (api, mut api_doc) = OpenApiRouter::<AppState>::default()
        .routes(routes!(orgs::create, orgs::list))
        .routes(routes!(orgs::show, orgs::delete))
        .routes(routes!(ca_certs::upload, ca_certs::list))
        .routes(routes!(ca_certs::preview))
        .routes(routes!(ca_certs::show, ca_certs::update, ca_certs::delete))
        .routes(routes!(server_certs::upload, server_certs::list))
        .routes(routes!(server_certs::create_self_signed))
        .routes(routes!(server_certs::show, server_certs::delete))
        .routes(routes!(server_certs::activate))
        .routes(routes!(server_certs::chain_pem))
        .routes(routes!(csrs::create, csrs::list))
        .routes(routes!(csrs::show, csrs::delete))
        .routes(routes!(csrs::complete))
        .routes(routes!(connections::list))
        .routes(routes!(connections::kick))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::delete))
        .routes(routes!(domains::show, domains::set))
        .routes(routes!(audit::list))
        .routes(routes!(ops::authz_check))
        .routes(routes!(policy::show, policy::set))
        .routes(routes!(policy::show_topics, policy::set_topics))
        .routes(routes!(limits::show, limits::set))
        .routes(routes!(policy::set_token, policy::list_tokens))
        .routes(routes!(policy::delete_token))
        .routes(routes!(revocation::block, revocation::list_blocked))
        .routes(routes!(revocation::unblock))
        .routes(routes!(revocation::upload_crl, revocation::list_crls))
        .routes(routes!(revocation::delete_crl))
        .routes(routes!(audit::list_platform))
        .routes(routes!(retained::list, retained::delete))
        .routes(routes!(client_certs::upload, client_certs::list))
        .routes(routes!(client_certs::preview))
        .routes(routes!(client_certs::show, client_certs::delete))
        .routes(routes!(
            destinations::create_bridge,
            destinations::list_bridges
        ))
        .routes(routes!(
            destinations::show_bridge,
            destinations::update_bridge,
            destinations::delete_bridge
        ))
        .routes(routes!(
            destinations::create_webhook,
            destinations::list_webhooks
        ))
        .routes(routes!(
            destinations::show_webhook,
            destinations::update_webhook,
            destinations::delete_webhook
        ))
        .routes(routes!(admin_token::rotate))
        // Fleet operations (issue 15).
        .routes(routes!(fleet::list))
        .routes(routes!(fleet::show))
        .routes(routes!(fleet::revoke, fleet::list_revoked))
        .routes(routes!(fleet::unrevoke))
        .routes(routes!(fleet::show_network, fleet::set_network))
        .routes(routes!(ca_certs::verification_code))
        .split_for_parts();
    let api = api
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

    let (metrics, metrics_doc) = OpenApiRouter::<AppState>::default()
        .routes(routes!(ops::metrics))
        .split_for_parts();
    let metrics = metrics.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));

    // Outside the authentication layer. The document's own route is an exact path, so
    // it wins over the /api/v1 fallback nested below.
    let (public, public_doc) = OpenApiRouter::<AppState>::default()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi::serve))
        .split_for_parts();

    // Served by the CSR's `{id}` route, so documented apart (see `csrs::show`).
    api_doc.merge(csrs::DownloadDoc::openapi());
    let document = openapi::document(api_doc, [metrics_doc, public_doc]);

    Router::new()
        .merge(public)
        .merge(metrics)
        .nest("/api/v1", api)
        .merge(console::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(Extension(document))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `{"status":"ok","version":"…"}` while the process serves.
#[derive(Serialize, ToSchema)]
struct Health {
    /// Always `ok`.
    status: &'static str,
    /// certmq's version.
    version: &'static str,
}

/// Liveness.
///
/// No token needed.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    operation_id = "healthz",
    security(()),
    responses((status = 200, description = "The process is up.", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// Whether certmq can do its work: its store answers and its message state is being
/// written.
#[derive(Serialize, ToSchema)]
struct Readiness {
    /// `ready`, or `not_ready` (then answered with 503).
    status: &'static str,
    /// `ok`, or why the store did not answer.
    store: String,
    /// `ok`, or why retained messages and persistent sessions are not being written
    /// (acknowledgements are then held back).
    message_state: String,
    /// With the registry in PostgreSQL (docs/cluster.md): this node's name (`--node-id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// With the registry in PostgreSQL: `ok`, or why this node cannot reach the database.
    /// The node stays ready then: it admits with the last state it read and answers
    /// changes with 503 until the database is back.
    #[serde(skip_serializing_if = "Option::is_none")]
    registry_database: Option<String>,
}

/// Readiness.
///
/// No token needed. 200 when the store answers a read and the message state is being
/// written, else 503 with the reason: for a load balancer or an orchestrator deciding
/// whether to send traffic.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    operation_id = "readyz",
    security(()),
    responses(
        (status = 200, description = "Ready.", body = Readiness),
        (status = 503, description = "Not ready; the fields say why.", body = Readiness),
    ),
)]
async fn readyz(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> (axum::http::StatusCode, Json<Readiness>) {
    let checked = blocking(move || {
        let store = match state.registry.store().get("org/") {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        let message_state = match state.connections.ready() {
            Ok(()) => "ok".to_owned(),
            Err(e) => e,
        };
        let shared = state.registry.store().shared_status();
        (store, message_state, shared)
    })
    .await;
    let (store, message_state, shared) =
        checked.unwrap_or_else(|e| (format!("{e:?}"), "unknown".to_owned(), None));
    let ready = store == "ok" && message_state == "ok";
    let code = if ready {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Readiness {
            status: if ready { "ready" } else { "not_ready" },
            store,
            message_state,
            node: shared.as_ref().map(|s| s.node.clone()),
            registry_database: shared.map(|s| match s.database {
                Ok(()) => "ok".to_owned(),
                Err(cause) => cause,
            }),
        }),
    )
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
