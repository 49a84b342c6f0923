//! The `berth-snapshot` binary: flags, socket, signals, and records and directories that stay
//! consistent when the process is killed (-9) in the middle of work.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_api::containerd::services::snapshots::v1 as api;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_core::connect::{Address, lazy_channel};
use futures::StreamExt;
use tonic::transport::Channel;

const BINARY: &str = env!("CARGO_BIN_EXE_berth-snapshot");

fn spawn(root: &Path, socket: &Path, extra: &[&str]) -> Child {
    Command::new(BINARY)
        .arg("--root")
        .arg(root)
        .arg("--listen")
        .arg(socket)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start berth-snapshot")
}

fn client(socket: &Path) -> SnapshotsClient<Channel> {
    SnapshotsClient::new(lazy_channel(&Address::Unix(socket.to_path_buf())))
}

/// Waits until the server answers a List.
async fn wait_serving(socket: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("berth-snapshot exited early: {status}");
        }
        if socket.exists() {
            let request = api::ListSnapshotsRequest { snapshotter: String::new(), filters: Vec::new() };
            if client(socket).list(request).await.is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "berth-snapshot did not serve");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, signal).unwrap();
}

async fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "berth-snapshot did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn bad_metadata_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let output = spawn(dir.path(), &socket, &["--metadata", "redis://x:1"]).wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("etcd://HOST:PORT"));
    assert!(!socket.exists());
}

#[tokio::test]
async fn serves_and_stops_on_sigterm() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let (root, socket) = (dir.path().join("root"), dir.path().join("run/snapshot.sock"));
    let mut child = spawn(&root, &socket, &[]);
    wait_serving(&socket, &mut child).await;
    assert!(root.join("snapshot.redb").exists());
    let request = api::PrepareSnapshotRequest {
        snapshotter: String::new(),
        key: "k".into(),
        parent: String::new(),
        labels: HashMap::new(),
    };
    let mounts = client(&socket).prepare(request).await.unwrap().into_inner().mounts;
    assert!(Path::new(&mounts[0].source).starts_with(root.join("overlayfs/snapshots")));
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut child).await.success());
    assert!(!socket.exists(), "socket removed on exit");
}

/// Every record of the snapshotter with its directory, and every directory with a record.
async fn check_consistent(socket: &Path, root: &Path, snapshotter: &str) -> usize {
    let mut client = client(socket);
    let request = api::ListSnapshotsRequest { snapshotter: snapshotter.into(), filters: Vec::new() };
    let mut stream = client.list(request).await.unwrap().into_inner();
    let mut keys = Vec::new();
    while let Some(message) = stream.next().await {
        keys.extend(message.unwrap().info.into_iter().filter(|i| i.kind() != api::Kind::Committed).map(|i| i.name));
    }
    let mut used: HashSet<PathBuf> = HashSet::new();
    for key in &keys {
        let request = api::MountsRequest { snapshotter: snapshotter.into(), key: key.clone() };
        let mounts = client.mounts(request).await.unwrap().into_inner().mounts;
        let source = PathBuf::from(&mounts[0].source);
        assert!(source.is_dir(), "{key}: {} is missing", source.display());
        used.insert(source);
    }
    let dirs: Vec<PathBuf> =
        std::fs::read_dir(root.join(snapshotter).join("snapshots")).unwrap().map(|e| e.unwrap().path()).collect();
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_str().unwrap();
        assert!(name.parse::<u64>().is_ok(), "leftover {name} after restart");
    }
    // One committed base plus the actives/views listed.
    assert_eq!(dirs.len(), keys.len() + 1, "directories without records: {dirs:?} for {keys:?}");
    keys.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_and_directories_stay_consistent_across_kill_9() {
    common::require_root();
    let dir = tempfile::tempdir().unwrap();
    let (root, socket) = (dir.path().join("root"), dir.path().join("snapshot.sock"));
    let mut child = spawn(&root, &socket, &[]);
    wait_serving(&socket, &mut child).await;

    // A base with enough files that each native copy takes a while.
    let mut c = client(&socket);
    let prepare = |key: String, parent: &str| api::PrepareSnapshotRequest {
        snapshotter: "native".into(),
        key,
        parent: parent.into(),
        labels: HashMap::new(),
    };
    let mounts = c.prepare(prepare("base-a".into(), "")).await.unwrap().into_inner().mounts;
    for i in 0..1500 {
        std::fs::write(Path::new(&mounts[0].source).join(format!("f{i}")), b"data").unwrap();
    }
    c.commit(api::CommitSnapshotRequest {
        snapshotter: "native".into(),
        name: "base".into(),
        key: "base-a".into(),
        labels: HashMap::new(),
    })
    .await
    .unwrap();

    for round in 0..3usize {
        // Prepares and removes in flight, then kill -9.
        let mut tasks = Vec::new();
        for i in 0..6 {
            let mut c = client(&socket);
            let request = prepare(format!("r{round}-{i}"), "base");
            tasks.push(tokio::spawn(async move {
                let _ = c.prepare(request).await;
            }));
        }
        // Early, midway and late: some copies done, some not.
        tokio::time::sleep(Duration::from_millis([40, 1100, 2500][round])).await;
        signal(&child, nix::sys::signal::Signal::SIGKILL);
        wait_exit(&mut child).await;
        for task in tasks {
            let _ = task.await;
        }
        let left: Vec<String> = std::fs::read_dir(root.join("native/snapshots"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        eprintln!("round {round}: after kill -9: {left:?}");
        child = spawn(&root, &socket, &[]);
        wait_serving(&socket, &mut child).await;
        let live = check_consistent(&socket, &root, "native").await;
        // Remove some so removals get interrupted next round.
        let mut c = client(&socket);
        let request = api::ListSnapshotsRequest { snapshotter: "native".into(), filters: vec!["kind==active".into()] };
        let mut stream = c.list(request).await.unwrap().into_inner();
        let mut actives = Vec::new();
        while let Some(message) = stream.next().await {
            actives.extend(message.unwrap().info.into_iter().map(|i| i.name));
        }
        assert!(live >= actives.len());
        for key in actives.into_iter().take(2) {
            let mut c = client(&socket);
            tokio::spawn(async move {
                let _ = c.remove(api::RemoveSnapshotRequest { snapshotter: "native".into(), key }).await;
            });
        }
    }
    signal(&child, nix::sys::signal::Signal::SIGKILL);
    wait_exit(&mut child).await;
    child = spawn(&root, &socket, &[]);
    wait_serving(&socket, &mut child).await;
    check_consistent(&socket, &root, "native").await;
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    assert!(wait_exit(&mut child).await.success());
}
