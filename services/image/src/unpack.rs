//! Unpacking a pulled manifest's layers into a snapshotter, through the snapshot service's
//! Snapshots and Diff APIs, the way containerd's unpacker does.
//!
//! Each layer becomes the committed snapshot named by its chain ID (the digest of the
//! parent's chain ID and the layer's diff ID), so an image sharing its first layers with one
//! unpacked before reuses those snapshots. A layer is prepared on its parent under a unique
//! `extract-` key, applied by Diff.Apply (which checks nothing escapes the mount), checked
//! against the config's diff ID, and committed. Everything runs under the pull's lease.
//! Afterwards the layer blobs get `containerd.io/uncompressed=<diffID>` and the config
//! `containerd.io/gc.ref.snapshot.<snapshotter>=<top chain ID>`, which keeps the snapshots
//! alive as long as the image is.

use std::collections::HashMap;

use berth_api::berth::image::v1::{LayerProgress, LayerState};
use berth_api::containerd::services::diff::v1::ApplyRequest;
use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use berth_api::containerd::types;
use berth_peers::{LeaseResources, PeerChannel};
use serde::Deserialize;
use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::arrivals::Arrivals;
use crate::content::Content;
use crate::manifest::Descriptor;
use crate::progress::Progress;

/// Largest image config read.
const MAX_CONFIG_SIZE: usize = 16 << 20;
/// The label containerd's unpacker puts on the snapshots it prepares.
const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
const SNAPSHOT_GC_LABEL: &str = "containerd.io/gc.ref.snapshot.";

#[derive(Deserialize)]
struct Config {
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// The chain IDs of a stack of layers with these diff IDs (OCI image spec).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => crate::digest::sha256(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// Unpacks into one snapshotter, in one namespace, under one lease.
pub struct Unpacker {
    channel: PeerChannel,
    lease_resources: LeaseResources,
    namespace: String,
    lease: Option<String>,
    snapshotter: String,
}

impl Unpacker {
    /// Unpacks through the snapshot service on `channel`; `lease_resources` adds chains
    /// found already to the lease.
    pub fn new(
        channel: PeerChannel,
        lease_resources: LeaseResources,
        namespace: &str,
        lease: Option<String>,
        snapshotter: &str,
    ) -> Unpacker {
        Unpacker {
            channel,
            lease_resources,
            namespace: namespace.to_string(),
            lease,
            snapshotter: snapshotter.to_string(),
        }
    }

    fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut call = berth_peers::request(&self.namespace, message);
        if let Some(lease) = &self.lease
            && let Ok(value) = MetadataValue::try_from(lease.as_str())
        {
            call.metadata_mut().insert(berth_peers::leases::METADATA_KEY, value);
        }
        call
    }

    fn snapshots(&self) -> SnapshotsClient<PeerChannel> {
        SnapshotsClient::new(self.channel.clone())
    }

    /// Unpacks `layers` (in order) whose config is `config`, each once `arrivals` says it is
    /// stored; returns the top chain ID.
    pub async fn unpack(
        &self,
        content: &Content,
        config: &Descriptor,
        layers: &[Descriptor],
        arrivals: &Arrivals,
        progress: &Progress,
    ) -> Result<String, Status> {
        arrivals.wait(&config.digest).await?;
        let bytes = content.read_all(&config.digest, MAX_CONFIG_SIZE).await?;
        let parsed: Config = serde_json::from_slice(&bytes).map_err(|e| {
            Status::failed_precondition(format!("image config {} has no rootfs.diff_ids: {e}", config.digest))
        })?;
        let diff_ids = parsed.rootfs.diff_ids;
        if diff_ids.len() != layers.len() {
            return Err(Status::failed_precondition(format!(
                "image config {} lists {} diff IDs for {} layers",
                config.digest,
                diff_ids.len(),
                layers.len()
            )));
        }
        for diff_id in &diff_ids {
            crate::digest::validate(diff_id).map_err(|problem| {
                Status::failed_precondition(format!("image config {}: diff ID {diff_id:?}: {problem}", config.digest))
            })?;
        }
        let chain = chain_ids(&diff_ids);
        // Every chain goes into the lease before anyone looks for it, not after: a collection
        // running meanwhile (say, after the image that held it was removed) then either removed
        // it already, and the layer is unpacked again, or sees the lease and keeps it. Found
        // first and leased after, it could go in between, and the pull would end without it.
        if let Some(lease) = &self.lease {
            let kind = format!("snapshots/{}", self.snapshotter);
            // One after another: they change the same lease record.
            for id in &chain {
                self.lease_resources.add(&self.namespace, lease, &kind, id).await?;
            }
        }
        for (i, layer) in layers.iter().enumerate() {
            let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
            arrivals.wait(&layer.digest).await?;
            let state = self.layer(layer, &diff_ids[i], &chain[i], parent, progress).await?;
            progress.layer(LayerProgress {
                digest: layer.digest.clone(),
                chain_id: chain[i].clone(),
                state: state as i32,
            });
        }
        // The labels come last, all at once: they are not needed to unpack the next layer.
        let uncompressed = layers.iter().zip(&diff_ids).map(|(layer, diff_id)| {
            content.set_labels(&layer.digest, [(UNCOMPRESSED_LABEL.to_string(), diff_id.clone())].into())
        });
        futures::future::try_join_all(uncompressed).await?;
        let top = chain.last().cloned().unwrap_or_default();
        if !top.is_empty() {
            let label: HashMap<String, String> =
                [(format!("{SNAPSHOT_GC_LABEL}{}", self.snapshotter), top.clone())].into();
            content.set_labels(&config.digest, label).await?;
        }
        Ok(top)
    }

