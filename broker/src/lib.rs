//! certmq's message plane: the TLS front end that picks an org by SNI and verifies
//! client certificates against that org's CAs, the topic rules that keep orgs apart,
//! and MQTT sessions bridged onto the rumqttd engine.
//!
//! It owns connections and what flows over them; it does not own configuration (the
//! `registry` crate does) or HTTP (the `admin-api` crate does). Path of a connection:
//! [`Broker::serve`] accepts → [`tls::OrgTlsCache`] picks the org's config by SNI →
//! handshake → identity from the certificate → CONNECT checked against it →
//! packets authorized and rewritten by [`acl::Principal`] → engine.

pub mod acl;
mod admission;
pub mod authz;
pub mod codec;
pub mod engine;
pub mod flow;
pub mod metrics;
mod server;
mod session;
pub mod sessions;
pub mod tls;

pub use authz::{AuthzDecision, AuthzError, AuthzRequest};
pub use server::{Broker, BrokerConfig};
pub use session::SessionLimits;
pub use sessions::{CloseReason, SessionInfo, Sessions};
