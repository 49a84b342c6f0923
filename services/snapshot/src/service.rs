//! The gRPC adapter: containerd's `containerd.services.snapshots.v1.Snapshots` over
//! [`Snapshotters`].
//!
//! Turns requests into snapshotter calls (namespace from metadata, snapshotter by name) and
//! errors into containerd's status codes. Calls that change disk and records run as tasks of
//! their own, so a client that hangs up midway cannot leave a half-made change behind.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use berth_api::containerd::services::snapshots::v1 as api;
use berth_api::containerd::services::snapshots::v1::snapshots_server::{Snapshots, SnapshotsServer};
use berth_api::containerd::types::Mount as ApiMount;
use berth_api::prost_types::Timestamp;
use futures::Stream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::Error;
use crate::events::{Event, Publisher};
use crate::filters;
use crate::info::{Info, Kind};
use crate::mount::Mount;
use crate::snapshotter::Snapshotter;
use crate::snapshotters::Snapshotters;

/// Infos per List message.
const LIST_BATCH: usize = 100;

/// The snapshots service; see the module docs.
#[derive(Clone)]
pub struct SnapshotsService {
    snapshotters: Arc<Snapshotters>,
    events: Option<Arc<dyn Publisher>>,
    /// Registers the namespaces snapshots are made in with the metadata service.
    namespaces: berth_peers::Namespaces,
    /// Adds snapshots made under a `containerd-lease` to that lease.
    leases: berth_peers::LeaseResources,
}

fn namespace<T>(request: &Request<T>) -> Result<String, Status> {
    berth_core::namespace::of(request)
}

/// Runs `task` to completion even if the caller stops waiting.
async fn detached<T: Send + 'static>(
    task: impl Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(task.in_current_span()).await {
        Ok(result) => result.map_err(Status::from),
        Err(e) => Err(Status::internal(format!("snapshot task failed: {e}"))),
    }
}

