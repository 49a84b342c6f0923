//! The namespace a call runs in, carried like containerd does in gRPC metadata.

use tonic::Status;
use tonic::metadata::MetadataMap;

/// gRPC metadata key containerd clients put the namespace in.
pub const METADATA_KEY: &str = "containerd-namespace";

/// Namespace used when a call carries none.
pub const DEFAULT: &str = "default";

/// Reads and validates the namespace of a request; `default` when absent.
pub fn from_metadata(metadata: &MetadataMap) -> Result<String, Status> {
    let Some(value) = metadata.get(METADATA_KEY) else {
        return Ok(DEFAULT.to_string());
    };
    let namespace =
        value.to_str().map_err(|_| Status::invalid_argument("namespace: containerd-namespace is not valid ASCII"))?;
    crate::identifiers::validate("namespace", namespace)?;
    Ok(namespace.to_string())
}

/// Reads the namespace of a request.
pub fn of<T>(request: &tonic::Request<T>) -> Result<String, Status> {
    from_metadata(request.metadata())
}
