//! containerd's Namespaces service, and the namespace checks every other record goes through.
//!
//! Namespaces appear implicitly: creating a container or lease in a namespace creates it, as
//! containerd does, and the other services register theirs through Create (see berth-peers).
//! Deleting one refuses while anything — here or in another service — is left in it.

use std::collections::HashMap;
use std::sync::Mutex;

use berth_api::containerd::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use berth_api::containerd::services::namespaces::v1::namespaces_server::{Namespaces, NamespacesServer};
use berth_api::containerd::services::namespaces::v1::*;
use berth_core::filters::{Adaptor, AnyOf, label_field};
use berth_store::{Compare, StoreError, Txn};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::events::Broker;
use crate::inventory::Inventory;
use crate::records::{self, NamespaceRecord, Records, Versioned};

/// The namespace records, with the revision each was last seen at.
pub struct NamespaceStore {
    records: Records,
    broker: Broker,
    inventory: Inventory,
    /// Revisions of namespaces known to exist, so that creates in them skip a read.
    known: Mutex<HashMap<String, u64>>,
}

/// What a create in a namespace must add to its transaction: the namespace is unchanged since
/// we looked (so a concurrent Delete fails one of the two), or it is created alongside.
pub struct InNamespace {
    namespace: String,
    compare: Compare,
    create: Option<Vec<u8>>,
}

impl InNamespace {
    pub fn guard(&self, txn: Txn) -> Txn {
        let txn = txn.when(self.compare.clone());
        match &self.create {
            Some(record) => txn.put(records::namespace_key(&self.namespace), record.clone()),
            None => txn,
        }
    }
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("namespace {name}: not found"))
}

