//! The registry's error type: every call fails with an [`Error`], which the admin API
//! maps to a status code.

use crate::cert::CertError;
use crate::domains::DomainError;
use crate::names::NameError;
use crate::seal::SealError;
use crate::store::StoreError;

/// Everything a registry call can fail with. The admin API maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A host name (custom domain or server certificate name) another org already
    /// claims (409 `name_taken`); the message names the host, never the other org.
    #[error("{0}")]
    NameTaken(String),
    #[error("{0}")]
    BadRequest(String),
    /// An org token asked to raise one of its org's limits (403
    /// `raise_needs_platform_token`); only the platform admin may.
    #[error("{0}")]
    RaiseNeedsPlatformToken(String),
    /// A certificate broke a rule (422); the error says which.
    #[error(transparent)]
    Rejected(#[from] CertError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("corrupt record {0}")]
    Corrupt(String),
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Error {
        Error::BadRequest(e.to_string())
    }
}

impl From<DomainError> for Error {
    fn from(e: DomainError) -> Error {
        Error::BadRequest(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
