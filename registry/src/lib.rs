//! certmq's control-plane state: validated names, certificate rules, the embedded store
//! and the [`Registry`] that ties them together.
//!
//! This crate owns *what is allowed* (names, identities, CA and server certificate rules)
//! and *what is stored* (orgs, CA certificates, server certificates with sealed keys).
//! It does no networking: the broker reads [`TlsMaterial`] from it and listens for
//! [`Change`]s; the admin API calls its mutations.

pub mod cert;
pub mod names;
mod registry;
pub mod seal;
pub mod store;

pub use names::{Identity, Kind, Name, OrgId};
pub use registry::{
    CaCert, CaView, Change, Error, Org, Registry, Result, ServerCert, ServerCertView, TlsMaterial,
};
