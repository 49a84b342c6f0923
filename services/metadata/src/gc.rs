//! Garbage collection: mark from the roots, sweep what no root reaches.
//!
//! Roots, per namespace: images (their target), containers (their snapshot), unexpired
//! leases (their resources), and blobs or snapshots labelled `containerd.io/gc.root`. From
//! there `containerd.io/gc.ref.content*` and `containerd.io/gc.ref.snapshot.<snapshotter>*`
//! labels lead to more blobs and snapshots, and a snapshot holds its parent. Whatever is left
//! unmarked is removed through the content and snapshot services' own Delete/Remove (which
//! announce it with their events), except anything created after the collection started —
//! it may belong to work whose root is not written yet. Expired leases are removed first.
//!
//! A namespace is swept only when every service holding things in it answered: a service
//! that cannot be asked might hold the root that keeps something alive.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use berth_api::berth::metadata::v1::gc_server::{Gc, GcServer};
use berth_api::berth::metadata::v1::{CollectRequest, CollectResponse, Removed};
use berth_api::containerd::services::content::v1::DeleteContentRequest;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::snapshots::v1::RemoveSnapshotRequest;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_peers::request;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::containers::ContainerStore;
use crate::inventory::{Inventory, SNAPSHOTTERS};
use crate::leases::LeaseStore;
use crate::namespaces::NamespaceStore;

/// Deletions often come in bursts (`ctr rm a b c`): wait this long for the burst to end.
const DEBOUNCE: Duration = Duration::from_millis(100);

pub const ROOT_LABEL: &str = "containerd.io/gc.root";
const CONTENT_REF: &str = "containerd.io/gc.ref.content";
const SNAPSHOT_REF: &str = "containerd.io/gc.ref.snapshot.";

enum Ask {
    /// Something was deleted: collect shortly.
    Soon,
    /// Collect now and report (Leases.Delete with sync, Gc.Collect).
    Now(oneshot::Sender<Result<CollectResponse, Status>>),
}

/// How the rest of the service asks for a collection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Trigger {
    asks: mpsc::UnboundedSender<Ask>,
}

/// The receiving end, handed to [`Collector::run`].
pub struct Asks(mpsc::UnboundedReceiver<Ask>);

impl Trigger {
    pub fn new() -> (Trigger, Asks) {
        let (asks, receiver) = mpsc::unbounded_channel();
        (Trigger { asks }, Asks(receiver))
    }

    pub fn soon(&self) {
        let _ = self.asks.send(Ask::Soon);
    }

    /// Runs a collection (after any running one) and returns what it removed.
    pub async fn collect(&self) -> Result<CollectResponse, Status> {
        let (reply, report) = oneshot::channel();
        self.asks.send(Ask::Now(reply)).map_err(|_| Status::unavailable("the garbage collector has stopped"))?;
        report.await.map_err(|_| Status::unavailable("the garbage collector has stopped"))?
    }
}

/// What a label map references.
#[derive(Default)]
struct Refs {
    content: Vec<String>,
    snapshots: Vec<(String, String)>,
}

fn refs_of(labels: &HashMap<String, String>) -> Refs {
    let mut refs = Refs::default();
    for (key, value) in labels {
        if key == CONTENT_REF || key.strip_prefix(CONTENT_REF).is_some_and(|rest| rest.starts_with('.')) {
            refs.content.push(value.clone());
        } else if let Some(rest) = key.strip_prefix(SNAPSHOT_REF) {
            let snapshotter = rest.split('/').next().unwrap_or(rest);
            if !snapshotter.is_empty() {
                refs.snapshots.push((snapshotter.to_string(), value.clone()));
            }
        }
    }
    refs
}

fn created_before(timestamp: &Option<prost_types::Timestamp>, start: SystemTime) -> bool {
    timestamp.as_ref().is_some_and(|t| crate::time::to_system(t) < start)
}

pub struct Collector {
    namespaces: Arc<NamespaceStore>,
    containers: Arc<ContainerStore>,
    leases: Arc<LeaseStore>,
    inventory: Inventory,
    /// The earliest lease expiry seen by the last collection: collect again then.
    next_expiry: Mutex<Option<SystemTime>>,
}

impl Collector {
    pub fn new(
        namespaces: Arc<NamespaceStore>,
        containers: Arc<ContainerStore>,
        leases: Arc<LeaseStore>,
        inventory: Inventory,
    ) -> Self {
        Collector { namespaces, containers, leases, inventory, next_expiry: Mutex::new(None) }
    }

