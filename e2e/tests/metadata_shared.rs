//! Metadata shared across hosts through etcd, and metadata surviving faults: two stacks on one
//! etcd, concurrent updates, etcd going away and coming back, kill -9 during a burst of creates.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_api::containerd::services::containers::v1::container::Runtime;
use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_api::containerd::services::containers::v1::*;
use berth_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_api::containerd::services::namespaces::v1::*;
use berth_e2e::content::in_namespace;
use berth_e2e::{Stack, procs};
use berth_store::testing::EtcdServer;
use nix::sys::signal::Signal;
use tonic::Code;

fn container(id: &str) -> Container {
    Container {
        id: id.to_string(),
        image: "example.com/app:1".into(),
        runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: b"{}".to_vec(),
        }),
        ..Default::default()
    }
}

async fn list_ids(stack: &Stack, ns: &str) -> Result<Vec<String>, tonic::Status> {
    let mut client = ContainersClient::new(stack.channel());
    let listed = client.list(in_namespace(ListContainersRequest { filters: vec![] }, ns)).await?;
    Ok(listed.into_inner().containers.into_iter().map(|c| c.id).collect())
}

#[tokio::test]
async fn two_stacks_on_one_etcd_share_records_and_never_lose_an_update() {
    let etcd = EtcdServer::start();
    let metadata = format!("etcd://{}/shared", etcd.endpoint());
    let a = Stack::start_with(&["--metadata", &metadata]).await;
    let b = Stack::start_with(&["--metadata", &metadata]).await;

    let mut namespaces = NamespacesClient::new(a.channel());
    let labels = HashMap::from([("site".to_string(), "a".to_string())]);
    namespaces
        .create(CreateNamespaceRequest { namespace: Some(Namespace { name: "fleet".into(), labels }) })
        .await
        .unwrap();
    let seen = NamespacesClient::new(b.channel()).get(GetNamespaceRequest { name: "fleet".into() }).await.unwrap();
    assert_eq!(seen.into_inner().namespace.unwrap().labels["site"], "a", "b sees a's namespace");

    let mut on_a = ContainersClient::new(a.channel());
    on_a.create(in_namespace(CreateContainerRequest { container: Some(container("shared")) }, "fleet")).await.unwrap();
    assert_eq!(list_ids(&b, "fleet").await.unwrap(), ["shared"], "b sees a's container");
    let err = ContainersClient::new(b.channel())
        .create(in_namespace(CreateContainerRequest { container: Some(container("shared")) }, "fleet"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "one id across both stacks");

    // Concurrent updates from both stacks, each setting a label of its own. Every update that
    // succeeded must be in the final record; the others got a clear conflict. Rounds repeat
    // until at least one conflict has been seen, so the test shows both outcomes.
    let mut applied = BTreeSet::new();
    let mut conflicts = 0;
    for round in 0..20 {
        let mut tasks = Vec::new();
        for (side, stack) in [("a", &a), ("b", &b)] {
            for i in 0..8 {
                let key = format!("r{round}-{side}{i}");
                let mut client = ContainersClient::new(stack.channel());
                tasks.push(tokio::spawn(async move {
                    let mut change = container("shared");
                    change.labels.insert(key.clone(), "set".into());
                    let request = UpdateContainerRequest {
                        container: Some(change),
                        update_mask: Some(prost_types::FieldMask { paths: vec![format!("labels.{key}")] }),
                    };
                    (key, client.update(in_namespace(request, "fleet")).await.map(|_| ()))
                }));
            }
        }
        for task in tasks {
            let (key, outcome) = task.await.unwrap();
            match outcome {
                Ok(()) => {
                    applied.insert(key);
                }
                Err(status) => {
                    assert_eq!(status.code(), Code::Aborted, "a conflict is Aborted: {status:?}");
                    assert!(status.message().contains("retry"), "and says what to do: {status:?}");
                    conflicts += 1;
                }
            }
        }
        if conflicts > 0 && !applied.is_empty() {
            break;
        }
    }
    assert!(conflicts > 0, "no concurrent update ever conflicted");
    let got = ContainersClient::new(b.channel())
        .get(in_namespace(GetContainerRequest { id: "shared".into() }, "fleet"))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    let present: BTreeSet<String> = got.labels.keys().cloned().collect();
    assert_eq!(present, applied, "exactly the acknowledged updates are in the record ({conflicts} conflicts)");
}

#[tokio::test]
async fn with_etcd_down_calls_fail_fast_and_recover_without_a_restart() {
    let mut etcd = EtcdServer::start();
    let metadata = format!("etcd://{}/faults", etcd.endpoint());
    let stack = Stack::start_with(&["--metadata", &metadata]).await;
    let mut client = ContainersClient::new(stack.channel());
    client
        .create(in_namespace(CreateContainerRequest { container: Some(container("before")) }, "default"))
        .await
        .unwrap();
    let pid = stack.wait_service_pid("berth-metadata", Duration::from_secs(5));

    etcd.stop();
    let started = Instant::now();
    let err = client
        .create(in_namespace(CreateContainerRequest { container: Some(container("during")) }, "default"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "failed fast: {:?}", started.elapsed());
    assert_eq!(list_ids(&stack, "default").await.unwrap_err().code(), Code::Unavailable);

    etcd.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ids = loop {
        match list_ids(&stack, "default").await {
            Ok(ids) => break ids,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => panic!("metadata did not recover: {status:?}\n{}", stack.logs()),
        }
    };
    assert_eq!(ids, ["before"], "nothing lost, nothing half-written");
    client
        .create(in_namespace(CreateContainerRequest { container: Some(container("after")) }, "default"))
        .await
        .unwrap();
    assert_eq!(stack.wait_service_pid("berth-metadata", Duration::from_secs(1)), pid, "same process: no restart");
}

/// Creates containers from 8 clients while berth-metadata is killed with SIGKILL; every create
/// that was acknowledged must exist once berthd has restarted the service.
async fn acknowledged_creates_survive_kill_9(stack: &Stack) {
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..8 {
        let mut client = ContainersClient::new(stack.channel());
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("w{worker}-{i}");
                i += 1;
                let request = CreateContainerRequest { container: Some(container(&id)) };
                match client.create(in_namespace(request, "burst")).await {
                    Ok(_) => acknowledged.lock().unwrap().push(id),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    let pid = stack.wait_service_pid("berth-metadata", Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_kill = acknowledged.lock().unwrap().len();
    procs::signal(pid, Signal::SIGKILL);
    // Keep creating while the service restarts, then a little after.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < before_kill + 20 {
        assert!(Instant::now() < deadline, "creates did not resume after the restart\n{}", stack.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(before_kill > 0, "no create was acknowledged before the kill");
    let stored: BTreeSet<String> = list_ids(stack, "burst").await.unwrap().into_iter().collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "acknowledged creates lost after kill -9: {lost:?}");
    assert_ne!(stack.wait_service_pid("berth-metadata", Duration::from_secs(5)), pid, "it was restarted");
}

#[tokio::test]
async fn acknowledged_creates_survive_kill_9_on_the_embedded_store() {
    let stack = Stack::start().await;
    acknowledged_creates_survive_kill_9(&stack).await;
}

#[tokio::test]
async fn acknowledged_creates_survive_kill_9_on_etcd() {
    let etcd = EtcdServer::start();
    let stack = Stack::start_with(&["--metadata", &format!("etcd://{}/burst", etcd.endpoint())]).await;
    acknowledged_creates_survive_kill_9(&stack).await;
}
