//! The content service keeping its records in etcd (`berthd --metadata etcd://...`): records
//! land under the stack's prefix, nothing is written to a local database, and a restarted
//! service finds its records again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_e2e::content::{in_namespace, info, ingest};
use berth_e2e::{Stack, procs};
use berth_store::Store;
use berth_store::testing::EtcdServer;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{Info, UpdateRequest};
use nix::sys::signal::Signal;

#[tokio::test]
async fn content_records_live_in_etcd_and_survive_a_restart() {
    let etcd = EtcdServer::start();
    let metadata = format!("etcd://{}/e2e-stack", etcd.endpoint());
    let stack = Stack::start_with(&["--metadata", &metadata]).await;
    let mut client = ContentClient::new(stack.containerd_channel().await);

    let digest = ingest(&mut client, "default", "on-etcd", b"kept in etcd").await;
    let labels: HashMap<String, String> = [("team".to_string(), "blue".to_string())].into();
    let update = UpdateRequest {
        info: Some(Info { digest: digest.clone(), labels, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["labels.team".into()] }),
    };
    client.update(in_namespace(update, "default")).await.unwrap();

    let records = berth_store::Etcd::connect(&[etcd.endpoint()], "/e2e-stack/content/").await.unwrap();
    let keys: Vec<String> = records.list("").await.unwrap().into_iter().map(|e| e.key).collect();
    assert!(keys.iter().any(|k| k.contains(&digest)), "the record is in etcd: {keys:?}");
    assert!(!stack.root.join("content/content.redb").exists(), "no local database with etcd metadata");

    // kill -9: berthd restarts the service, which reads its records back from etcd.
    let pid = stack.wait_service_pid("berth-content", Duration::from_secs(5));
    procs::signal(pid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(15);
    let found = loop {
        match info(&mut client, "default", &digest).await {
            Ok(found) => break found,
            Err(err) if Instant::now() < deadline => {
                assert_ne!(err.code(), tonic::Code::NotFound, "record lost: {err:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("content did not come back: {err:?}\n{}", stack.logs()),
        }
    };
    assert_eq!(found.labels.get("team").map(String::as_str), Some("blue"));
    assert!(!stack.service_pids("berth-content").contains(&pid), "it is a new process");
}