    /// One layer onto its parent's snapshot; Skipped when its chain is there already.
    async fn layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        parent: &str,
        progress: &Progress,
    ) -> Result<LayerState, Status> {
        let stat = StatSnapshotRequest { snapshotter: self.snapshotter.clone(), key: chain_id.to_string() };
        match self.snapshots().stat(self.call(stat)).await {
            Ok(_) => return Ok(LayerState::Skipped),
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(status),
        }
        progress.layer(LayerProgress {
            digest: layer.digest.clone(),
            chain_id: chain_id.to_string(),
            state: LayerState::Unpacking as i32,
        });
        let key = format!("extract-{:016x} {chain_id}", rand::random::<u64>());
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.clone(),
            parent: parent.to_string(),
            labels: [(SNAPSHOT_REF_LABEL.to_string(), chain_id.to_string())].into(),
        };
        let started = std::time::Instant::now();
        let mounts = match self.snapshots().prepare(self.call(prepare)).await {
            Ok(response) => response.into_inner().mounts,
            // Someone else unpacked this chain meanwhile.
            Err(status) if status.code() == tonic::Code::AlreadyExists => return Ok(LayerState::Skipped),
            Err(status) => {
                return Err(Status::new(
                    status.code(),
                    format!("preparing a snapshot for layer {} on {parent:?}: {}", layer.digest, status.message()),
                ));
            }
        };
        let prepared = started.elapsed();
        let result = self.apply_and_commit(layer, diff_id, chain_id, &key, mounts).await;
        tracing::debug!(digest = layer.digest, ?prepared, took = ?started.elapsed(), "layer unpacked");
        if result.is_err() || matches!(result, Ok(LayerState::Skipped)) {
            let remove = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.clone() };
            if let Err(status) = self.snapshots().remove(self.call(remove)).await
                && status.code() != tonic::Code::NotFound
            {
                tracing::warn!(key, "could not remove the unpack snapshot: {status}");
            }
        }
        result
    }

    async fn apply_and_commit(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        chain_id: &str,
        key: &str,
        mounts: Vec<types::Mount>,
    ) -> Result<LayerState, Status> {
        let apply = ApplyRequest {
            diff: Some(types::Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                annotations: layer.annotations.clone(),
            }),
            mounts,
            payloads: HashMap::new(),
        };
        let applied = DiffClient::new(self.channel.clone())
            .apply(self.call(apply))
            .await
            .map_err(|s| Status::new(s.code(), format!("applying layer {}: {}", layer.digest, s.message())))?
            .into_inner()
            .applied
            .unwrap_or_default();
        if applied.digest != diff_id {
            return Err(Status::failed_precondition(format!(
                "layer {} unpacked to {}, but the image config says its diff ID is {diff_id}",
                layer.digest, applied.digest
            )));
        }
        let commit = CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: chain_id.to_string(),
            key: key.to_string(),
            labels: HashMap::new(),
        };
        match self.snapshots().commit(self.call(commit)).await {
            Ok(_) => Ok(LayerState::Done),
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(LayerState::Skipped),
            Err(status) => Err(Status::new(
                status.code(),
                format!("committing layer {} as {chain_id}: {}", layer.digest, status.message()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = crate::digest::sha256(b"a");
        let b = crate::digest::sha256(b"b");
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], crate::digest::sha256(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
