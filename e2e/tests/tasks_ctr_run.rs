//! `ctr run --rm` end to end: an image imported with ctr (content, images, snapshots and diff
//! through the gateway), then run on berth's execution service.

mod tasks_common;

use berth_e2e::images::{ArchiveFormat, busybox};
use tasks_common::Host;

#[tokio::test]
async fn ctr_run_rm_prints_and_cleans_up() {
    let host = Host::start().await;
    let archive = host.stack.dir.path().join("busybox.tar");
    busybox().write_archive(ArchiveFormat::Oci, &archive, "docker.io/library/busybox:e2e");
    let imported = host.ctr(&["images", "import", archive.to_str().unwrap()]);
    assert!(imported.status.success(), "import: {}", String::from_utf8_lossy(&imported.stderr));

    let run = host.ctr(&["run", "--rm", "docker.io/library/busybox:e2e", "r1", "echo", "hi"]);
    assert!(
        run.status.success(),
        "ctr run: {}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&run.stdout), "hi\n");
    let failing = host.ctr(&["run", "--rm", "docker.io/library/busybox:e2e", "r2", "sh", "-c", "exit 6"]);
    assert_eq!(failing.status.code(), Some(6), "{}", String::from_utf8_lossy(&failing.stderr));

    let containers = host.ctr(&["containers", "ls", "-q"]);
    assert_eq!(String::from_utf8_lossy(&containers.stdout).trim(), "", "--rm removed the containers");
    let tasks = host.ctr(&["task", "ls", "-q"]);
    assert_eq!(String::from_utf8_lossy(&tasks.stdout).trim(), "", "and their tasks");
}
