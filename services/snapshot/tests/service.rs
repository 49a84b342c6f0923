//! The Snapshots gRPC service on a unix socket, driven by a client built from berth-api's
//! generated code: snapshotter choice, namespaces, status codes, streaming List, events.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::containerd::services::snapshots::v1 as api;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_core::connect::{Address, lazy_channel};
use berth_snapshot::events::{Event, Publisher};
use berth_snapshot::{SnapshotsService, Snapshotters, server};
use futures::StreamExt;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request};

type Client = SnapshotsClient<Channel>;

/// Records every event it is given.
#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Event)>>);

impl Publisher for Recorder {
    fn publish(&self, namespace: &str, event: Event) {
        self.0.lock().unwrap().push((namespace.to_string(), event));
    }
}

impl Recorder {
    fn take(&self) -> Vec<(String, Event)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Server {
    _dir: tempfile::TempDir,
    client: Client,
    events: Arc<Recorder>,
    _stop: oneshot::Sender<()>,
}

async fn start() -> Server {
    common::require_root();
    let dir = tempfile::Builder::new().prefix("berth-snapshot-service-").tempdir().unwrap();
    let root = dir.path().join("root");
    let store = berth_store::Backend::Local.open("snapshot", &root).await.unwrap();
    let snapshotters = Snapshotters::open(&root, store).await.unwrap();
    assert_eq!(snapshotters.names().collect::<Vec<_>>(), ["native", "overlayfs"]);
    let events = Arc::new(Recorder::default());
    let service = SnapshotsService::new(snapshotters).with_events(events.clone());
    let socket = dir.path().join("snapshot.sock");
    let listener = server::bind(&socket).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let diff = berth_snapshot::DiffService::new(&root, &berth_peers::Peers::default());
        server::serve(listener, service, diff, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    let client = SnapshotsClient::new(lazy_channel(&Address::Unix(socket)));
    Server { _dir: dir, client, events, _stop: stop }
}

fn in_ns<T>(message: T, ns: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("containerd-namespace", ns.parse().unwrap());
    request
}

fn prepare(snapshotter: &str, key: &str, parent: &str) -> api::PrepareSnapshotRequest {
    api::PrepareSnapshotRequest {
        snapshotter: snapshotter.into(),
        key: key.into(),
        parent: parent.into(),
        labels: HashMap::new(),
    }
}

fn commit(snapshotter: &str, name: &str, key: &str) -> api::CommitSnapshotRequest {
    api::CommitSnapshotRequest {
        snapshotter: snapshotter.into(),
        name: name.into(),
        key: key.into(),
        labels: HashMap::new(),
    }
}

async fn list(client: &mut Client, ns: &str, snapshotter: &str, filters: &[&str]) -> Vec<api::Info> {
    let request = api::ListSnapshotsRequest {
        snapshotter: snapshotter.into(),
        filters: filters.iter().map(|f| f.to_string()).collect(),
    };
    let mut stream = client.list(in_ns(request, ns)).await.unwrap().into_inner();
    let mut infos = Vec::new();
    while let Some(message) = stream.next().await {
        infos.extend(message.unwrap().info);
    }
    infos
}

fn under(path: &str, dir: &Path) -> bool {
    Path::new(path).starts_with(dir)
}

#[tokio::test]
async fn snapshotter_is_chosen_per_call_and_overlayfs_is_the_default() {
    let server = start().await;
    let mut client = server.client.clone();
    let root = server._dir.path().join("root");

    let mounts = client.prepare(in_ns(prepare("", "a", ""), "default")).await.unwrap().into_inner().mounts;
    assert_eq!(mounts.len(), 1);
    assert_eq!((mounts[0].r#type.as_str(), mounts[0].options.clone()), ("bind", vec!["rw".into(), "rbind".into()]));
    assert!(under(&mounts[0].source, &root.join("overlayfs/snapshots")), "{}", mounts[0].source);
    assert!(mounts[0].source.ends_with("/fs"));

    let mounts = client.prepare(in_ns(prepare("native", "a", ""), "default")).await.unwrap().into_inner().mounts;
    assert!(under(&mounts[0].source, &root.join("native/snapshots")), "{}", mounts[0].source);

    // Each snapshotter has its own snapshots.
    assert_eq!(list(&mut client, "default", "overlayfs", &[]).await.len(), 1);
    assert_eq!(list(&mut client, "default", "", &[]).await.len(), 1);
    assert_eq!(list(&mut client, "default", "native", &[]).await.len(), 1);

    let err = client.prepare(in_ns(prepare("zfs", "a", ""), "default")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("snapshotter not loaded: zfs"), "{}", err.message());

    client.commit(in_ns(commit("overlayfs", "base", "a"), "default")).await.unwrap();
    let mounts = client.prepare(in_ns(prepare("overlayfs", "b", "base"), "default")).await.unwrap().into_inner().mounts;
    assert_eq!(mounts[0].r#type, "overlay");
    assert!(mounts[0].options.iter().any(|o| o.starts_with("lowerdir=")), "{:?}", mounts[0].options);
    let view = api::ViewSnapshotRequest {
        snapshotter: "overlayfs".into(),
        key: "v".into(),
        parent: "base".into(),
        labels: HashMap::new(),
    };
    let mounts = client.view(in_ns(view, "default")).await.unwrap().into_inner().mounts;
    assert_eq!(mounts[0].options, ["ro", "rbind"], "a view of one layer is that layer, read-only");
}

#[tokio::test]
async fn status_codes_and_namespaces() {
    let server = start().await;
    let mut client = server.client.clone();
    client.prepare(in_ns(prepare("", "a", ""), "one")).await.unwrap();
    // The same key in another namespace is another snapshot.
    client.prepare(in_ns(prepare("", "a", ""), "two")).await.unwrap();

    let err = client.prepare(in_ns(prepare("", "a", ""), "one")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = client.prepare(in_ns(prepare("", "b", "nope"), "one")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.prepare(in_ns(prepare("", "b", "a"), "one")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "parent not committed");
    let err = client.prepare(in_ns(prepare("", "", ""), "one")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client.prepare(in_ns(prepare("", "b", ""), "bad/ns")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    client.commit(in_ns(commit("", "c", "a"), "one")).await.unwrap();
    // "two" still has its own active "a", and can commit it under the same name.
    client.commit(in_ns(commit("", "c", "a"), "two")).await.unwrap();
    let err = client.commit(in_ns(commit("", "c2", "a"), "one")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.commit(in_ns(commit("", "c", "x"), "one")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let mounts = |key: &str| api::MountsRequest { snapshotter: String::new(), key: key.into() };
    assert_eq!(client.mounts(in_ns(mounts("c"), "one")).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(client.mounts(in_ns(mounts("zz"), "one")).await.unwrap_err().code(), Code::NotFound);

    client.prepare(in_ns(prepare("", "child", "c"), "one")).await.unwrap();
    let remove = |key: &str| api::RemoveSnapshotRequest { snapshotter: String::new(), key: key.into() };
    assert_eq!(client.remove(in_ns(remove("c"), "one")).await.unwrap_err().code(), Code::FailedPrecondition);
    // In "two", "c" has no child.
    client.remove(in_ns(remove("c"), "two")).await.unwrap();
    assert_eq!(client.remove(in_ns(remove("c"), "two")).await.unwrap_err().code(), Code::NotFound);

    let stat = |key: &str| api::StatSnapshotRequest { snapshotter: String::new(), key: key.into() };
    let info = client.stat(in_ns(stat("child"), "one")).await.unwrap().into_inner().info.unwrap();
    assert_eq!((info.name.as_str(), info.parent.as_str(), info.kind()), ("child", "c", api::Kind::Active));
    assert!(info.created_at.is_some() && info.created_at == info.updated_at);
    let info = client.stat(in_ns(stat("c"), "one")).await.unwrap().into_inner().info.unwrap();
    assert_eq!(info.kind(), api::Kind::Committed);
    assert_eq!(client.stat(in_ns(stat("c"), "two")).await.unwrap_err().code(), Code::NotFound);

    let usage = |key: &str| api::UsageRequest { snapshotter: String::new(), key: key.into() };
    let used = client.usage(in_ns(usage("child"), "one")).await.unwrap().into_inner();
    assert_eq!(used.inodes, 1);
    assert!(used.size > 0);
    assert_eq!(client.usage(in_ns(usage("nope"), "one")).await.unwrap_err().code(), Code::NotFound);

    client.cleanup(in_ns(api::CleanupRequest { snapshotter: "native".into() }, "one")).await.unwrap();
    let err = client.cleanup(in_ns(api::CleanupRequest { snapshotter: "btrfs".into() }, "one")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn update_takes_containerds_field_masks() {
    let server = start().await;
    let mut client = server.client.clone();
    let labelled = api::PrepareSnapshotRequest {
        labels: [("a".to_string(), "1".to_string()), ("b".to_string(), "2".to_string())].into(),
        ..prepare("", "s", "")
    };
    client.prepare(in_ns(labelled, "default")).await.unwrap();
    let update = |labels: &[(&str, &str)], paths: &[&str]| api::UpdateSnapshotRequest {
        snapshotter: String::new(),
        info: Some(api::Info {
            name: "s".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }),
        update_mask: (!paths.is_empty()).then(|| prost_types_mask(paths)),
    };
    let labels_of = |response: api::UpdateSnapshotResponse| {
        let mut labels: Vec<(String, String)> = response.info.unwrap().labels.into_iter().collect();
        labels.sort();
        labels
    };
    let set = client.update(in_ns(update(&[("c", "3"), ("a", "x")], &["labels.c"]), "default")).await.unwrap();
    assert_eq!(
        labels_of(set.into_inner()),
        [("a".into(), "1".into()), ("b".into(), "2".into()), ("c".into(), "3".into())]
    );
    let removed = client.update(in_ns(update(&[], &["labels.a"]), "default")).await.unwrap();
    assert_eq!(labels_of(removed.into_inner()), [("b".into(), "2".into()), ("c".into(), "3".into())]);
    let replaced = client.update(in_ns(update(&[("z", "9")], &[]), "default")).await.unwrap();
    assert_eq!(labels_of(replaced.into_inner()), [("z".to_string(), "9".to_string())]);
    let err = client.update(in_ns(update(&[], &["kind"]), "default")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("kind"), "{}", err.message());
    let err = client
        .update(in_ns(
            api::UpdateSnapshotRequest { snapshotter: String::new(), info: None, update_mask: None },
            "default",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

fn prost_types_mask(paths: &[&str]) -> berth_api::prost_types::FieldMask {
    berth_api::prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }
}

#[tokio::test]
async fn list_streams_in_batches_and_filters() {
    let server = start().await;
    let mut client = server.client.clone();
    client.prepare(in_ns(prepare("native", "base-a", ""), "default")).await.unwrap();
    client.commit(in_ns(commit("native", "base", "base-a"), "default")).await.unwrap();
    for i in 0..250 {
        let view = api::ViewSnapshotRequest {
            snapshotter: "native".into(),
            key: format!("view-{i:03}"),
            parent: "base".into(),
            labels: HashMap::new(),
        };
        client.view(in_ns(view, "default")).await.unwrap();
    }
    let request = api::ListSnapshotsRequest { snapshotter: "native".into(), filters: Vec::new() };
    let messages: Vec<_> = client.list(in_ns(request, "default")).await.unwrap().into_inner().collect().await;
    assert_eq!(messages.len(), 3, "batches of 100");
    let all = list(&mut client, "default", "native", &[]).await;
    assert_eq!(all.len(), 251);
    assert_eq!(all[0].name, "base");
    let views = list(&mut client, "default", "native", &["kind==view,name~=^view-00"]).await;
    assert_eq!(views.len(), 10);
    assert!(list(&mut client, "other", "native", &[]).await.is_empty());
    let bad = api::ListSnapshotsRequest { snapshotter: "native".into(), filters: vec!["name >< x".into()] };
    assert_eq!(client.list(in_ns(bad, "default")).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn prepare_commit_and_remove_publish_events() {
    let server = start().await;
    let mut client = server.client.clone();
    client.prepare(in_ns(prepare("", "a", ""), "ns1")).await.unwrap();
    client.commit(in_ns(commit("native", "x", "missing"), "ns1")).await.unwrap_err();
    client.commit(in_ns(commit("", "base", "a"), "ns1")).await.unwrap();
    let view = api::ViewSnapshotRequest {
        snapshotter: String::new(),
        key: "v".into(),
        parent: "base".into(),
        labels: HashMap::new(),
    };
    client.view(in_ns(view, "ns1")).await.unwrap();
    let remove = api::RemoveSnapshotRequest { snapshotter: "overlayfs".into(), key: "v".into() };
    client.remove(in_ns(remove, "ns1")).await.unwrap();
    let overlayfs = || "overlayfs".to_string();
    let ns1 = || "ns1".to_string();
    assert_eq!(
        server.events.take(),
        [
            (ns1(), Event::Prepare { key: "a".into(), parent: String::new(), snapshotter: overlayfs() }),
            (ns1(), Event::Commit { key: "a".into(), name: "base".into(), snapshotter: overlayfs() }),
            (ns1(), Event::Remove { key: "v".into(), snapshotter: overlayfs() }),
        ],
        "failed calls and views publish nothing"
    );
}

#[tokio::test]
async fn a_client_that_hangs_up_leaves_no_half_made_snapshot() {
    let server = start().await;
    let mut client = server.client.clone();
    client.prepare(in_ns(prepare("native", "big-a", ""), "default")).await.unwrap();
    let mounts = client
        .mounts(in_ns(api::MountsRequest { snapshotter: "native".into(), key: "big-a".into() }, "default"))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    // Fill the snapshot directly through its directory (no mount needed for native).
    let dir = Path::new(&mounts[0].source);
    for i in 0..2000 {
        std::fs::write(dir.join(format!("f{i}")), vec![0u8; 4096]).unwrap();
    }
    client.commit(in_ns(commit("native", "big", "big-a"), "default")).await.unwrap();
    // A Prepare (a copy of 2000 files) cancelled almost at once still completes or not at all.
    let call = tokio::time::timeout(
        Duration::from_millis(5),
        client.prepare(in_ns(prepare("native", "copy", "big"), "default")),
    );
    let _ = call.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let infos = list(&mut client, "default", "native", &[]).await;
    let root = server._dir.path().join("root/native/snapshots");
    let dirs = std::fs::read_dir(&root).unwrap().count();
    assert_eq!(dirs, infos.len(), "every record has its directory and no directory lacks one: {infos:?}");
}

#[tokio::test]
async fn diff_is_served_on_the_same_socket_and_checks_before_it_needs_content() {
    use berth_api::containerd::services::diff::v1::ApplyRequest;
    use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
    use berth_api::containerd::types::{Descriptor, Mount};

    let server = start().await;
    let socket = server._dir.path().join("snapshot.sock");
    let mut diff = DiffClient::new(lazy_channel(&Address::Unix(socket)));
    let layer = |media_type: &str| Descriptor {
        media_type: media_type.into(),
        digest: format!("sha256:{}", "ab".repeat(32)),
        size: 10,
        annotations: HashMap::new(),
    };
    let mounts = vec![Mount {
        r#type: "bind".into(),
        source: "/nonexistent".into(),
        target: String::new(),
        options: vec!["rw".into(), "rbind".into()],
    }];
    let apply = |media_type: &str, mounts: Vec<Mount>| {
        in_ns(ApplyRequest { diff: Some(layer(media_type)), mounts, payloads: HashMap::new() }, "default")
    };

    let refused = diff.apply(apply("application/vnd.oci.image.config.v1+json", mounts.clone())).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("unsupported layer media type"), "{refused:?}");
    let no_mounts = diff.apply(apply("application/vnd.oci.image.layer.v1.tar", Vec::new())).await.unwrap_err();
    assert_eq!(no_mounts.code(), Code::InvalidArgument, "{no_mounts:?}");
    // Started without a content peer: a well-formed request says what is missing.
    let no_content = diff.apply(apply("application/vnd.oci.image.layer.v1.tar+gzip", mounts)).await.unwrap_err();
    assert_eq!(no_content.code(), Code::FailedPrecondition, "{no_content:?}");
    assert!(no_content.message().contains("--peer content="), "{no_content:?}");
}
