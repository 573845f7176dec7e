//! Fleet operations (docs/api.md, "Fleet operations"): the device inventory
//! (`/orgs/{org}/devices`), single-certificate revocation (`/orgs/{org}/revoked-certs`)
//! and the network policy (`/orgs/{org}/network-policy`). The registry owns the records
//! and their rules; this module adds what only the broker knows (which identities are
//! connected) and the HTTP shapes.

use std::collections::HashSet;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use registry::devices::{DeviceQuery, MAX_PAGE};
use registry::network::NetworkPolicy;
use registry::revoked_certs::{RevokeRequest, RevokedCert};
use registry::{Device, Identity, OrgId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::audit::AuditNote;
use crate::error::ErrorBody;
use crate::extract::{ItemPath, OrgPath};
use crate::{ApiError, AppState, Json};

/// An identity of the inventory, with whether it is connected now.
#[derive(Serialize, ToSchema)]
pub(crate) struct DeviceView {
    #[serde(flatten)]
    device: Device,
    /// Whether a session of this identity is live now.
    connected: bool,
}

/// `GET /orgs/{org}/devices` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct DevicesQuery {
    /// Only identities whose current certificate expires within this many days (and
    /// has not expired yet), 0-36500.
    #[param(maximum = 36500)]
    expiring_within_days: Option<u32>,
    /// Only identities connected now (`true`) or not (`false`).
    connected: Option<bool>,
    /// Only identities starting with this, e.g. `d:sensor:`.
    #[serde(default)]
    prefix: String,
    /// The page size, 1-1000.
    #[serde(default = "default_limit")]
    #[param(minimum = 1, maximum = 1000, default = 100)]
    limit: usize,
    /// The cursor: only identities after this one (the last identity of the previous
    /// page). A page shorter than `limit` is the last.
    after: Option<String>,
}

fn default_limit() -> usize {
    100
}

/// The identities of `org` with a live session.
fn connected(state: &AppState, org: &OrgId) -> HashSet<Identity> {
    state
        .connections
        .list(org)
        .into_iter()
        .map(|s| s.identity)
        .collect()
}

/// List the org's devices.
///
/// Every identity that ever connected, in identity order, a page at a time: pass the
/// last identity of a page as `after` for the next one. Admissions reach the inventory
/// within a couple of seconds (they are written in batches); a read writes what is
/// pending first, so it is never behind.
#[utoipa::path(
    get,
    path = "/orgs/{org}/devices",
    tag = "devices",
    operation_id = "list_devices",
    params(OrgPath, DevicesQuery),
    responses(
        (status = 200, description = "A page of devices.", body = Vec<DeviceView>),
        (status = 400, description = "`bad_request`: an unknown parameter, `limit` outside 1-1000, `expiring_within_days` over 36500.", body = ErrorBody),
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    query: Result<Query<DevicesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<DeviceView>>, ApiError> {
    let Query(q) = query.map_err(ApiError::from_rejection)?;
    if q.limit == 0 || q.limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1-{MAX_PAGE}; got {} (page with `after` for more)",
            q.limit
        )));
    }
    if q.expiring_within_days.is_some_and(|d| d > 36_500) {
        return Err(ApiError::BadRequest(
            "expiring_within_days must be 0-36500".into(),
        ));
    }
    let live = {
        let (state, org) = (state.clone(), org.clone());
        crate::blocking(move || connected(&state, &org)).await?
    };
    let query = DeviceQuery {
        prefix: q.prefix,
        expiring_within_days: q.expiring_within_days,
        after: q.after,
        limit: q.limit,
    };
    let want = q.connected;
    let devices = state
        .registry(move |r| {
            let page = r.list_devices(&org, &query, |d| {
                want.is_none_or(|w| w == live.contains(&d.identity))
            })?;
            Ok(page
                .into_iter()
                .map(|device| {
                    let connected = live.contains(&device.identity);
                    DeviceView { device, connected }
                })
                .collect())
        })
        .await?;
    Ok(Json(devices))
}

/// Show one device.
#[utoipa::path(
    get,
    path = "/orgs/{org}/devices/{id}",
    tag = "devices",
    operation_id = "show_device",
    params(OrgPath, ("id" = String, Path, description = "The identity, e.g. `d:sensor:dev1`.")),
    responses(
        (status = 200, description = "The device and every certificate it used.", body = DeviceView),
        (status = 400, description = "`bad_request`: not an identity.", body = ErrorBody),
        (status = 404, description = "`not_found`: the identity never connected.", body = ErrorBody),
    ),
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<Json<DeviceView>, ApiError> {
    let live = {
        let (state, org) = (state.clone(), org.clone());
        crate::blocking(move || connected(&state, &org)).await?
    };
    let device = state.registry(move |r| r.device(&org, &id)).await?;
    let connected = live.contains(&device.identity);
    Ok(Json(DeviceView { device, connected }))
}

