//! What Apply and Diff can fail with, and containerd's gRPC code for each.

use thiserror::Error;

use crate::diff::blob::BlobError;
use crate::mount::MountError;

#[derive(Debug, Error)]
pub enum DiffError {
    /// A request field is wrong (a descriptor, a mount, a label), or the layer itself is.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request cannot be served in this state: a corrupt blob, a tree no layer can express,
    /// no content service to read from.
    #[error("{0}")]
    FailedPrecondition(String),
    /// What containerd's differ does not implement either (an unknown diff media type).
    #[error("{0}")]
    Unimplemented(String),
    /// A call to a peer service failed; its code is passed on.
    #[error("{context}: {}", status.message())]
    Peer { context: String, status: tonic::Status },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Something that should not happen: a panicked worker, a stream that broke its protocol.
    #[error("{0}")]
    Internal(String),
}

impl DiffError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> DiffError {
        DiffError::Io { context: context.into(), source }
    }

    pub fn peer(context: impl Into<String>, status: tonic::Status) -> DiffError {
        DiffError::Peer { context: context.into(), status }
    }

    /// An error from applying or writing a layer. A failed read of the blob says why the blob
    /// could not be read (its own error is inside the I/O error the archive saw).
    pub fn from_archive(error: berth_archive::Error) -> DiffError {
        use berth_archive::Error as A;
        if let A::Read(io) | A::Write(io) = &error
            && let Some(blob) = io.get_ref().and_then(|inner| inner.downcast_ref::<BlobError>())
        {
            return DiffError::from(blob.clone());
        }
        match error {
            e if e.is_invalid_layer() => DiffError::InvalidArgument(e.to_string()),
            // A stream that is not gzip/zstd/tar after all.
            e @ A::Read(_) => DiffError::InvalidArgument(e.to_string()),
            e @ A::Unsupported { .. } => DiffError::FailedPrecondition(e.to_string()),
            e => DiffError::Internal(e.to_string()),
        }
    }
}

impl From<BlobError> for DiffError {
    fn from(error: BlobError) -> DiffError {
        match error {
            BlobError::Read { digest, status } => DiffError::peer(format!("read layer blob {digest}"), status),
            e @ (BlobError::DigestMismatch { .. } | BlobError::SizeMismatch { .. }) => {
                DiffError::FailedPrecondition(e.to_string())
            }
            e @ BlobError::Stopped => DiffError::Internal(e.to_string()),
        }
    }
}

impl From<DiffError> for tonic::Status {
    /// Internal failures are logged here, once.
    fn from(error: DiffError) -> tonic::Status {
        match error {
            DiffError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            DiffError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            DiffError::Unimplemented(m) => tonic::Status::unimplemented(m),
            DiffError::Peer { context, status } => {
                tonic::Status::new(status.code(), format!("{context}: {}", status.message()))
            }
            error @ (DiffError::Mount(_) | DiffError::Io { .. } | DiffError::Internal(_)) => {
                tracing::error!(error = %error, "diff failure");
                tonic::Status::internal(error.to_string())
            }
        }
    }
}

pub type Result<T, E = DiffError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_error_inside_the_archive_error_keeps_its_meaning() {
        let mismatch = BlobError::DigestMismatch { expected: "sha256:aa".into(), actual: "sha256:bb".into() };
        let seen = berth_archive::Error::Read(std::io::Error::other(mismatch));
        let status = tonic::Status::from(DiffError::from_archive(seen));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("sha256:aa") && status.message().contains("sha256:bb"), "{status:?}");

        let gone = BlobError::Read { digest: "sha256:aa".into(), status: tonic::Status::not_found("no such blob") };
        let status =
            tonic::Status::from(DiffError::from_archive(berth_archive::Error::Read(std::io::Error::other(gone))));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "read layer blob sha256:aa: no such blob");
    }

    #[test]
    fn bad_layers_are_invalid_arguments() {
        let escape = berth_archive::Error::InvalidEntry { path: "../x".into(), reason: "escapes the root".into() };
        assert_eq!(tonic::Status::from(DiffError::from_archive(escape)).code(), tonic::Code::InvalidArgument);
        let garbage = berth_archive::Error::Read(std::io::Error::other("corrupt deflate stream"));
        assert_eq!(tonic::Status::from(DiffError::from_archive(garbage)).code(), tonic::Code::InvalidArgument);
    }
}
