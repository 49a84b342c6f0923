//! The snapshotters with their records in a real etcd (`--metadata etcd://...`): the same
//! rules hold, and a restarted snapshotter finds its snapshots again.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use berth_core::filters::AnyOf;
use berth_snapshot::{Error, Kind};
use berth_store::Store;
use berth_store::testing::EtcdServer;
use common::{Change, Flavor, Harness, NS};

async fn on_etcd(etcd: &EtcdServer, flavor: Flavor, prefix: &str) -> Harness {
    let dir = tempfile::Builder::new().prefix("berth-snapshot-etcd-").tempdir().unwrap();
    let backend = berth_store::Backend::parse(&format!("etcd://{}/{prefix}", etcd.endpoint())).unwrap();
    let store: Arc<dyn Store> = backend.open("snapshot", dir.path()).await.unwrap();
    Harness::with_store(flavor, dir, store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rules_hold_on_etcd() {
    let etcd = EtcdServer::start();
    for (flavor, prefix) in [(Flavor::Overlay, "overlay-test"), (Flavor::Native, "native-test")] {
        let mut h = on_etcd(&etcd, flavor, prefix).await;
        assert!(!h.dir.path().join("snapshot.redb").exists(), "no local database with etcd");
        h.check_chain(&[
            &[Change::Dir("/etc", 0o755), Change::File("/etc/hosts", b"one", 0o644), Change::Chown("/etc", 1, 1)],
            &[Change::File("/etc/hosts", b"two", 0o600), Change::RemoveAll("/etc/hosts")],
        ])
        .await;
        h.sn.prepare(NS, "top", "layer-1", HashMap::new()).await.unwrap();
        assert!(matches!(h.sn.remove(NS, "layer-1").await, Err(Error::FailedPrecondition(_))));
        assert!(matches!(h.sn.prepare(NS, "top", "", HashMap::new()).await, Err(Error::AlreadyExists(_))));
        h.sn.prepare("other", "top", "", HashMap::new()).await.unwrap();
        h.sn.update(NS, "layer-0", [("team".to_string(), "blue".to_string())].into(), &["labels.team".into()])
            .await
            .unwrap();

        // A restart reads everything back from etcd.
        h.reopen().await;
        let names: Vec<String> = h.sn.list(NS, &AnyOf::default()).await.unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["layer-0", "layer-1", "top"], "{flavor:?}");
        let layer0 = h.sn.stat(NS, "layer-0").await.unwrap();
        assert_eq!((layer0.kind, layer0.labels.get("team").map(String::as_str)), (Kind::Committed, Some("blue")));
        assert!(!h.sn.mounts(NS, "top").await.unwrap().is_empty());
        h.sn.remove(NS, "top").await.unwrap();
        h.sn.remove(NS, "layer-1").await.unwrap();
        h.sn.remove(NS, "layer-0").await.unwrap();
        assert_eq!(h.sn.list("other", &AnyOf::default()).await.unwrap().len(), 1);

        // The records are in etcd under the prefix, per snapshotter.
        let raw = berth_store::Etcd::connect(&[etcd.endpoint()], &format!("/{prefix}/snapshot/")).await.unwrap();
        let keys: Vec<String> = raw.list("").await.unwrap().into_iter().map(|e| e.key).collect();
        let name = h.sn.name();
        assert!(keys.iter().any(|k| k == &format!("snapshot/v1/{name}/ns/other/snapshots/top")), "{keys:?}");
    }
}
