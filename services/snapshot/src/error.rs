//! What a snapshotter can fail with; each kind maps onto one of containerd's gRPC codes.

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
    /// A record kept changing under a read-modify-write; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
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

impl From<Error> for tonic::Status {
    /// containerd's code for each kind; internal failures are logged here, once.
    fn from(error: Error) -> tonic::Status {
        match error {
            Error::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            Error::NotFound(m) => tonic::Status::not_found(m),
            Error::AlreadyExists(m) => tonic::Status::already_exists(m),
            Error::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            Error::Unavailable(m) => tonic::Status::unavailable(m),
            Error::Store(e) => {
                tracing::error!(error = %e, "metadata store failure");
                e.into()
            }
            error @ (Error::Io { .. } | Error::Internal(_)) => {
                tracing::error!(error = %error, "snapshotter failure");
                tonic::Status::internal(error.to_string())
            }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