fn mount_to_api(mount: Mount) -> ApiMount {
    ApiMount { r#type: mount.kind, source: mount.source, target: mount.target, options: mount.options }
}

fn mounts_to_api(mounts: Vec<Mount>) -> Vec<ApiMount> {
    mounts.into_iter().map(mount_to_api).collect()
}

fn kind_to_api(kind: Kind) -> api::Kind {
    match kind {
        Kind::View => api::Kind::View,
        Kind::Active => api::Kind::Active,
        Kind::Committed => api::Kind::Committed,
    }
}

fn timestamp(time: SystemTime) -> Option<Timestamp> {
    Some(Timestamp::from(time))
}

fn info_to_api(info: Info) -> api::Info {
    api::Info {
        name: info.name,
        parent: info.parent,
        kind: kind_to_api(info.kind) as i32,
        created_at: timestamp(info.created_at),
        updated_at: timestamp(info.updated_at),
        labels: info.labels,
    }
}

impl SnapshotsService {
    pub fn new(snapshotters: Snapshotters) -> SnapshotsService {
        SnapshotsService {
            snapshotters: Arc::new(snapshotters),
            events: None,
            namespaces: berth_peers::Namespaces::default(),
            leases: berth_peers::LeaseResources::default(),
        }
    }

    /// Publishes events to, registers namespaces with and records lease resources in the
    /// metadata service among `peers`, when there is one. Must run inside a tokio runtime.
    pub fn with_peers(mut self, peers: &berth_peers::Peers) -> SnapshotsService {
        let Some(metadata) = peers.channel("metadata") else { return self };
        self.namespaces = berth_peers::Namespaces::new(Some(metadata.clone()));
        self.leases = berth_peers::LeaseResources::new(Some(metadata.clone()));
        self.with_events(Arc::new(crate::events::ToMetadata(berth_peers::Publisher::new(metadata))))
    }

    /// Before a call creates a snapshot: the namespace exists, and the lease the call runs
    /// under (if any) holds the snapshot, so the collector cannot take it half-used.
    async fn creating<T>(&self, request: &Request<T>, ns: &str, snapshotter: &str, key: &str) -> Result<(), Status> {
        self.namespaces.ensure(ns).await;
        if let Some(lease) = berth_peers::leases::of(request.metadata()) {
            self.leases.add(ns, &lease, &format!("snapshots/{snapshotter}"), key).await?;
        }
        Ok(())
    }

    /// Publishes `/snapshot/prepare`, `/snapshot/commit` and `/snapshot/remove` to `publisher`.
    pub fn with_events(mut self, publisher: Arc<dyn Publisher>) -> SnapshotsService {
        self.events = Some(publisher);
        self
    }

    pub fn into_server(self) -> SnapshotsServer<SnapshotsService> {
        SnapshotsServer::new(self)
    }

    fn snapshotter(&self, name: &str) -> Result<Arc<Snapshotter>, Status> {
        self.snapshotters.get(name).map_err(Status::from)
    }

    fn publish(&self, namespace: &str, event: Event) {
        if let Some(events) = &self.events {
            events.publish(namespace, event);
        }
    }
}

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        request: Request<api::PrepareSnapshotRequest>,
    ) -> Result<Response<api::PrepareSnapshotResponse>, Status> {
        let ns = namespace(&request)?;
        let sn = self.snapshotter(&request.get_ref().snapshotter)?;
        let sn_name = sn.name();
        self.creating(&request, &ns, sn_name, &request.get_ref().key).await?;
        let api::PrepareSnapshotRequest { key, parent, labels, .. } = request.into_inner();
        let (task_ns, task_key, task_parent) = (ns.clone(), key.clone(), parent.clone());
        let mounts = detached(async move { sn.prepare(&task_ns, &task_key, &task_parent, labels).await }).await?;
        self.publish(&ns, Event::Prepare { key, parent, snapshotter: sn_name.into() });
        Ok(Response::new(api::PrepareSnapshotResponse { mounts: mounts_to_api(mounts) }))
    }

    async fn view(
        &self,
        request: Request<api::ViewSnapshotRequest>,
    ) -> Result<Response<api::ViewSnapshotResponse>, Status> {
        let ns = namespace(&request)?;
        let sn = self.snapshotter(&request.get_ref().snapshotter)?;
        self.creating(&request, &ns, sn.name(), &request.get_ref().key).await?;
        let api::ViewSnapshotRequest { key, parent, labels, .. } = request.into_inner();
        let mounts = detached(async move { sn.view(&ns, &key, &parent, labels).await }).await?;
        Ok(Response::new(api::ViewSnapshotResponse { mounts: mounts_to_api(mounts) }))
    }

    async fn mounts(&self, request: Request<api::MountsRequest>) -> Result<Response<api::MountsResponse>, Status> {
        let ns = namespace(&request)?;
        let api::MountsRequest { snapshotter, key } = request.into_inner();
        let mounts = self.snapshotter(&snapshotter)?.mounts(&ns, &key).await?;
        Ok(Response::new(api::MountsResponse { mounts: mounts_to_api(mounts) }))
    }

    async fn commit(&self, request: Request<api::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let sn = self.snapshotter(&request.get_ref().snapshotter)?;
        let sn_name = sn.name();
        self.creating(&request, &ns, sn_name, &request.get_ref().name).await?;
        let api::CommitSnapshotRequest { name, key, labels, .. } = request.into_inner();
        let (task_ns, task_name, task_key) = (ns.clone(), name.clone(), key.clone());
        detached(async move { sn.commit(&task_ns, &task_name, &task_key, labels).await }).await?;
        self.publish(&ns, Event::Commit { key, name, snapshotter: sn_name.into() });
        Ok(Response::new(()))
    }

    async fn remove(&self, request: Request<api::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let api::RemoveSnapshotRequest { snapshotter, key } = request.into_inner();
        let sn = self.snapshotter(&snapshotter)?;
        let sn_name = sn.name();
        let (task_ns, task_key) = (ns.clone(), key.clone());
        detached(async move { sn.remove(&task_ns, &task_key).await }).await?;
        self.publish(&ns, Event::Remove { key, snapshotter: sn_name.into() });
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<api::StatSnapshotRequest>,
    ) -> Result<Response<api::StatSnapshotResponse>, Status> {
        let ns = namespace(&request)?;
        let api::StatSnapshotRequest { snapshotter, key } = request.into_inner();
        let info = self.snapshotter(&snapshotter)?.stat(&ns, &key).await?;
        Ok(Response::new(api::StatSnapshotResponse { info: Some(info_to_api(info)) }))
    }

    async fn update(
        &self,
        request: Request<api::UpdateSnapshotRequest>,
    ) -> Result<Response<api::UpdateSnapshotResponse>, Status> {
        let ns = namespace(&request)?;
        let api::UpdateSnapshotRequest { snapshotter, info, update_mask } = request.into_inner();
        let info = info.ok_or_else(|| Status::invalid_argument("update needs info with the snapshot's name"))?;
        let paths = update_mask.map(|mask| mask.paths).unwrap_or_default();
        let updated = self.snapshotter(&snapshotter)?.update(&ns, &info.name, info.labels, &paths).await?;
        Ok(Response::new(api::UpdateSnapshotResponse { info: Some(info_to_api(updated)) }))
    }

    type ListStream = Pin<Box<dyn Stream<Item = Result<api::ListSnapshotsResponse, Status>> + Send>>;

    async fn list(&self, request: Request<api::ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&request)?;
        let api::ListSnapshotsRequest { snapshotter, filters } = request.into_inner();
        let filters = filters::parse(&filters)?;
        let infos = self.snapshotter(&snapshotter)?.list(&ns, &filters).await?;
        let mut infos: Vec<api::Info> = infos.into_iter().map(info_to_api).collect();
        let mut batches = Vec::new();
        while !infos.is_empty() {
            let rest = infos.split_off(infos.len().min(LIST_BATCH));
            batches.push(Ok(api::ListSnapshotsResponse { info: std::mem::replace(&mut infos, rest) }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(&self, request: Request<api::UsageRequest>) -> Result<Response<api::UsageResponse>, Status> {
        let ns = namespace(&request)?;
        let api::UsageRequest { snapshotter, key } = request.into_inner();
        let usage = self.snapshotter(&snapshotter)?.usage(&ns, &key).await?;
        Ok(Response::new(api::UsageResponse { size: usage.size, inodes: usage.inodes }))
    }

    async fn cleanup(&self, request: Request<api::CleanupRequest>) -> Result<Response<()>, Status> {
        let sn = self.snapshotter(&request.get_ref().snapshotter)?;
        let removed = detached(async move { sn.cleanup().await }).await?;
        tracing::debug!(removed, "cleanup");
        Ok(Response::new(()))
    }
}