impl NamespaceStore {
    pub fn new(records: Records, broker: Broker, inventory: Inventory) -> Self {
        NamespaceStore { records, broker, inventory, known: Mutex::default() }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn read(&self, name: &str) -> Result<Option<Versioned<NamespaceRecord>>, Status> {
        match self.records.get(&records::namespace_key(name)).await? {
            Some(entry) => Ok(Some(records::decode_proto(entry)?)),
            None => Ok(None),
        }
    }

    /// Prepares a create of something inside `namespace` (validated here).
    pub async fn enter(&self, namespace: &str) -> Result<InNamespace, Status> {
        berth_core::identifiers::validate("namespace", namespace)?;
        let key = records::namespace_key(namespace);
        if let Some(&revision) = self.known().get(namespace) {
            return Ok(InNamespace {
                namespace: namespace.to_string(),
                compare: Compare::Revision(key, revision),
                create: None,
            });
        }
        match self.read(namespace).await? {
            Some(record) if record.value.deleting => Err(Status::failed_precondition(format!(
                "namespace {namespace} is being deleted; create it again once the delete is done"
            ))),
            Some(record) => {
                self.known().insert(namespace.to_string(), record.revision);
                Ok(InNamespace {
                    namespace: namespace.to_string(),
                    compare: Compare::Revision(key, record.revision),
                    create: None,
                })
            }
            None => Ok(InNamespace {
                namespace: namespace.to_string(),
                compare: Compare::Absent(key),
                create: Some(NamespaceRecord::default().encode_to_vec()),
            }),
        }
    }

    /// After a create through [`enter`] committed: announce a namespace it created.
    pub fn entered(&self, guard: &InNamespace) {
        if guard.create.is_some() {
            self.broker.publish(
                &guard.namespace,
                "/namespaces/create",
                &NamespaceCreate { name: guard.namespace.clone(), labels: HashMap::new() },
            );
        }
    }

    /// A create conflicted: the namespace may have changed; read it again next time.
    pub fn forget(&self, namespace: &str) {
        self.known().remove(namespace);
    }

    /// Every namespace name, in order.
    pub async fn names(&self) -> Result<Vec<String>, Status> {
        let entries = self.records.list(records::NAMESPACES_PREFIX).await?;
        Ok(entries.into_iter().map(|e| records::id_of(&e.key).to_string()).collect())
    }

    pub async fn create(&self, namespace: Namespace) -> Result<Namespace, Status> {
        berth_core::identifiers::validate("namespace", &namespace.name)?;
        berth_core::labels::validate(&namespace.labels)?;
        let key = records::namespace_key(&namespace.name);
        let record = NamespaceRecord { labels: namespace.labels.clone(), deleting: false };
        match self.records.commit(Txn::new().when(Compare::Absent(key.clone())).put(key, record.encode_to_vec())).await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Status::already_exists(format!("namespace {}: already exists", namespace.name)));
            }
            Err(err) => return Err(err.into()),
        }
        self.broker.publish(
            &namespace.name,
            "/namespaces/create",
            &NamespaceCreate { name: namespace.name.clone(), labels: namespace.labels.clone() },
        );
        Ok(namespace)
    }

    pub async fn get(&self, name: &str) -> Result<Namespace, Status> {
        berth_core::identifiers::validate("namespace", name)?;
        let record = self.read(name).await?.ok_or_else(|| not_found(name))?;
        Ok(Namespace { name: name.to_string(), labels: record.value.labels })
    }

    pub async fn list(&self, filter: &str) -> Result<Vec<Namespace>, Status> {
        let filters = if filter.is_empty() { AnyOf::default() } else { AnyOf::parse(&[filter.to_string()])? };
        let mut namespaces = Vec::new();
        for entry in self.records.list(records::NAMESPACES_PREFIX).await? {
            let name = records::id_of(&entry.key).to_string();
            let record: Versioned<NamespaceRecord> = records::decode_proto(entry)?;
            let namespace = Namespace { name, labels: record.value.labels };
            if filters.matches(&NamespaceFields(&namespace)) {
                namespaces.push(namespace);
            }
        }
        Ok(namespaces)
    }

    /// containerd's rules: with a mask, only `labels.<key>` paths (an empty value removes the
    /// label; `labels` replaces them all); without one, the labels are replaced.
    pub async fn update(
        &self,
        namespace: Namespace,
        mask: Option<prost_types::FieldMask>,
    ) -> Result<Namespace, Status> {
        berth_core::identifiers::validate("namespace", &namespace.name)?;
        let current = self.read(&namespace.name).await?.ok_or_else(|| not_found(&namespace.name))?;
        let mut labels = current.value.labels.clone();
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            labels = namespace.labels.clone();
        }
        for path in &paths {
            if let Some(key) = path.strip_prefix("labels.") {
                match namespace.labels.get(key).filter(|v| !v.is_empty()) {
                    Some(value) => labels.insert(key.to_string(), value.clone()),
                    None => labels.remove(key),
                };
            } else if path == "labels" {
                labels = namespace.labels.clone();
            } else {
                return Err(Status::invalid_argument(format!(
                    "cannot update {path:?} field on namespace {}",
                    namespace.name
                )));
            }
        }
        labels.retain(|_, v| !v.is_empty());
        berth_core::labels::validate(&labels)?;
        let record = NamespaceRecord { labels: labels.clone(), deleting: current.value.deleting };
        self.records
            .commit(
                Txn::new()
                    .when(Compare::Revision(current.key.clone(), current.revision))
                    .put(current.key, record.encode_to_vec()),
            )
            .await?;
        self.forget(&namespace.name);
        self.broker.publish(
            &namespace.name,
            "/namespaces/update",
            &NamespaceUpdate { name: namespace.name.clone(), labels: labels.clone() },
        );
        Ok(Namespace { name: namespace.name, labels })
    }

    /// Deletes an empty namespace. Marks it `deleting` first so that creates racing with the
    /// emptiness check fail (they compare the namespace's revision), then deletes or, when
    /// something is left, puts the record back and says what is left.
    pub async fn delete(
        &self,
        name: &str,
        own_left: impl AsyncFnOnce() -> Result<Vec<String>, Status>,
    ) -> Result<(), Status> {
        berth_core::identifiers::validate("namespace", name)?;
        let current = self.read(name).await?.ok_or_else(|| not_found(name))?;
        let marked = NamespaceRecord { deleting: true, ..current.value.clone() };
        self.records
            .commit(
                Txn::new()
                    .when(Compare::Revision(current.key.clone(), current.revision))
                    .put(current.key.clone(), marked.encode_to_vec()),
            )
            .await?;
        self.forget(name);
        let left = async {
            let mut left = own_left().await?;
            left.extend(self.inventory.held(name).await?);
            Ok::<_, Status>(left)
        }
        .await;
        let marked = self.read(name).await?.ok_or_else(|| not_found(name))?;
        match left {
            Ok(left) if left.is_empty() => {
                self.records
                    .commit(Txn::new().when(Compare::Revision(marked.key.clone(), marked.revision)).delete(marked.key))
                    .await?;
                self.broker.publish(name, "/namespaces/delete", &NamespaceDelete { name: name.to_string() });
                Ok(())
            }
            outcome => {
                let restored = NamespaceRecord { deleting: false, ..marked.value };
                self.records
                    .commit(
                        Txn::new()
                            .when(Compare::Revision(marked.key.clone(), marked.revision))
                            .put(marked.key, restored.encode_to_vec()),
                    )
                    .await?;
                let left = outcome?;
                Err(Status::failed_precondition(format!(
                    "namespace {name} must be empty, but it still has {}",
                    left.join(", ")
                )))
            }
        }
    }
}