/// Revoke one certificate.
///
/// By `fingerprint_sha256` (a certificate a device of the org connected with), or by
/// `ca_id` and `serial` (also one that never connected). Its live sessions are closed
/// before the answer, and its next handshake fails with the TLS alert
/// `certificate_revoked`; the identity may still connect with another certificate.
#[utoipa::path(
    post,
    path = "/orgs/{org}/revoked-certs",
    tag = "revoked-certs",
    operation_id = "revoke_cert",
    params(OrgPath),
    request_body = RevokeRequest,
    responses(
        (status = 201, description = "Revoked.", body = RevokedCert),
        (status = 400, description = "`bad_request`: neither a fingerprint nor a CA and serial, or a malformed one.", body = ErrorBody),
        (status = 404, description = "`not_found`: no such CA in the org.", body = ErrorBody),
        (status = 409, description = "`conflict`: already revoked.", body = ErrorBody),
        (status = 422, description = "`unknown_certificate`: no device of the org connected with that fingerprint.", body = ErrorBody),
    ),
)]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(req): Json<RevokeRequest>,
) -> Result<(StatusCode, AuditNote, Json<RevokedCert>), ApiError> {
    let rec = state.registry(move |r| r.revoke_cert(&org, req)).await?;
    let note = AuditNote(format!(
        "revoke certificate {} (CA {} serial {})",
        rec.fingerprint_sha256.as_deref().unwrap_or("-"),
        rec.ca_id,
        rec.serial
    ));
    Ok((StatusCode::CREATED, note, Json(rec)))
}

/// List the revoked certificates.
#[utoipa::path(
    get,
    path = "/orgs/{org}/revoked-certs",
    tag = "revoked-certs",
    operation_id = "list_revoked_certs",
    params(OrgPath),
    responses((status = 200, description = "Oldest first.", body = Vec<RevokedCert>)),
)]
pub(crate) async fn list_revoked(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<Vec<RevokedCert>>, ApiError> {
    Ok(Json(
        state.registry(move |r| r.list_revoked_certs(&org)).await?,
    ))
}

/// Lift a revocation.
///
/// The certificate is admitted again from the next handshake.
#[utoipa::path(
    delete,
    path = "/orgs/{org}/revoked-certs/{id}",
    tag = "revoked-certs",
    operation_id = "unrevoke_cert",
    params(OrgPath, ("id" = String, Path, description = "The revocation's id.")),
    responses(
        (status = 204, description = "Lifted."),
        (status = 404, description = "`not_found`: no such revocation.", body = ErrorBody),
    ),
)]
pub(crate) async fn unrevoke(
    State(state): State<AppState>,
    ItemPath { org, id }: ItemPath,
) -> Result<StatusCode, ApiError> {
    state.registry(move |r| r.unrevoke_cert(&org, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Show the org's network policy.
#[utoipa::path(
    get,
    path = "/orgs/{org}/network-policy",
    tag = "network-policy",
    operation_id = "show_network_policy",
    params(OrgPath),
    responses((status = 200, description = "The policy (empty lists, every address, until set).", body = NetworkPolicy)),
)]
pub(crate) async fn show_network(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
) -> Result<Json<NetworkPolicy>, ApiError> {
    Ok(Json(state.registry(move |r| r.network_policy(&org)).await?))
}

/// Replace the org's network policy.
///
/// A deny entry that matches refuses; else an empty allow list admits every address
/// and a non-empty one only those it covers. Checked right after SNI, before any
/// certificate work (TLS alert `access_denied`), and at CONNECT on the plain listener.
/// Live sessions from addresses it now refuses are closed before the answer.
#[utoipa::path(
    put,
    path = "/orgs/{org}/network-policy",
    tag = "network-policy",
    operation_id = "set_network_policy",
    params(OrgPath),
    request_body = NetworkPolicy,
    responses(
        (status = 200, description = "The policy as stored (entries in canonical form).", body = NetworkPolicy),
        (status = 400, description = "`bad_request`: more than 1000 entries in a list.", body = ErrorBody),
        (status = 422, description = "`invalid_cidr` (the message names the entry) or `cidr_overlap` (an allow entry inside a deny entry); nothing changed.", body = ErrorBody),
    ),
)]
pub(crate) async fn set_network(
    State(state): State<AppState>,
    OrgPath(org): OrgPath,
    Json(policy): Json<NetworkPolicy>,
) -> Result<Json<NetworkPolicy>, ApiError> {
    Ok(Json(
        state
            .registry(move |r| r.set_network_policy(&org, policy))
            .await?,
    ))
}
