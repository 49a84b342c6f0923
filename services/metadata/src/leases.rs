//! containerd's Leases service: a lease holds resources (blobs, snapshots, ingests) so the
//! garbage collector leaves them alone while a client works, e.g. through a pull. A lease
//! labelled `containerd.io/gc.expire` (an RFC 3339 time) stops holding anything once that
//! time has passed, and the collector removes it.

use std::sync::Arc;
use std::time::SystemTime;

use berth_api::containerd::services::leases::v1::leases_server::{Leases, LeasesServer};
use berth_api::containerd::services::leases::v1::{self as api, *};
use berth_core::filters::{Adaptor, AnyOf, label_field};
use berth_store::{Compare, StoreError, Txn};
use tonic::{Request, Response, Status};

use crate::gc::Trigger;
use crate::namespaces::NamespaceStore;
use crate::records::{self, LeaseRecord, Records, Resource, Versioned};

/// The label giving a lease's expiry time.
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// How often an AddResource/DeleteResource retries when another one changed the lease first.
const MERGE_ATTEMPTS: usize = 8;

pub struct LeaseStore {
    records: Records,
    namespaces: Arc<NamespaceStore>,
    gc: Trigger,
    /// Resources join leases under the read side; a collection holds the write side from its
    /// first read to its last removal, so a blob or snapshot added to a lease meanwhile (an
    /// identical layer found by a pull) is never swept between the lease read and the removal.
    additions: tokio::sync::RwLock<()>,
}

fn not_found(id: &str) -> Status {
    Status::not_found(format!("lease {id}: not found"))
}

/// containerd's resource types: `content` (id is a digest), `ingests` (id is a ref) and
/// `snapshots/<snapshotter>` (id is a snapshot key).
fn validate_resource(resource: &api::Resource) -> Result<(), Status> {
    let parts: Vec<&str> = resource.r#type.split('/').collect();
    let unsupported = || Status::invalid_argument(format!("unsupported lease resource type {:?}", resource.r#type));
    match parts.as_slice() {
        ["content"] => {
            if !is_digest(&resource.id) {
                return Err(Status::invalid_argument(format!("lease content id {:?} is not a digest", resource.id)));
            }
        }
        ["ingests"] => {}
        ["snapshots", snapshotter] if !snapshotter.is_empty() => {}
        _ => return Err(unsupported()),
    }
    if resource.id.is_empty() {
        return Err(Status::invalid_argument("lease resource id must be set"));
    }
    Ok(())
}

/// containerd does not hold lease ids to the identifier rule (ctr makes ids such as
/// `670857228-9hb-`); berth only refuses what would break its record keys.
fn validate_id(id: &str) -> Result<(), Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("lease id must be set"));
    }
    if id.len() > 256 || id.contains('/') || id.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "lease id {id:?}: must be at most 256 characters, without '/' or control characters"
        )));
    }
    Ok(())
}

/// `algorithm:hex` with the hex length the algorithm needs.
pub fn is_digest(text: &str) -> bool {
    let Some((algorithm, hex)) = text.split_once(':') else { return false };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl LeaseRecord {
    /// Whether `containerd.io/gc.expire` names a time before `now`. An unparsable value never
    /// expires (the lease keeps holding; safer than freeing).
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires().is_some_and(|at| at <= now)
    }

    pub fn expires(&self) -> Option<SystemTime> {
        self.labels.get(EXPIRE_LABEL).and_then(|value| crate::time::parse_rfc3339(value))
    }
}

fn to_lease(id: &str, record: &LeaseRecord) -> Lease {
    let created = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(record.created_at.max(0).unsigned_abs());
    Lease { id: id.to_string(), created_at: Some(created.into()), labels: record.labels.clone() }
}

impl LeaseStore {
    pub fn new(records: Records, namespaces: Arc<NamespaceStore>, gc: Trigger) -> Self {
        LeaseStore { records, namespaces, gc, additions: tokio::sync::RwLock::new(()) }
    }