    /// Collects when asked, after deletions, when a lease expires and every `interval`.
    pub async fn run(self: Arc<Self>, mut asks: Asks, interval: Duration) {
        loop {
            let until_expiry = self
                .next_expiry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_millis(10));
            let wait = until_expiry.map_or(interval, |expiry| expiry.min(interval));
            let mut waiting = Vec::new();
            tokio::select! {
                ask = asks.0.recv() => match ask {
                    None => return,
                    Some(Ask::Now(reply)) => waiting.push(reply),
                    Some(Ask::Soon) => tokio::time::sleep(DEBOUNCE).await,
                },
                _ = tokio::time::sleep(wait) => {}
            }
            while let Ok(ask) = asks.0.try_recv() {
                if let Ask::Now(reply) = ask {
                    waiting.push(reply);
                }
            }
            let report = self.collect().await;
            for reply in waiting {
                let _ = reply.send(report.clone());
            }
        }
    }

    /// One collection over every namespace.
    pub async fn collect(&self) -> Result<CollectResponse, Status> {
        let _no_additions = self.leases.hold_additions().await;
        let started = Instant::now();
        let start = SystemTime::now();
        let mut removed = Vec::new();
        let mut next_expiry: Option<SystemTime> = None;
        for namespace in self.namespaces.names().await? {
            match self.collect_namespace(&namespace, start, &mut removed, &mut next_expiry).await {
                Ok(()) => {}
                Err(status) => tracing::warn!(namespace, "gc skipped the namespace: {}", status.message()),
            }
        }
        *self.next_expiry.lock().unwrap_or_else(|p| p.into_inner()) = next_expiry;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if removed.is_empty() {
            tracing::debug!(duration_ms, "gc: nothing to remove");
        } else {
            let count = |kind: &str| removed.iter().filter(|r: &&Removed| r.r#type.starts_with(kind)).count();
            tracing::info!(
                blobs = count("content"),
                snapshots = count("snapshots"),
                leases = count("leases"),
                duration_ms,
                "gc removed what nothing holds"
            );
            for r in &removed {
                tracing::info!(namespace = r.namespace, r#type = r.r#type, id = r.id, "gc removed");
            }
        }
        Ok(CollectResponse { removed, duration_ms })
    }

    async fn collect_namespace(
        &self,
        namespace: &str,
        start: SystemTime,
        removed: &mut Vec<Removed>,
        next_expiry: &mut Option<SystemTime>,
    ) -> Result<(), Status> {
        // Everything is listed before anything is removed: a service that cannot be asked
        // stops the sweep of this namespace. The order matters. Clients hand protection from a
        // lease to a root (create the image or container, then delete the lease), so leases
        // are read before roots: whichever moment the hand-over happens, one of the two is
        // seen. Blobs and snapshots come last, so anything made after the roots were read is
        // newer than `start` and left for the next collection.
        let leases = self.leases.records_in(namespace).await?;
        let images = self.inventory.images(namespace).await?;
        let containers = self.containers.list(namespace, &[]).await?;
        let blobs = self.inventory.blobs(namespace).await?;
        let mut snapshots = HashMap::new();
        for snapshotter in SNAPSHOTTERS {
            snapshots.insert(snapshotter.to_string(), self.inventory.snapshots(namespace, snapshotter).await?);
        }

        let blob_labels: HashMap<&str, &HashMap<String, String>> =
            blobs.iter().map(|b| (b.digest.as_str(), &b.labels)).collect();
        let snapshot_infos: HashMap<(&str, &str), &berth_api::containerd::services::snapshots::v1::Info> = snapshots
            .iter()
            .flat_map(|(sn, infos)| infos.iter().map(move |i| ((sn.as_str(), i.name.as_str()), i)))
            .collect();

        let mut content_queue: Vec<String> = Vec::new();
        let mut snapshot_queue: Vec<(String, String)> = Vec::new();
        let push_refs =
            |labels: &HashMap<String, String>, content: &mut Vec<String>, snaps: &mut Vec<(String, String)>| {
                let refs = refs_of(labels);
                content.extend(refs.content);
                snaps.extend(refs.snapshots);
            };
        for image in &images {
            if let Some(target) = &image.target {
                content_queue.push(target.digest.clone());
            }
            push_refs(&image.labels, &mut content_queue, &mut snapshot_queue);
        }
        for container in &containers {
            if !container.snapshotter.is_empty() && !container.snapshot_key.is_empty() {
                snapshot_queue.push((container.snapshotter.clone(), container.snapshot_key.clone()));
            }
            push_refs(&container.labels, &mut content_queue, &mut snapshot_queue);
        }
        let now = SystemTime::now();
        let mut expired = Vec::new();
        for (id, lease) in &leases {
            if lease.expired(now) {
                expired.push(id.clone());
                continue;
            }
            if let Some(at) = lease.expires() {
                *next_expiry = Some(next_expiry.map_or(at, |n| n.min(at)));
            }
            for resource in &lease.resources {
                match resource.r#type.split_once('/') {
                    None if resource.r#type == "content" => content_queue.push(resource.id.clone()),
                    Some(("snapshots", snapshotter)) => {
                        snapshot_queue.push((snapshotter.to_string(), resource.id.clone()))
                    }
                    _ => {}
                }
            }
        }
        for blob in &blobs {
            if blob.labels.contains_key(ROOT_LABEL) {
                content_queue.push(blob.digest.clone());
            }
        }
        for (snapshotter, infos) in &snapshots {
            for info in infos.iter().filter(|i| i.labels.contains_key(ROOT_LABEL)) {
                snapshot_queue.push((snapshotter.clone(), info.name.clone()));
            }
        }

        // Mark: follow references until nothing new turns up. No resource joins a lease
        // while this runs (`collect` holds the leases' additions), so the leases read above
        // stay true until the sweep ends.
        let mut marked_content: HashSet<String> = HashSet::new();
        let mut marked_snapshots: HashSet<(String, String)> = HashSet::new();
        while !content_queue.is_empty() || !snapshot_queue.is_empty() {
            while let Some(digest) = content_queue.pop() {
                if marked_content.insert(digest.clone())
                    && let Some(labels) = blob_labels.get(digest.as_str())
                {
                    push_refs(labels, &mut content_queue, &mut snapshot_queue);
                }
            }
            while let Some((snapshotter, key)) = snapshot_queue.pop() {
                if !marked_snapshots.insert((snapshotter.clone(), key.clone())) {
                    continue;
                }
                if let Some(info) = snapshot_infos.get(&(snapshotter.as_str(), key.as_str())) {
                    if !info.parent.is_empty() {
                        snapshot_queue.push((snapshotter.clone(), info.parent.clone()));
                    }
                    push_refs(&info.labels, &mut content_queue, &mut snapshot_queue);
                }
            }
        }

        // Sweep: expired leases, then blobs, then snapshots leaves-first.
        for id in expired {
            if self.leases.remove_expired(namespace, &id).await? {
                removed.push(Removed { namespace: namespace.to_string(), r#type: "leases".into(), id });
            }
        }
        if let Some(channel) = self.inventory.peers().channel("content") {
            let mut content = ContentClient::new(channel);
            for blob in
                blobs.iter().filter(|b| !marked_content.contains(&b.digest) && created_before(&b.created_at, start))
            {
                match content.delete(request(namespace, DeleteContentRequest { digest: blob.digest.clone() })).await {
                    Ok(_) => removed.push(Removed {
                        namespace: namespace.to_string(),
                        r#type: "content".into(),
                        id: blob.digest.clone(),
                    }),
                    Err(status) if status.code() == tonic::Code::NotFound => {}
                    Err(status) => {
                        tracing::warn!(namespace, digest = blob.digest, "gc could not delete blob: {status}")
                    }
                }
            }
        }
        if let Some(channel) = self.inventory.peers().channel("snapshot") {
            let mut client = SnapshotsClient::new(channel);
            for (snapshotter, infos) in &snapshots {
                let mut left: Vec<&berth_api::containerd::services::snapshots::v1::Info> = infos
                    .iter()
                    .filter(|i| {
                        !marked_snapshots.contains(&(snapshotter.clone(), i.name.clone()))
                            && created_before(&i.created_at, start)
                    })
                    .collect();
                let mut present: HashSet<&str> = infos.iter().map(|i| i.name.as_str()).collect();
                // Children first: a snapshot with children left cannot be removed yet.
                loop {
                    let has_children: HashSet<&str> =
                        infos.iter().filter(|i| present.contains(i.name.as_str())).map(|i| i.parent.as_str()).collect();
                    let (ready, waiting): (Vec<_>, Vec<_>) =
                        left.into_iter().partition(|i| !has_children.contains(i.name.as_str()));
                    if ready.is_empty() {
                        break;
                    }
                    for info in ready {
                        let call = RemoveSnapshotRequest { snapshotter: snapshotter.clone(), key: info.name.clone() };
                        match client.remove(request(namespace, call)).await {
                            Ok(_) => removed.push(Removed {
                                namespace: namespace.to_string(),
                                r#type: format!("snapshots/{snapshotter}"),
                                id: info.name.clone(),
                            }),
                            Err(status) if status.code() == tonic::Code::NotFound => {}
                            Err(status) => {
                                tracing::warn!(
                                    namespace,
                                    snapshotter,
                                    key = info.name,
                                    "gc could not remove snapshot: {status}"
                                );
                                continue;
                            }
                        }
                        present.remove(info.name.as_str());
                    }
                    left = waiting;
                }
            }
        }
        Ok(())
    }
}

/// berth's Gc service: run a collection on request.
pub struct GcService {
    pub(crate) trigger: Trigger,
}

impl GcService {
    pub fn into_server(self) -> GcServer<Self> {
        GcServer::new(self)
    }
}

#[tonic::async_trait]
impl Gc for GcService {
    async fn collect(&self, _request: Request<CollectRequest>) -> Result<Response<CollectResponse>, Status> {
        Ok(Response::new(self.trigger.collect().await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_reference_content_and_snapshots() {
        let labels: HashMap<String, String> = [
            ("containerd.io/gc.ref.content.l.0", "sha256:a"),
            ("containerd.io/gc.ref.content", "sha256:b"),
            ("containerd.io/gc.ref.contentious", "sha256:no"),
            ("containerd.io/gc.ref.snapshot.overlayfs", "chain"),
            ("containerd.io/gc.ref.snapshot.native/1", "other"),
            ("unrelated", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut refs = refs_of(&labels);
        refs.content.sort();
        refs.snapshots.sort();
        assert_eq!(refs.content, ["sha256:a", "sha256:b"]);
        assert_eq!(refs.snapshots, [("native".into(), "other".into()), ("overlayfs".into(), "chain".into())]);
    }
}
