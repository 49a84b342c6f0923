//! An Apply that is interrupted while its layer is being written onto a temporarily mounted
//! snapshot leaves no mount behind: when the client hangs up (the Apply finishes on its own,
//! then unmounts) and when berth-snapshot is killed (its successor unmounts what it left).

mod diff_common;

use std::path::Path;
use std::time::Duration;

use berth_e2e::{Stack, procs, random_bytes, require_root};
use containerd_client::services::v1::content_client::ContentClient;
use diff_common::{Entry, Snapshots, TAR, descriptor, ingest_held, no_temp_mounts, tar};
use nix::sys::signal::Signal;

const NS: &str = "interrupted";

/// Mount points under `dir` according to the kernel.
fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.display().to_string();
    table.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir)).map(str::to_string).collect()
}

/// Waits until `condition` holds, failing with `what` after `timeout`.
async fn wait_for(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stack holding a big layer, and an Apply of it onto a first layer (a bind mount, so the
/// service mounts it) running in the background once a temporary mount exists.
async fn apply_in_background(stack: &Stack) -> (Snapshots, tokio::task::JoinHandle<Result<(), tonic::Status>>) {
    let data = random_bytes(96 << 20);
    let blob = tar(&[Entry::Dir("big/"), Entry::File("big/file", &data)]);
    let layer = descriptor(TAR, &blob);
    let mut content = ContentClient::new(stack.containerd_channel().await);
    ingest_held(&mut content, NS, "big", &blob).await;
    let mut sn = Snapshots::new(stack, "overlayfs", NS).await;
    let mounts = sn.prepare("target", "").await;
    let mut applier = Snapshots::new(stack, "overlayfs", NS).await;
    let apply = tokio::spawn(async move { applier.apply(&layer, mounts).await.map(|_| ()) });
    let tmpmounts = stack.root.join("snapshot/tmpmounts");
    wait_for(Duration::from_secs(30), "the temporary mount", || !mounts_under(&tmpmounts).is_empty()).await;
    (sn, apply)
}

#[tokio::test]
async fn a_client_that_hangs_up_leaves_no_mount() {
    require_root();
    let stack = Stack::start().await;
    let (mut sn, apply) = apply_in_background(&stack).await;
    apply.abort();
    let tmpmounts = stack.root.join("snapshot/tmpmounts");
    wait_for(Duration::from_secs(60), "the apply to finish and unmount", || {
        mounts_under(&tmpmounts).is_empty() && no_temp_mounts(&stack)
    })
    .await;
    sn.remove("target").await.expect("remove the snapshot");
}

#[tokio::test]
async fn a_killed_service_leaves_no_mount() {
    require_root();
    let stack = Stack::start().await;
    let pid = stack.wait_service_pid("berth-snapshot", Duration::from_secs(5));
    let (mut sn, apply) = apply_in_background(&stack).await;
    procs::signal(pid, Signal::SIGKILL);
    let err = apply.await.unwrap().expect_err("the apply's service died");
    assert!(matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal), "{err:?}");

    // berthd restarts the service, which sweeps what its predecessor left.
    let tmpmounts = stack.root.join("snapshot/tmpmounts");
    wait_for(Duration::from_secs(30), "a new berth-snapshot", || {
        stack.service_pids("berth-snapshot").iter().any(|p| *p != pid)
    })
    .await;
    wait_for(Duration::from_secs(30), "the sweep", || mounts_under(&tmpmounts).is_empty() && no_temp_mounts(&stack))
        .await;
    // The half-applied snapshot is the caller's to remove.
    let mut removed = Err(tonic::Status::unavailable("not tried"));
    for _ in 0..100 {
        removed = sn.remove("target").await;
        if removed.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    removed.expect("remove the snapshot");
}