    /// Holds back AddResource until the guard is dropped (see `additions`).
    pub async fn hold_additions(&self) -> tokio::sync::RwLockWriteGuard<'_, ()> {
        self.additions.write().await
    }

    async fn read(&self, namespace: &str, id: &str) -> Result<Versioned<LeaseRecord>, Status> {
        let entry = self.records.get(&records::lease_key(namespace, id)).await?.ok_or_else(|| not_found(id))?;
        records::decode_json(entry)
    }

    pub async fn create(
        &self,
        namespace: &str,
        id: &str,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<Lease, Status> {
        validate_id(id)?;
        berth_core::labels::validate(&labels)?;
        if let Some(value) = labels.get(EXPIRE_LABEL)
            && crate::time::parse_rfc3339(value).is_none()
        {
            return Err(Status::invalid_argument(format!("label {EXPIRE_LABEL}={value:?} is not an RFC 3339 time")));
        }
        let record = LeaseRecord { labels, created_at: crate::time::now_nanos(), resources: Vec::new() };
        let key = records::lease_key(namespace, id);
        for _ in 0..3 {
            let entered = self.namespaces.enter(namespace).await?;
            let txn = entered
                .guard(Txn::new().when(Compare::Absent(key.clone())).put(key.clone(), records::encode_json(&record)));
            match self.records.commit(txn).await {
                Ok(()) => {
                    self.namespaces.entered(&entered);
                    if record.expires().is_some() {
                        self.gc.soon();
                    }
                    return Ok(to_lease(id, &record));
                }
                Err(StoreError::Conflict(_)) => {
                    self.namespaces.forget(namespace);
                    if self.records.get(&key).await?.is_some() {
                        return Err(Status::already_exists(format!("lease {id}: already exists")));
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(Status::aborted(format!("lease {id}: namespace {namespace} kept changing; retry")))
    }

    pub async fn delete(&self, namespace: &str, id: &str, sync: bool) -> Result<(), Status> {
        let current = self.read(namespace, id).await?;
        self.records
            .commit(Txn::new().when(Compare::Revision(current.key.clone(), current.revision)).delete(current.key))
            .await
            .map_err(|err| match err {
                StoreError::Conflict(_) => Status::aborted(format!("lease {id}: changed during the delete; retry")),
                err => err.into(),
            })?;
        if sync {
            self.gc.collect().await?;
        } else {
            self.gc.soon();
        }
        Ok(())
    }

    pub async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Lease>, Status> {
        let filters = AnyOf::parse(filters)?;
        let mut leases = Vec::new();
        for (id, record) in self.records_in(namespace).await? {
            let lease = to_lease(&id, &record);
            if filters.matches(&LeaseFields(&lease)) {
                leases.push(lease);
            }
        }
        Ok(leases)
    }

    /// Every lease record in `namespace`, by id.
    pub async fn records_in(&self, namespace: &str) -> Result<Vec<(String, LeaseRecord)>, Status> {
        let mut leases = Vec::new();
        for entry in self.records.list(&records::leases_prefix(namespace)).await? {
            let record: Versioned<LeaseRecord> = records::decode_json(entry)?;
            leases.push((records::id_of(&record.key).to_string(), record.value));
        }
        Ok(leases)
    }

    /// Removes a lease the collector found expired, unless it changed since it was read.
    pub async fn remove_expired(&self, namespace: &str, id: &str) -> Result<bool, Status> {
        let Ok(current) = self.read(namespace, id).await else { return Ok(false) };
        if !current.value.expired(SystemTime::now()) {
            return Ok(false);
        }
        match self
            .records
            .commit(Txn::new().when(Compare::Revision(current.key.clone(), current.revision)).delete(current.key))
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Read-modify-write of a lease's resources, retried when another change got there first.
    async fn change_resources(
        &self,
        namespace: &str,
        id: &str,
        change: impl Fn(&mut Vec<Resource>),
    ) -> Result<(), Status> {
        for _ in 0..MERGE_ATTEMPTS {
            let mut current = self.read(namespace, id).await?;
            change(&mut current.value.resources);
            let txn = Txn::new()
                .when(Compare::Revision(current.key.clone(), current.revision))
                .put(current.key.clone(), records::encode_json(&current.value));
            match self.records.commit(txn).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(Status::aborted(format!("lease {id}: too many concurrent changes; retry")))
    }

    pub async fn add_resource(&self, namespace: &str, id: &str, resource: api::Resource) -> Result<(), Status> {
        validate_resource(&resource)?;
        let _not_while_collecting = self.additions.read().await;
        let resource = Resource { r#type: resource.r#type, id: resource.id };
        self.change_resources(namespace, id, |resources| {
            if !resources.contains(&resource) {
                resources.push(resource.clone());
            }
        })
        .await
    }

    pub async fn delete_resource(&self, namespace: &str, id: &str, resource: api::Resource) -> Result<(), Status> {
        validate_resource(&resource)?;
        let resource = Resource { r#type: resource.r#type, id: resource.id };
        self.change_resources(namespace, id, |resources| resources.retain(|r| *r != resource)).await?;
        self.gc.soon();
        Ok(())
    }

    pub async fn list_resources(&self, namespace: &str, id: &str) -> Result<Vec<api::Resource>, Status> {
        let record = self.read(namespace, id).await?;
        Ok(record.value.resources.into_iter().map(|r| api::Resource { id: r.id, r#type: r.r#type }).collect())
    }
}

/// Lease filters see `id` and `labels.<key>`.
struct LeaseFields<'a>(&'a Lease);

impl Adaptor for LeaseFields<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        match fieldpath.first().map(String::as_str)? {
            "id" if fieldpath.len() == 1 => Some(self.0.id.clone()),
            "labels" => label_field(&self.0.labels, &fieldpath[1..]),
            _ => None,
        }
    }
}

pub struct LeasesService {
    pub(crate) metadata: crate::Metadata,
}

impl LeasesService {
    pub fn into_server(self) -> LeasesServer<Self> {
        LeasesServer::new(self)
    }
}

fn resource_of(resource: Option<api::Resource>) -> Result<api::Resource, Status> {
    resource.ok_or_else(|| Status::invalid_argument("resource must be set"))
}

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        let lease = self.metadata.leases.create(&namespace, &request.id, request.labels).await?;
        Ok(Response::new(CreateResponse { lease: Some(lease) }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        self.metadata.leases.delete(&namespace, &request.id, request.sync).await?;
        Ok(Response::new(()))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let leases = self.metadata.leases.list(&namespace, &request.into_inner().filters).await?;
        Ok(Response::new(ListResponse { leases }))
    }

    async fn add_resource(&self, request: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        self.metadata.leases.add_resource(&namespace, &request.id, resource_of(request.resource)?).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(&self, request: Request<DeleteResourceRequest>) -> Result<Response<()>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        self.metadata.leases.delete_resource(&namespace, &request.id, resource_of(request.resource)?).await?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        request: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let resources = self.metadata.leases.list_resources(&namespace, &request.into_inner().id).await?;
        Ok(Response::new(ListResourcesResponse { resources }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_follow_containerd() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for (kind, id, ok) in [
            ("content", digest.as_str(), true),
            ("content", "sha256:xyz", false),
            ("ingests", "pull-1", true),
            ("snapshots/overlayfs", "key", true),
            ("snapshots", "key", false),
            ("snapshots/a/b", "key", false),
            ("content/x", digest.as_str(), false),
            ("images", "x", false),
        ] {
            let resource = api::Resource { id: id.to_string(), r#type: kind.to_string() };
            assert_eq!(validate_resource(&resource).is_ok(), ok, "{kind} {id}");
        }
    }

    #[test]
    fn lease_ids_are_what_ctr_makes() {
        assert!(validate_id("670857228-9hb-").is_ok());
        assert!(validate_id("pull.1_x").is_ok());
        for bad in ["", "a/b", "tab\there", &"x".repeat(257)] {
            assert_eq!(validate_id(bad).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn expiry_reads_the_label() {
        let mut record = LeaseRecord::default();
        assert!(!record.expired(SystemTime::now()));
        record.labels.insert(EXPIRE_LABEL.into(), "2000-01-01T00:00:00Z".into());
        assert!(record.expired(SystemTime::now()));
        record.labels.insert(EXPIRE_LABEL.into(), "2999-01-01T00:00:00Z".into());
        assert!(!record.expired(SystemTime::now()));
    }
}
