use std::io;

/// Why applying or creating a layer failed.
///
/// When `apply` fails, the root may hold a partly applied layer: the caller removes it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The media type is not a layer type this crate knows.
    #[error("unsupported layer media type {0:?}")]
    UnsupportedMediaType(String),

    /// An expected diffID that is not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid diff id {0:?}: expected sha256:<64 hex digits>")]
    InvalidDiffId(String),

    /// The uncompressed layer is larger than [`crate::Limits::max_uncompressed_bytes`].
    #[error("layer is larger than the limit of {limit} bytes uncompressed")]
    TooLarge { limit: u64 },

    /// The layer stream could not be read or decompressed.
    #[error("read layer: {0}")]
    Read(#[source] io::Error),

    /// The layer is not a well-formed tar stream.
    #[error("malformed layer: {0}")]
    Malformed(String),

    /// An entry the layer must not contain (a path out of the root, a forbidden xattr,
    /// a whiteout of `..`, an unsupported entry type, ...).
    #[error("invalid layer entry {path:?}: {reason}")]
    InvalidEntry { path: String, reason: String },

    /// The uncompressed stream does not have the expected digest.
    #[error("layer diff id mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch { expected: String, actual: String },

    /// A filesystem operation inside the root failed; `path` is relative to the root.
    #[error("{op} {path:?}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },

    /// A tree cannot be turned into a layer (e.g. an overlay upper dir using metacopy).
    #[error("cannot diff {path:?}: {reason}")]
    Unsupported { path: String, reason: String },

    /// Writing the produced layer failed.
    #[error("write layer: {0}")]
    Write(#[source] io::Error),
}

impl Error {
    /// True when the error is about the layer's content (the caller should answer
    /// InvalidArgument/FailedPrecondition rather than Internal).
    pub fn is_invalid_layer(&self) -> bool {
        matches!(
            self,
            Error::UnsupportedMediaType(_)
                | Error::InvalidDiffId(_)
                | Error::TooLarge { .. }
                | Error::Malformed(_)
                | Error::InvalidEntry { .. }
                | Error::DiffIdMismatch { .. }
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { op, path, source }
    }

    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidEntry { path: path.into(), reason: reason.into() }
    }
}
