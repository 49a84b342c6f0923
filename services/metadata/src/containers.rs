//! containerd's Containers service: container records (spec, image, runtime, snapshot,
//! labels) with no runtime state. Deleting one lets the garbage collector release its
//! snapshot once nothing else holds it.

use std::pin::Pin;
use std::sync::Arc;

use berth_api::containerd::events::{ContainerCreate, ContainerDelete, ContainerUpdate, container_create};
use berth_api::containerd::services::containers::v1::containers_server::{Containers, ContainersServer};
use berth_api::containerd::services::containers::v1::*;
use berth_core::filters::{Adaptor, AnyOf, label_field};
use berth_store::{Compare, StoreError, Txn};
use futures::Stream;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::events::Broker;
use crate::gc::Trigger;
use crate::namespaces::NamespaceStore;
use crate::records::{self, Records, Versioned};

/// How often a create retries when its namespace changed under it.
const CREATE_ATTEMPTS: usize = 3;

pub struct ContainerStore {
    records: Records,
    broker: Broker,
    namespaces: Arc<NamespaceStore>,
    gc: Trigger,
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("container {id}: not found"))
}

/// containerd's validateContainer.
fn validate(container: &Container) -> Result<(), Status> {
    berth_core::identifiers::validate("container.ID", &container.id)?;
    if container.extensions.keys().any(String::is_empty) {
        return Err(Status::invalid_argument("container.Extensions: extension keys must not be zero-length"));
    }
    berth_core::labels::validate(&container.labels)
        .map_err(|s| Status::invalid_argument(format!("container.Labels: {}", s.message())))?;
    if container.runtime.as_ref().is_none_or(|r| r.name.is_empty()) {
        return Err(Status::invalid_argument("container.Runtime.Name must be set"));
    }
    if container.spec.is_none() {
        return Err(Status::invalid_argument("container.Spec must be set"));
    }
    if !container.snapshot_key.is_empty() && container.snapshotter.is_empty() {
        return Err(Status::invalid_argument("container.Snapshotter must be set if container.SnapshotKey is set"));
    }
    Ok(())
}

impl ContainerStore {
    pub fn new(records: Records, broker: Broker, namespaces: Arc<NamespaceStore>, gc: Trigger) -> Self {
        ContainerStore { records, broker, namespaces, gc }
    }

    async fn read(&self, namespace: &str, id: &str) -> Result<Versioned<Container>, Status> {
        let entry = self.records.get(&records::container_key(namespace, id)).await?.ok_or_else(|| not_found(id))?;
        records::decode_proto(entry)
    }

    pub async fn create(&self, namespace: &str, mut container: Container) -> Result<Container, Status> {
        validate(&container)?;
        let now = crate::time::now();
        container.created_at = Some(now);
        container.updated_at = Some(now);
        let key = records::container_key(namespace, &container.id);
        let bytes = container.encode_to_vec();
        for _ in 0..CREATE_ATTEMPTS {
            let entered = self.namespaces.enter(namespace).await?;
            let txn = entered.guard(Txn::new().when(Compare::Absent(key.clone())).put(key.clone(), bytes.clone()));
            match self.records.commit(txn).await {
                Ok(()) => {
                    self.namespaces.entered(&entered);
                    self.broker.publish(
                        namespace,
                        "/containers/create",
                        &ContainerCreate {
                            id: container.id.clone(),
                            image: container.image.clone(),
                            runtime: container.runtime.as_ref().map(|r| container_create::Runtime {
                                name: r.name.clone(),
                                options: r.options.clone(),
                            }),
                        },
                    );
                    return Ok(container);
                }
                Err(StoreError::Conflict(_)) => {
                    self.namespaces.forget(namespace);
                    if self.records.get(&key).await?.is_some() {
                        return Err(Status::already_exists(format!("container {}: already exists", container.id)));
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(Status::aborted(format!("container {}: namespace {namespace} kept changing; retry", container.id)))
    }

    pub async fn get(&self, namespace: &str, id: &str) -> Result<Container, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("container id must be set"));
        }
        Ok(self.read(namespace, id).await?.value)
    }

    pub async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Container>, Status> {
        let filters = AnyOf::parse(filters)?;
        let mut containers = Vec::new();
        for entry in self.records.list(&records::containers_prefix(namespace)).await? {
            let container: Versioned<Container> = records::decode_proto(entry)?;
            if filters.matches(&ContainerFields(&container.value)) {
                containers.push(container.value);
            }
        }
        Ok(containers)
    }

    /// containerd's update rules: with a mask, the paths `labels`, `labels.<key>`, `spec`,
    /// `extensions`, `extensions.<key>`, `image`, `snapshotkey`; without one, those fields are
    /// replaced and snapshotter and runtime must not change. The write compares the revision
    /// read, so a concurrent update of the same container gets Aborted instead of being lost.
    pub async fn update(
        &self,
        namespace: &str,
        container: Container,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<Container, Status> {
        if container.id.is_empty() {
            return Err(Status::invalid_argument("container id must be set"));
        }
        let current = self.read(namespace, &container.id).await?;
        let mut updated = current.value.clone();
        let mut paths = mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            if container.snapshotter != updated.snapshotter {
                return Err(Status::invalid_argument("container.Snapshotter field is immutable"));
            }
            if container.runtime.as_ref().map(|r| &r.name) != updated.runtime.as_ref().map(|r| &r.name) {
                return Err(Status::invalid_argument("container.Runtime.Name field is immutable"));
            }
            paths = ["labels", "spec", "extensions", "image", "snapshotkey"].map(String::from).to_vec();
        }
        for path in &paths {
            if let Some(key) = path.strip_prefix("labels.") {
                match container.labels.get(key) {
                    Some(value) => updated.labels.insert(key.to_string(), value.clone()),
                    None => updated.labels.remove(key),
                };
                continue;
            }
            if let Some(key) = path.strip_prefix("extensions.") {
                match container.extensions.get(key) {
                    Some(value) => updated.extensions.insert(key.to_string(), value.clone()),
                    None => updated.extensions.remove(key),
                };
                continue;
            }
            match path.as_str() {
                "labels" => updated.labels = container.labels.clone(),
                "spec" => updated.spec = container.spec.clone(),
                "extensions" => updated.extensions = container.extensions.clone(),
                "image" => updated.image = container.image.clone(),
                "snapshotkey" => updated.snapshot_key = container.snapshot_key.clone(),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "cannot update {path:?} field on container {:?}",
                        container.id
                    )));
                }
            }
        }
        // An empty value removes a label, as containerd's label storage does.
        updated.labels.retain(|_, value| !value.is_empty());
        validate(&updated)?;
        updated.updated_at = Some(crate::time::now());
        let txn = Txn::new()
            .when(Compare::Revision(current.key.clone(), current.revision))
            .put(current.key.clone(), updated.encode_to_vec());
        match self.records.commit(txn).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Status::aborted(format!(
                    "container {}: changed by someone else during this update; read it again and retry",
                    container.id
                )));
            }
            Err(err) => return Err(err.into()),
        }
        self.broker.publish(
            namespace,
            "/containers/update",
            &ContainerUpdate {
                id: updated.id.clone(),
                image: updated.image.clone(),
                labels: updated.labels.clone(),
                snapshot_key: updated.snapshot_key.clone(),
            },
        );
        if updated.snapshot_key != current.value.snapshot_key {
            self.gc.soon();
        }
        Ok(updated)
    }

    pub async fn delete(&self, namespace: &str, id: &str) -> Result<(), Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument("container id must be set"));
        }
        let current = self.read(namespace, id).await?;
        match self
            .records
            .commit(Txn::new().when(Compare::Revision(current.key.clone(), current.revision)).delete(current.key))
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Status::aborted(format!("container {id}: changed during the delete; retry")));
            }
            Err(err) => return Err(err.into()),
        }
        self.broker.publish(namespace, "/containers/delete", &ContainerDelete { id: id.to_string() });
        self.gc.soon();
        Ok(())
    }
}

