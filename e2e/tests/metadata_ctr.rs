//! containerd's `ctr` against berth-metadata through the gateway: namespaces, containers,
//! leases and events, as a containerd user would drive them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_e2e::content::{in_namespace, ingest};
use berth_e2e::{Stack, require_tool};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{Container, CreateContainerRequest};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "ctr failed: {}\nstdout: {}",
        String::from_utf8_lossy(&output.stderr),
        stdout(&output)
    );
    stdout(&output)
}

fn failed(output: std::process::Output) -> String {
    assert!(!output.status.success(), "ctr should have failed; stdout: {}", stdout(&output));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A container record as containerd's client writes one (spec as a typed Any of JSON).
fn container(id: &str, image: &str, labels: &[(&str, &str)]) -> Container {
    Container {
        id: id.to_string(),
        image: image.to_string(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"}}"#.to_vec(),
        }),
        snapshotter: "overlayfs".into(),
        snapshot_key: id.to_string(),
        ..Default::default()
    }
}

async fn create(stack: &Stack, ns: &str, container: Container) {
    let mut client = ContainersClient::new(stack.containerd_channel().await);
    client
        .create(in_namespace(CreateContainerRequest { container: Some(container) }, ns))
        .await
        .expect("create container");
}

#[tokio::test]
async fn ctr_namespaces_create_label_list_and_remove() {
    require_tool("ctr");
    let stack = Stack::start().await;
    ok(stack.ctr(&["namespaces", "create", "team-a", "owner=alice"]));
    ok(stack.ctr(&["namespaces", "create", "team-b"]));
    let listed = ok(stack.ctr(&["namespaces", "ls"]));
    assert!(listed.lines().any(|l| l.starts_with("team-a") && l.contains("owner=alice")), "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("team-b")), "{listed}");
    let quiet = ok(stack.ctr(&["namespaces", "ls", "-q"]));
    assert_eq!(quiet.lines().collect::<Vec<_>>(), ["team-a", "team-b"]);

    ok(stack.ctr(&["namespaces", "label", "team-a", "tier=gold"]));
    ok(stack.ctr(&["namespaces", "label", "team-a", "owner="]));
    let listed = ok(stack.ctr(&["namespaces", "ls"]));
    let line = listed.lines().find(|l| l.starts_with("team-a")).unwrap();
    assert!(line.contains("tier=gold") && !line.contains("owner"), "{line}");

    let err = failed(stack.ctr(&["namespaces", "create", "team-a"]));
    assert!(err.contains("already exists"), "{err}");
    let err = failed(stack.ctr(&["namespaces", "create", "bad/name"]));
    assert!(err.contains("identifier"), "{err}");

    ok(stack.ctr(&["namespaces", "rm", "team-b"]));
    let quiet = ok(stack.ctr(&["namespaces", "ls", "-q"]));
    assert_eq!(quiet.lines().collect::<Vec<_>>(), ["team-a"]);
    // ctr treats NotFound on rm as done (and says so on stdout), as against containerd.
    ok(stack.ctr(&["namespaces", "rm", "team-b"]));
}

#[tokio::test]
async fn a_namespace_with_things_in_it_is_not_deleted_and_says_what_is_left() {
    require_tool("ctr");
    let stack = Stack::start().await;
    create(&stack, "busy", container("web", "docker.io/library/busybox:latest", &[])).await;
    let mut content = ContentClient::new(stack.containerd_channel().await);
    ingest(&mut content, "busy", "blob-1", b"some bytes").await;

    // Both were created implicitly in a namespace nobody created.
    let listed = ok(stack.ctr(&["namespaces", "ls", "-q"]));
    assert!(listed.lines().any(|l| l == "busy"), "{listed}");
    let err = failed(stack.ctr(&["namespaces", "rm", "busy"]));
    assert!(err.contains("must be empty") && err.contains("containers") && err.contains("blobs"), "{err}");
    // Refused deletes leave the namespace usable.
    ok(stack.ctr(&["-n", "busy", "containers", "ls"]));
    // The blob first: deleting the container starts a collection that would take it anyway.
    let digest = berth_e2e::digest_of(b"some bytes");
    ok(stack.ctr(&["-n", "busy", "content", "rm", &digest]));
    ok(stack.ctr(&["-n", "busy", "containers", "rm", "web"]));
    ok(stack.ctr(&["namespaces", "rm", "busy"]));
}

#[tokio::test]
async fn ctr_containers_list_filter_info_label_and_remove() {
    require_tool("ctr");
    let stack = Stack::start().await;
    create(&stack, "default", container("web", "docker.io/library/nginx:latest", &[("app", "web")])).await;
    create(&stack, "default", container("db", "docker.io/library/postgres:16", &[("app", "db")])).await;

    let listed = ok(stack.ctr(&["containers", "ls"]));
    let web = listed.lines().find(|l| l.starts_with("web")).unwrap_or_else(|| panic!("{listed}"));
    assert!(web.contains("docker.io/library/nginx:latest") && web.contains("io.containerd.runc.v2"), "{web}");
    let quiet = ok(stack.ctr(&["containers", "ls", "-q"]));
    assert_eq!(quiet.lines().collect::<Vec<_>>(), ["db", "web"]);
    let filtered = ok(stack.ctr(&["containers", "ls", "-q", "labels.app==db"]));
    assert_eq!(filtered.lines().collect::<Vec<_>>(), ["db"]);
    let filtered = ok(stack.ctr(&["containers", "ls", "-q", "image~=nginx"]));
    assert_eq!(filtered.lines().collect::<Vec<_>>(), ["web"]);
    let filtered = ok(stack.ctr(&["containers", "ls", "-q", "runtime.name==io.containerd.runc.v2,id==web"]));
    assert_eq!(filtered.lines().collect::<Vec<_>>(), ["web"]);
    let err = failed(stack.ctr(&["containers", "ls", "labels.app=="]));
    assert!(err.contains("position"), "a filter error says where: {err}");

    let info = ok(stack.ctr(&["containers", "info", "web"]));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap_or_else(|e| panic!("{e}: {info}"));
    assert_eq!(info["Image"], "docker.io/library/nginx:latest");
    assert_eq!(info["Snapshotter"], "overlayfs");
    assert_eq!(info["Spec"]["process"]["args"][0], "sh", "the spec round-trips: {info}");

    ok(stack.ctr(&["containers", "label", "web", "tier=front"]));
    let info = ok(stack.ctr(&["containers", "info", "web"]));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["Labels"]["tier"], "front");
    assert_eq!(info["Labels"]["app"], "web", "other labels stay");

    ok(stack.ctr(&["containers", "rm", "web"]));
    let quiet = ok(stack.ctr(&["containers", "ls", "-q"]));
    assert_eq!(quiet.lines().collect::<Vec<_>>(), ["db"]);
    let err = failed(stack.ctr(&["containers", "info", "web"]));
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn ctr_leases_create_list_and_remove() {
    require_tool("ctr");
    let stack = Stack::start().await;
    ok(stack.ctr(&["leases", "create", "--id", "pull-1", "--expires", "1h", "purpose=test"]));
    ok(stack.ctr(&["leases", "create", "--id", "pull-2"]));
    let listed = ok(stack.ctr(&["leases", "ls"]));
    let line = listed.lines().find(|l| l.starts_with("pull-1")).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("containerd.io/gc.expire=") && line.contains("purpose=test"), "{line}");
    let quiet = ok(stack.ctr(&["leases", "ls", "-q"]));
    assert_eq!(quiet.lines().collect::<Vec<_>>(), ["pull-1", "pull-2"]);
    let err = failed(stack.ctr(&["leases", "create", "--id", "pull-1"]));
    assert!(err.contains("already exists"), "{err}");
    ok(stack.ctr(&["leases", "rm", "pull-1"]));
    ok(stack.ctr(&["leases", "rm", "--sync", "pull-2"]));
    assert_eq!(ok(stack.ctr(&["leases", "ls", "-q"])), "");
    let err = failed(stack.ctr(&["leases", "rm", "pull-1"]));
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn ctr_events_shows_an_event_for_each_change() {
    let ctr = require_tool("ctr");
    let stack = Stack::start().await;
    let mut events = Command::new(ctr)
        .args(["--address"])
        .arg(&stack.socket)
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ctr events");
    let (lines, received) = std::sync::mpsc::channel();
    let reader = BufReader::new(events.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // The subscription is set up asynchronously; give it a moment before changing things.
    tokio::time::sleep(Duration::from_millis(500)).await;

    ok(stack.ctr(&["namespaces", "create", "watched"]));
    create(&stack, "watched", container("c1", "example/image:1", &[])).await;
    ok(stack.ctr(&["-n", "watched", "containers", "label", "c1", "k=v"]));
    ok(stack.ctr(&["-n", "watched", "containers", "rm", "c1"]));
    let mut content = ContentClient::new(stack.containerd_channel().await);
    let digest = ingest(&mut content, "watched", "e1", b"evented").await;
    ok(stack.ctr(&["-n", "watched", "content", "rm", &digest]));
    ok(stack.ctr(&["namespaces", "rm", "watched"]));

    let wanted = [
        "/namespaces/create",
        "/containers/create",
        "/containers/update",
        "/containers/delete",
        "/content/delete",
        "/namespaces/delete",
    ];
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < wanted.len() && std::time::Instant::now() < deadline {
        if let Ok(line) = received.recv_timeout(Duration::from_millis(200))
            && let Some(topic) = wanted.iter().find(|t| line.contains(*t))
        {
            assert!(line.contains("watched"), "events carry their namespace: {line}");
            seen.push(*topic);
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    // Metadata's own events come in the order of the changes; content's come through its
    // publisher, asynchronously, so only their presence is checked.
    let own: Vec<&str> = seen.iter().copied().filter(|t| *t != "/content/delete").collect();
    let want_own: Vec<&str> = wanted.iter().copied().filter(|t| *t != "/content/delete").collect();
    assert_eq!(own, want_own, "events in order of the changes: {seen:?}");
    assert!(seen.contains(&"/content/delete"), "content publishes its deletes: {seen:?}");
}

/// ctr's container commands on a real image record: `ctr images import` (which unpacks through
/// berth's content, snapshot and diff services), then `ctr containers create IMAGE ID`.
#[tokio::test]
async fn ctr_containers_create_from_an_image_record() {
    use berth_e2e::images::{ArchiveFormat, busybox};
    require_tool("ctr");
    berth_e2e::require_root();
    let stack = Stack::start().await;
    let archive = stack.dir.path().join("busybox.tar");
    busybox().write_archive(ArchiveFormat::Oci, &archive, "berth.test/busybox:1");
    let archive = archive.to_str().unwrap();
    ok(stack.ctr(&["images", "import", "--base-name", "berth.test/busybox", archive]));
    let image = "berth.test/busybox:1";

    ok(stack.ctr(&["containers", "create", "--label", "app=shell", image, "shell"]));
    let listed = ok(stack.ctr(&["containers", "ls"]));
    let line = listed.lines().find(|l| l.starts_with("shell")).unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains(image) && line.contains("io.containerd.runc.v2"), "{line}");
    let info: serde_json::Value = serde_json::from_str(&ok(stack.ctr(&["containers", "info", "shell"]))).unwrap();
    assert_eq!(info["Image"], image);
    assert_eq!(info["SnapshotKey"], "shell");
    assert_eq!(info["Labels"]["app"], "shell");
    assert_eq!(info["Spec"]["process"]["args"][0], "sh", "the spec comes from the image config: {info}");
    let snapshots = ok(stack.ctr(&["snapshots", "ls"]));
    assert!(snapshots.lines().any(|l| l.starts_with("shell ")), "ctr prepared the rootfs: {snapshots}");

    ok(stack.ctr(&["containers", "rm", "shell"]));
    assert_eq!(ok(stack.ctr(&["containers", "ls", "-q"])), "");
    let snapshots = ok(stack.ctr(&["snapshots", "ls"]));
    assert!(!snapshots.lines().any(|l| l.starts_with("shell ")), "its snapshot went with it: {snapshots}");
}
