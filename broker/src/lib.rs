//! certmq's message plane: the TLS front end that picks an org by SNI and verifies
//! client certificates against that org's CAs, the one admission decision, the topic
//! rules that keep orgs apart, and MQTT sessions bridged onto the engine.
//!
//! It owns connections and what flows over them; it does not own configuration (the
//! `registry` crate does) or HTTP (the `admin-api` crate does). Path of a connection:
//! [`Broker::serve`] accepts → [`tls::OrgTlsCache`] picks the org's config by SNI →
//! handshake → [`tls::OrgTls`] reads the certificate facts → CONNECT decided by
//! `admission` → packets authorized and rewritten by [`acl::Principal`] → [`engine`].
//!
//! Modules: `server` (listeners, the change listener, reconcile), `tls` (per-org
//! configs, certificate facts), `chain` (verified path, revocation along it), `admission` (who may connect: one pure decision),
//! `acl` (topic rules), `session` (CONNECT to teardown; `bridge`, `status`), `sessions`
//! (live sessions, kick), `flow` (flow control), `guard` (per-source limits before admission), `limits` (per-org limits), `engine` (the only module that knows
//! rumqttd), `authz` (the dry run), `metrics`.

pub mod acl;
mod admission;
pub mod authz;
mod chain;
pub mod cluster;
pub mod engine;
pub mod flow;
mod guard;
mod hints;
mod limits;
pub mod metrics;
mod outbound;
mod proxy;
mod server;
mod session;
pub mod sessions;
pub(crate) mod state;
pub mod tls;
mod ws;

pub use authz::AuthzError;
pub use cluster::ClusterConfig;
pub use guard::GuardConfig;
pub use server::{Broker, BrokerConfig};
pub use session::SessionLimits;
pub use sessions::{CloseReason, Sessions};

/// Locks `m`, recovering the data if a panicking thread poisoned it: every critical
/// section in the broker leaves its data consistent, so a panic elsewhere must not
/// take the lock (and with it every session) down too.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