/// Container filters see `id`, `image`, `runtime.name`, `snapshotter`, `snapshotkey` and
/// `labels.<key>`.
struct ContainerFields<'a>(&'a Container);

impl Adaptor for ContainerFields<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        let container = self.0;
        let non_empty = |value: &String| Some(value.clone()).filter(|v| !v.is_empty());
        match (fieldpath.first().map(String::as_str)?, fieldpath.len()) {
            ("id", 1) => non_empty(&container.id),
            ("image", 1) => non_empty(&container.image),
            ("runtime", 2) if fieldpath[1] == "name" => container.runtime.as_ref().and_then(|r| non_empty(&r.name)),
            ("snapshotter", 1) => non_empty(&container.snapshotter),
            ("snapshotkey", 1) => non_empty(&container.snapshot_key),
            ("labels", _) => label_field(&container.labels, &fieldpath[1..]),
            _ => None,
        }
    }
}

pub struct ContainersService {
    pub(crate) metadata: crate::Metadata,
}

impl ContainersService {
    pub fn into_server(self) -> ContainersServer<Self> {
        ContainersServer::new(self)
    }
}

type ContainerStream = Pin<Box<dyn Stream<Item = Result<ListContainerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(&self, request: Request<GetContainerRequest>) -> Result<Response<GetContainerResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let container = self.metadata.containers.get(&namespace, &request.into_inner().id).await?;
        Ok(Response::new(GetContainerResponse { container: Some(container) }))
    }

    async fn list(&self, request: Request<ListContainersRequest>) -> Result<Response<ListContainersResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let containers = self.metadata.containers.list(&namespace, &request.into_inner().filters).await?;
        Ok(Response::new(ListContainersResponse { containers }))
    }

    type ListStreamStream = ContainerStream;

    async fn list_stream(&self, request: Request<ListContainersRequest>) -> Result<Response<ContainerStream>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let containers = self.metadata.containers.list(&namespace, &request.into_inner().filters).await?;
        let messages = containers.into_iter().map(|container| Ok(ListContainerMessage { container: Some(container) }));
        Ok(Response::new(Box::pin(futures::stream::iter(messages))))
    }

    async fn create(
        &self,
        request: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let container =
            request.into_inner().container.ok_or_else(|| Status::invalid_argument("container must be set"))?;
        let container = self.metadata.containers.create(&namespace, container).await?;
        Ok(Response::new(CreateContainerResponse { container: Some(container) }))
    }

    async fn update(
        &self,
        request: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        let container = request.container.ok_or_else(|| Status::invalid_argument("container must be set"))?;
        let container = self.metadata.containers.update(&namespace, container, request.update_mask).await?;
        Ok(Response::new(UpdateContainerResponse { container: Some(container) }))
    }

    async fn delete(&self, request: Request<DeleteContainerRequest>) -> Result<Response<()>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        self.metadata.containers.delete(&namespace, &request.into_inner().id).await?;
        Ok(Response::new(()))
    }
}
