//! The `berth-content` binary: flags, socket handling, signals.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BINARY: &str = env!("CARGO_BIN_EXE_berth-content");

fn spawn(root: &Path, socket: &Path, extra: &[&str]) -> Child {
    Command::new(BINARY)
        .arg("--root")
        .arg(root)
        .arg("--listen")
        .arg(socket)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start berth-content")
}

async fn wait_for_socket(socket: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("berth-content exited early: {status}");
        }
        assert!(Instant::now() < deadline, "socket did not appear");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
}

/// Waits without blocking the test's runtime, so its clients can answer the server's GOAWAY.
async fn wait_exit(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(started.elapsed() < Duration::from_secs(20), "berth-content did not exit");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn bad_or_unreachable_metadata_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("c.sock");
    let output = spawn(dir.path(), &socket, &["--metadata", "redis://x:1"]).wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("etcd://HOST:PORT"));
    // Port 1 on loopback: nothing listens there, so the etcd backend cannot start.
    let output = spawn(dir.path(), &socket, &["--metadata", "etcd://127.0.0.1:1"]).wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("etcd"), "{stderr}");
    assert!(!socket.exists());
}

#[tokio::test]
async fn serves_on_a_private_socket_refuses_a_second_server_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let socket = dir.path().join("run/content.sock");
    let mut child = spawn(&root, &socket, &[]);
    wait_for_socket(&socket, &mut child).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "no access for others: {mode:o}");
    assert!(root.join("content.redb").exists());

    let mut client = berth_api::containerd::services::content::v1::content_client::ContentClient::new(
        berth_core::connect::lazy_channel(&berth_core::connect::Address::Unix(socket.clone())),
    );
    let digest = ingest(&mut client, "default", "via-binary", b"served").await;

    let second = spawn(&dir.path().join("root2"), &socket, &[]);
    let second = tokio::task::spawn_blocking(move || second.wait_with_output()).await.unwrap().unwrap();
    assert!(!second.status.success(), "a live server is not replaced");
    assert!(String::from_utf8_lossy(&second.stderr).contains("another server is listening"));
    assert_eq!(read_all(&mut client, "default", &digest).await.unwrap(), b"served", "first still serves");
    drop(client);

    signal(&child, "TERM");
    let (status, took) = wait_exit(&mut child).await;
    assert!(status.success());
    assert!(took < Duration::from_secs(2), "no open call: stops at once ({took:?})");
    assert!(!socket.exists(), "socket removed on exit");

    // A stale socket file (as a kill -9 leaves) does not stop the next start.
    let mut child = spawn(&root, &socket, &[]);
    wait_for_socket(&socket, &mut child).await;
    signal(&child, "KILL");
    wait_exit(&mut child).await;
    assert!(socket.exists());
    let mut child = spawn(&root, &socket, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut client = berth_api::containerd::services::content::v1::content_client::ContentClient::new(
        berth_core::connect::lazy_channel(&berth_core::connect::Address::Unix(socket.clone())),
    );
    loop {
        match read_all(&mut client, "default", &digest).await {
            Ok(data) => {
                assert_eq!(data, b"served");
                break;
            }
            Err(e) => {
                assert!(child.try_wait().unwrap().is_none(), "exited: {e:?}");
                assert!(Instant::now() < deadline, "not serving after a stale socket: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    signal(&child, "INT");
    let (status, took) = wait_exit(&mut child).await;
    assert!(status.success());
    assert!(took < Duration::from_secs(2), "an idle client does not hold up the stop ({took:?})");
}