/// Namespace filters see `name` and `labels.<key>`.
struct NamespaceFields<'a>(&'a Namespace);

impl Adaptor for NamespaceFields<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        match fieldpath.first().map(String::as_str)? {
            "name" if fieldpath.len() == 1 => Some(self.0.name.clone()),
            "labels" => label_field(&self.0.labels, &fieldpath[1..]),
            _ => None,
        }
    }
}

/// The tonic adapter. Delete also counts the containers and leases this service holds.
pub struct NamespacesService {
    pub(crate) metadata: crate::Metadata,
}

impl NamespacesService {
    pub fn into_server(self) -> NamespacesServer<Self> {
        NamespacesServer::new(self)
    }
}

#[tonic::async_trait]
impl Namespaces for NamespacesService {
    async fn get(&self, request: Request<GetNamespaceRequest>) -> Result<Response<GetNamespaceResponse>, Status> {
        let namespace = self.metadata.namespaces.get(&request.into_inner().name).await?;
        Ok(Response::new(GetNamespaceResponse { namespace: Some(namespace) }))
    }

    async fn list(&self, request: Request<ListNamespacesRequest>) -> Result<Response<ListNamespacesResponse>, Status> {
        let namespaces = self.metadata.namespaces.list(&request.into_inner().filter).await?;
        Ok(Response::new(ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        request: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let namespace =
            request.into_inner().namespace.ok_or_else(|| Status::invalid_argument("namespace must be set"))?;
        let namespace = self.metadata.namespaces.create(namespace).await?;
        Ok(Response::new(CreateNamespaceResponse { namespace: Some(namespace) }))
    }

    async fn update(
        &self,
        request: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let request = request.into_inner();
        let namespace = request.namespace.ok_or_else(|| Status::invalid_argument("namespace must be set"))?;
        let namespace = self.metadata.namespaces.update(namespace, request.update_mask).await?;
        Ok(Response::new(UpdateNamespaceResponse { namespace: Some(namespace) }))
    }

    async fn delete(&self, request: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        let name = request.into_inner().name;
        let metadata = &self.metadata;
        metadata
            .namespaces
            .delete(&name, async || {
                let mut left = Vec::new();
                if !metadata.containers.list(&name, &[]).await?.is_empty() {
                    left.push("containers".to_string());
                }
                if !metadata.leases.list(&name, &[]).await?.is_empty() {
                    left.push("leases".to_string());
                }
                Ok(left)
            })
            .await?;
        Ok(Response::new(()))
    }
}
