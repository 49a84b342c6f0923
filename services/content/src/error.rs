//! What the content store can fail with; each kind maps onto one of containerd's gRPC codes.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A ref is being written by someone else right now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
    /// Something that should not happen: a corrupt record, a panicked worker.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An I/O error with what was being done and on which path.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// Adopts a rule check from berth-core (labels, filters), which reports InvalidArgument.
    pub fn from_status(status: tonic::Status) -> Error {
        match status.code() {
            tonic::Code::InvalidArgument => Error::InvalidArgument(status.message().to_string()),
            _ => Error::Internal(status.message().to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
