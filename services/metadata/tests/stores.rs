//! The metadata stores on the embedded backend, without gRPC: namespace deletes racing with
//! creates, and what a refused delete leaves behind.

use std::sync::Arc;
use std::time::Duration;

use berth_api::containerd::services::containers::v1::Container;
use berth_api::containerd::services::containers::v1::container::Runtime;
use berth_metadata::Metadata;
use berth_store::{Embedded, Store};

fn container(id: &str) -> Container {
    Container {
        id: id.to_string(),
        runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: b"{}".to_vec(),
        }),
        ..Default::default()
    }
}

fn metadata(dir: &tempfile::TempDir) -> Metadata {
    let store: Arc<dyn Store> = Arc::new(Embedded::open(&dir.path().join("metadata.redb")).unwrap());
    Metadata::start(store, berth_peers::Peers::default(), Duration::from_secs(3600))
}

async fn delete_namespace(metadata: &Metadata, name: &str) -> Result<(), tonic::Status> {
    let (containers, leases) = (metadata.containers.clone(), metadata.leases.clone());
    metadata
        .namespaces
        .delete(name, async || {
            let mut left = Vec::new();
            if !containers.list(name, &[]).await?.is_empty() {
                left.push("containers".to_string());
            }
            if !leases.list(name, &[]).await?.is_empty() {
                left.push("leases".to_string());
            }
            Ok(left)
        })
        .await
}

#[tokio::test]
async fn a_refused_delete_leaves_the_namespace_usable() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = metadata(&dir);
    metadata.containers.create("team", container("web")).await.unwrap();
    let err = delete_namespace(&metadata, "team").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(err.message(), "namespace team must be empty, but it still has containers");
    // Not left marked as being deleted: creates still work, and so does the delete once empty.
    metadata.containers.create("team", container("db")).await.unwrap();
    metadata.containers.delete("team", "web").await.unwrap();
    metadata.containers.delete("team", "db").await.unwrap();
    delete_namespace(&metadata, "team").await.unwrap();
    assert!(metadata.namespaces.names().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_create_racing_a_namespace_delete_is_never_orphaned() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = metadata(&dir);
    for round in 0..50 {
        let ns = format!("race{round}");
        metadata
            .namespaces
            .create(berth_api::containerd::services::namespaces::v1::Namespace {
                name: ns.clone(),
                labels: Default::default(),
            })
            .await
            .unwrap();
        let (a, b) = (metadata.clone(), metadata.clone());
        let (ns_a, ns_b) = (ns.clone(), ns.clone());
        let create = tokio::spawn(async move { a.containers.create(&ns_a, container("c")).await });
        let delete = tokio::spawn(async move { delete_namespace(&b, &ns_b).await });
        let (created, deleted) = (create.await.unwrap(), delete.await.unwrap());
        let exists = metadata.namespaces.get(&ns).await.is_ok();
        let containers = metadata.containers.list(&ns, &[]).await.unwrap();
        // Whatever the interleaving: a container never outlives its namespace.
        assert!(exists || containers.is_empty(), "round {round}: orphan container ({created:?}, {deleted:?})");
        if created.is_ok() && deleted.is_ok() {
            // Both may succeed only in that order: created after the delete, recreating the namespace.
            assert!(exists, "round {round}");
        }
    }
}
