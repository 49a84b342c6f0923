//! `berth containers rm` removes the container's snapshot with its record, as ctr's snapshot
//! cleanup does: a missing snapshot is fine, `--keep-snapshot` keeps it, and a snapshot that
//! cannot go (it has children) is reported after the record is gone.

use berth_e2e::Stack;
use berth_e2e::outcome::{failed, ok};

/// Keys of the snapshots in the default namespace, as ctr lists them.
fn snapshot_keys(stack: &Stack) -> Vec<String> {
    let listed = ok("ctr snapshots ls", stack.ctr(&["snapshots", "ls"]));
    listed.lines().skip(1).filter_map(|line| line.split_whitespace().next()).map(str::to_string).collect()
}

fn container_ids(stack: &Stack) -> Vec<String> {
    ok("berth containers ls -q", stack.berth(&["containers", "ls", "-q"])).lines().map(str::to_string).collect()
}

/// A container record `id` whose snapshot is `key` (which may not exist).
fn container(stack: &Stack, id: &str, key: &str) {
    let out = stack.berth(&["containers", "create", "--snapshot-key", key, "busybox:e2e", id, "true"]);
    ok("berth containers create", out);
}

#[tokio::test]
async fn containers_rm_removes_the_snapshot_the_record_names() {
    let stack = Stack::start().await;
    // berth's prepare labels snapshots gc.root (as ctr does), so the collector leaves them
    // alone: only rm's cleanup can remove them.
    for key in ["web-snap", "kept-snap", "other"] {
        ok("berth snapshots prepare", stack.berth(&["snapshots", "prepare", key]));
    }
    container(&stack, "web", "web-snap");
    container(&stack, "kept", "kept-snap");
    container(&stack, "ghost", "never-prepared");
    ok("berth containers create", stack.berth(&["containers", "create", "busybox:e2e", "bare", "true"]));

    assert_eq!(ok("berth containers rm", stack.berth(&["containers", "rm", "web"])), "web\n");
    assert_eq!(snapshot_keys(&stack), ["kept-snap", "other"], "web's snapshot went with it");

    let out = stack.berth(&["containers", "rm", "--keep-snapshot", "kept"]);
    assert_eq!(ok("berth containers rm --keep-snapshot", out), "kept\n");
    assert_eq!(snapshot_keys(&stack), ["kept-snap", "other"], "--keep-snapshot keeps it");

    // A snapshot that is not there, or none at all: the record goes, nothing to clean up.
    assert_eq!(ok("berth containers rm", stack.berth(&["containers", "rm", "ghost", "bare"])), "ghost\nbare\n");
    assert!(container_ids(&stack).is_empty());
    assert_eq!(snapshot_keys(&stack), ["kept-snap", "other"], "other snapshots stay");

    // A committed snapshot with a child cannot be removed: the record is gone all the same,
    // and rm says what is left behind.
    ok("berth snapshots commit", stack.berth(&["snapshots", "commit", "base", "other"]));
    ok("berth snapshots prepare", stack.berth(&["snapshots", "prepare", "child", "base"]));
    container(&stack, "parent", "base");
    let err = failed("berth containers rm of a parent's container", stack.berth(&["containers", "rm", "parent"]));
    assert!(err.contains("container parent was removed but its snapshot was not"), "{err}");
    assert!(err.contains("base"), "names the snapshot: {err}");
    assert!(container_ids(&stack).is_empty());
    assert!(snapshot_keys(&stack).contains(&"base".to_string()));
}
