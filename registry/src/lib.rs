//! certmq's control-plane state: validated names, certificate rules, the embedded store
//! and the [`Registry`] that ties them together.
//!
//! This crate owns *what is allowed* (names, identities, CA and server certificate rules,
//! custom domains) and *what is stored* (orgs, CA certificates, server certificates with
//! sealed keys — uploaded, self-signed or from CSRs whose keys it generates —, org
//! tokens as salted MACs, the audit log). It also answers which org a
//! TLS server name selects ([`Registry::org_for_host`]), from memory.
//! It does no networking: the broker reads [`TlsMaterial`] from it and listens for
//! [`Change`]s; the admin API calls its mutations.

pub mod audit;
mod ca_certs;
pub mod ca_proof;
pub mod cert;
mod claims;
mod client_certs;
mod csr;
mod custom_domains;
pub mod destinations;
pub mod devices;
pub mod domains;
mod error;
mod keys;
mod layout;
pub mod limits;
pub mod live;
pub mod names;
pub mod network;
#[cfg(feature = "openapi")]
mod openapi;
mod orgs;
pub mod pg;
mod platform;
pub mod policy;
mod registry;
pub mod rekey;
mod revocation;
pub mod revoked_certs;
pub mod seal;
mod server_certs;
mod server_upload;
pub mod store;
pub mod text;
mod tls;
pub mod tokens;
pub mod topic_policy;

pub use audit::{Actor, AuditEntry, AuditEvent, AuditLog};
pub use ca_certs::{CaCert, CaView, MAX_ACTIVE_CAS, MAX_CA_NAMES_BYTES};
pub use client_certs::{ClientCertPreview, ClientCertView, NewClientCert, MAX_CLIENT_CERTS};
pub use csr::{CsrCompletion, CsrPurpose, CsrRequest, CsrStatus, CsrSubject, CsrView};
pub use destinations::{
    BridgeRequest, Destination, DestinationKind, DestinationPatch, ForwardRule, ReceiveRule,
    WebhookRequest,
};
pub use devices::{Device, DeviceCert};
pub use domains::DomainName;
pub use error::{Error, Result};
pub use keys::KeyType;
pub use limits::{LimitsUpdate, OrgLimits};
pub use names::{Identity, Kind, Name, OrgId};
pub use orgs::Org;
pub use policy::{DeviceToken, Level, SecurityPolicy, Transport};
pub use registry::{Change, Registry};
pub use revocation::{BlockedDevice, Crl};
pub use server_certs::{ServerCert, ServerCertView};
pub use server_upload::{NewServerCert, UploadServerCert};
pub use tls::TlsMaterial;
pub use tokens::{NewToken, TokenView};
pub use topic_policy::{TopicMode, TopicPolicy, TopicRule};

/// The store keys of the broker's message state (see [`Registry::store`]).
pub mod message_keys {
    pub use crate::layout::{messages as org, MESSAGES as ALL};
}
