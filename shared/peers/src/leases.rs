//! Work done under a lease: containerd clients put the lease id in the `containerd-lease`
//! gRPC metadata key, and everything created by such a call (a blob, an ingest, a snapshot)
//! is added to the lease so the garbage collector keeps it until the lease goes.

use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_api::containerd::services::leases::v1::{AddResourceRequest, Resource};
use tonic::metadata::MetadataMap;

use crate::peers::{PeerChannel, request};

/// The gRPC metadata key containerd clients carry their lease in.
pub const METADATA_KEY: &str = "containerd-lease";

/// The lease a call runs under, if any.
pub fn of(metadata: &MetadataMap) -> Option<String> {
    metadata.get(METADATA_KEY).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()).map(str::to_string)
}

/// Adds resources to leases held by the metadata service.
#[derive(Clone, Default)]
pub struct LeaseResources {
    metadata: Option<PeerChannel>,
}

impl LeaseResources {
    pub fn new(metadata: Option<PeerChannel>) -> Self {
        LeaseResources { metadata }
    }

    /// Records that `lease` holds `kind`/`id` (kind: `content`, `ingests`,
    /// `snapshots/<snapshotter>`). Fails when the lease does not exist (NotFound) or the
    /// metadata service cannot be reached: the caller should fail its call then, since what it
    /// created would otherwise be unprotected.
    pub async fn add(&self, namespace: &str, lease: &str, kind: &str, id: &str) -> Result<(), tonic::Status> {
        let Some(channel) = &self.metadata else { return Ok(()) };
        let add = AddResourceRequest {
            id: lease.to_string(),
            resource: Some(Resource { id: id.to_string(), r#type: kind.to_string() }),
        };
        LeasesClient::new(channel.clone()).add_resource(request(namespace, add)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lease_from_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(of(&metadata), None);
        metadata.insert(METADATA_KEY, "pull-1".parse().unwrap());
        assert_eq!(of(&metadata).as_deref(), Some("pull-1"));
    }
}
