//! What the other services hold in a namespace, asked through their own APIs: blobs from
//! content, images from image, snapshots from snapshot (each snapshotter in turn).
//!
//! Used to refuse deleting a namespace that is not empty, and by the garbage collector.
//! A service berthd did not start (no `--peer` for it) holds nothing; one that was given but
//! does not answer is an error, never "nothing".

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{Info as BlobInfo, ListContentRequest};
use berth_api::containerd::services::images::v1::images_client::ImagesClient;
use berth_api::containerd::services::images::v1::{Image, ListImagesRequest};
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::snapshots::v1::{Info as SnapshotInfo, ListSnapshotsRequest};
use berth_peers::{Peers, request};
use tonic::Status;

/// The snapshotters berth-snapshot serves.
pub const SNAPSHOTTERS: &[&str] = &["overlayfs", "native"];

/// Reaches the peers that hold a namespace's other resources.
#[derive(Clone, Default)]
pub struct Inventory {
    peers: Peers,
}

fn unreachable(service: &str, namespace: &str, status: Status) -> Status {
    Status::unavailable(format!("asking the {service} service about namespace {namespace}: {}", status.message()))
}

impl Inventory {
    pub fn new(peers: Peers) -> Self {
        Inventory { peers }
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Every blob the namespace has a record of.
    pub async fn blobs(&self, namespace: &str) -> Result<Vec<BlobInfo>, Status> {
        let Some(channel) = self.peers.channel("content") else { return Ok(Vec::new()) };
        let mut stream = ContentClient::new(channel)
            .list(request(namespace, ListContentRequest { filters: Vec::new() }))
            .await
            .map_err(|s| unreachable("content", namespace, s))?
            .into_inner();
        let mut blobs = Vec::new();
        while let Some(page) = stream.message().await.map_err(|s| unreachable("content", namespace, s))? {
            blobs.extend(page.info);
        }
        Ok(blobs)
    }

    pub async fn images(&self, namespace: &str) -> Result<Vec<Image>, Status> {
        let Some(channel) = self.peers.channel("image") else { return Ok(Vec::new()) };
        let response = ImagesClient::new(channel)
            .list(request(namespace, ListImagesRequest { filters: Vec::new() }))
            .await
            .map_err(|s| unreachable("image", namespace, s))?;
        Ok(response.into_inner().images)
    }

    /// Snapshots of one snapshotter; a snapshotter the service does not have holds nothing.
    pub async fn snapshots(&self, namespace: &str, snapshotter: &str) -> Result<Vec<SnapshotInfo>, Status> {
        let Some(channel) = self.peers.channel("snapshot") else { return Ok(Vec::new()) };
        let call =
            request(namespace, ListSnapshotsRequest { snapshotter: snapshotter.to_string(), filters: Vec::new() });
        let mut stream = match SnapshotsClient::new(channel).list(call).await {
            Ok(response) => response.into_inner(),
            Err(status) if matches!(status.code(), tonic::Code::InvalidArgument | tonic::Code::NotFound) => {
                return Ok(Vec::new());
            }
            Err(status) => return Err(unreachable("snapshot", namespace, status)),
        };
        let mut snapshots = Vec::new();
        while let Some(page) = stream.message().await.map_err(|s| unreachable("snapshot", namespace, s))? {
            snapshots.extend(page.info);
        }
        Ok(snapshots)
    }

    /// What other services still hold in `namespace`, named the way containerd names it
    /// ("images", "blobs", "snapshots on overlayfs"); empty when nothing.
    pub async fn held(&self, namespace: &str) -> Result<Vec<String>, Status> {
        let mut held = Vec::new();
        if !self.images(namespace).await?.is_empty() {
            held.push("images".to_string());
        }
        if !self.blobs(namespace).await?.is_empty() {
            held.push("blobs".to_string());
        }
        for snapshotter in SNAPSHOTTERS {
            if !self.snapshots(namespace, snapshotter).await?.is_empty() {
                held.push(format!("snapshots on {snapshotter}"));
            }
        }
        Ok(held)
    }
}
