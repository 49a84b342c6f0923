//! The gRPC adapter: containerd's `containerd.services.diff.v1.Diff` over [`apply`] and
//! [`compare`].
//!
//! Both calls run as tasks of their own, so a client that hangs up midway leaves neither a
//! mount nor a half-written ingest behind.

use std::path::{Path, PathBuf};

use berth_api::containerd::services::diff::v1::diff_server::{Diff, DiffServer};
use berth_api::containerd::services::diff::v1::{ApplyRequest, ApplyResponse, DiffRequest, DiffResponse};
use berth_api::containerd::types::{Descriptor, Mount as ApiMount};
use berth_archive::Limits;
use berth_peers::{LeaseResources, PeerChannel, Peers};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::diff::apply::{self, Layer};
use crate::diff::compare::{self, Context};
use crate::diff::error::DiffError;
use crate::diff::tempmount;
use crate::mount::Mount;

/// What Apply answers for any layer: the uncompressed tar it unpacked.
const APPLIED_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// The diff service; see the module docs.
#[derive(Clone)]
pub struct DiffService {
    /// Mount points for the mount sets that are mounted during a call.
    tmpmounts: PathBuf,
    peers: Peers,
    leases: LeaseResources,
    limits: Limits,
}

fn mount_from_api(mount: ApiMount) -> Mount {
    Mount { kind: mount.r#type, source: mount.source, target: mount.target, options: mount.options }
}

fn mounts_from_api(mounts: Vec<ApiMount>) -> Vec<Mount> {
    mounts.into_iter().map(mount_from_api).collect()
}

/// Runs `task` to completion even if the caller stops waiting.
async fn detached<T: Send + 'static>(
    task: impl Future<Output = Result<T, DiffError>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(task.in_current_span()).await {
        Ok(result) => result.map_err(Status::from),
        Err(e) => Err(Status::internal(format!("diff task failed: {e}"))),
    }
}

impl DiffService {
    /// A diff service mounting under `root/tmpmounts` (cleaned up now, in case a killed
    /// process left mounts there) that reads and writes layers in the `content` peer and adds
    /// to leases through the `metadata` peer. Must run inside a tokio runtime.
    pub fn new(root: &Path, peers: &Peers) -> DiffService {
        let tmpmounts = root.join("tmpmounts");
        let swept = tempmount::sweep(&tmpmounts);
        if swept > 0 {
            tracing::info!(swept, dir = %tmpmounts.display(), "removed temporary mounts left by an earlier run");
        }
        if !peers.has("content") {
            tracing::warn!("no content peer (--peer content=...): Diff and Apply will fail");
        }
        DiffService {
            tmpmounts,
            peers: peers.clone(),
            leases: LeaseResources::new(peers.channel("metadata")),
            limits: Limits::default(),
        }
    }

    /// Bounds the uncompressed size of the layers Apply takes.
    pub fn with_limits(mut self, limits: Limits) -> DiffService {
        self.limits = limits;
        self
    }

    pub fn into_server(self) -> DiffServer<DiffService> {
        DiffServer::new(self)
    }

    fn content(&self) -> Result<PeerChannel, Status> {
        self.peers.channel("content").ok_or_else(|| {
            Status::failed_precondition(
                "the diff service needs the content service: start berth-snapshot with --peer content=SOCKET",
            )
        })
    }
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(&self, request: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let ns = berth_core::namespace::of(&request)?;
        // Payloads configure stream processors (e.g. decryption), which berth does not have.
        let ApplyRequest { diff, mounts, payloads: _ } = request.into_inner();
        let descriptor =
            diff.ok_or_else(|| Status::invalid_argument("apply needs the layer's descriptor (diff is empty)"))?;
        let layer = Layer { media_type: descriptor.media_type, digest: descriptor.digest, size: descriptor.size };
        let to = apply::check(&layer, &mounts_from_api(mounts))?;
        let content = self.content()?;
        let (limits, tmpmounts) = (self.limits, self.tmpmounts.clone());
        let started = std::time::Instant::now();
        let applied = detached(async move {
            let applied = apply::apply(content, &ns, &layer, to, limits, tmpmounts).await?;
            tracing::debug!(
                digest = layer.digest,
                diff_id = applied.diff_id,
                size = applied.size,
                elapsed = ?started.elapsed(),
                "layer applied"
            );
            Ok(applied)
        })
        .await?;
        Ok(Response::new(ApplyResponse {
            applied: Some(Descriptor {
                media_type: APPLIED_MEDIA_TYPE.to_string(),
                digest: applied.diff_id,
                size: i64::try_from(applied.size).unwrap_or(i64::MAX),
                annotations: Default::default(),
            }),
        }))
    }

    async fn diff(&self, request: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let ns = berth_core::namespace::of(&request)?;
        let lease = berth_peers::leases::of(request.metadata());
        let DiffRequest { left, right, media_type, r#ref, labels, source_date_epoch } = request.into_inner();
        if source_date_epoch.is_some() {
            // Layers are already reproducible: whiteouts carry no time, mtimes are the files'.
            tracing::debug!("source_date_epoch is ignored");
        }
        let request = compare::Request {
            left: mounts_from_api(left),
            right: mounts_from_api(right),
            media_type,
            reference: r#ref,
            labels,
        };
        let context =
            Context { content: self.content()?, leases: self.leases.clone(), tmpmounts: self.tmpmounts.clone() };
        let made = detached(async move { compare::diff(context, &ns, lease, request).await }).await?;
        tracing::debug!(digest = made.digest, diff_id = made.diff_id, size = made.size, "diff written");
        Ok(Response::new(DiffResponse {
            diff: Some(Descriptor {
                media_type: made.media_type,
                digest: made.digest,
                size: i64::try_from(made.size).unwrap_or(i64::MAX),
                annotations: Default::default(),
            }),
        }))
    }
}
