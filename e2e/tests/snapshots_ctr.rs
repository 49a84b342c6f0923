//! containerd's own `ctr snapshots ...` (Debian's containerd 1.6) against the gateway:
//! prepare, view, commit, ls, tree, mounts, usage, info, label, rm on both snapshotters, the
//! mounts it prints actually mounted, and the records on etcd surviving a kill -9.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use berth_e2e::{Stack, procs, require_root, require_tool};
use nix::sys::signal::Signal;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "ctr failed: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_of_failure(output: &std::process::Output) -> String {
    assert!(!output.status.success(), "ctr should have failed; stdout: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `ctr snapshots ls` rows as (key, parent, kind).
fn rows(listing: &str) -> Vec<(String, String, String)> {
    let mut lines = listing.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["KEY", "PARENT", "KIND"], "{listing}");
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [key, kind] => (key.to_string(), String::new(), kind.to_string()),
                [key, parent, kind] => (key.to_string(), parent.to_string(), kind.to_string()),
                _ => panic!("unexpected ls line {line:?}"),
            }
        })
        .collect()
}

fn row(key: &str, parent: &str, kind: &str) -> (String, String, String) {
    (key.to_string(), parent.to_string(), kind.to_string())
}

/// The `"Source"` of the first mount in `--mounts` JSON output.
fn json_source(json: &str) -> PathBuf {
    let line = json.lines().find(|l| l.trim_start().starts_with("\"Source\"")).expect("a Source in the mounts");
    let value = line.split_once(':').unwrap().1.trim().trim_end_matches(',').trim_matches('"');
    PathBuf::from(value)
}

/// Runs one `mount -t ... SOURCE TARGET -o OPTIONS` line as ctr prints it.
fn run_mount_line(line: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(args[0], "mount", "{line}");
    let status = Command::new("mount").args(&args[1..]).status().expect("run mount");
    assert!(status.success(), "{line}");
}

fn umount(target: &Path) {
    let status = Command::new("umount").arg(target).status().expect("run umount");
    assert!(status.success(), "umount {}", target.display());
}

#[tokio::test]
async fn ctr_snapshots_on_overlayfs() {
    require_tool("ctr");
    require_root();
    let stack = Stack::start().await;
    let snapshots = stack.root.join("snapshot/overlayfs/snapshots");

    // prepare (the default snapshotter is overlayfs) and write into the new layer.
    let json = stdout(&stack.ctr(&["snapshots", "prepare", "--mounts", "base-a"]));
    assert!(json.contains("\"Type\": \"bind\""), "{json}");
    assert!(json.contains("\"rw\""), "{json}");
    let upper = json_source(&json);
    assert!(upper.starts_with(&snapshots), "{}", upper.display());
    std::fs::write(upper.join("hello"), vec![b'x'; 1 << 20]).unwrap();
    assert_eq!(rows(&stdout(&stack.ctr(&["snapshots", "ls"]))), [row("base-a", "", "Active")]);

    let usage = stdout(&stack.ctr(&["snapshots", "usage", "-b", "base-a"]));
    let fields: Vec<&str> = usage.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(fields[0], "base-a");
    assert!(fields[1].parse::<u64>().unwrap() >= 1 << 20, "{usage}");
    assert_eq!(fields[2], "2", "the root and the file: {usage}");

    stdout(&stack.ctr(&["snapshots", "commit", "base", "base-a"]));
    let printed = stdout(&stack.ctr(&["snapshots", "prepare", "--target", "/mnt/x", "child", "base"]));
    assert!(printed.starts_with("mount -t overlay overlay /mnt/x -o "), "{printed}");
    assert!(
        printed.contains("upperdir=") && printed.contains("workdir=") && printed.contains("lowerdir="),
        "{printed}"
    );
    let view = stdout(&stack.ctr(&["snapshots", "view", "--mounts", "v1", "base"]));
    assert!(view.contains("\"ro\"") && view.contains("\"rbind\""), "a view of one layer is a read-only bind: {view}");

    assert_eq!(
        rows(&stdout(&stack.ctr(&["snapshots", "ls"]))),
        [row("base", "", "Committed"), row("child", "base", "Active"), row("v1", "base", "View")]
    );
    let tree = stdout(&stack.ctr(&["snapshots", "tree"]));
    assert!(tree.contains(" base\n"), "{tree}");
    assert!(tree.contains("\\_ child") && tree.contains("\\_ v1"), "{tree}");

    // The mount command ctr prints for the child really assembles base + child.
    let target = stack.dir.path().join("child-mnt");
    std::fs::create_dir(&target).unwrap();
    let line = stdout(&stack.ctr(&["snapshots", "mounts", target.to_str().unwrap(), "child"]));
    assert!(line.starts_with(&format!("mount -t overlay overlay {} -o ", target.display())), "{line}");
    run_mount_line(line.trim());
    assert_eq!(std::fs::read(target.join("hello")).unwrap().len(), 1 << 20, "the base layer shows through");
    std::fs::write(target.join("in-child"), b"child data").unwrap();
    umount(&target);
    let usage = stdout(&stack.ctr(&["snapshots", "usage"]));
    for key in ["base", "child", "v1"] {
        assert!(usage.lines().any(|l| l.starts_with(key)), "usage lists {key}: {usage}");
    }
    let child_usage = stdout(&stack.ctr(&["snapshots", "usage", "-b", "child"]));
    assert_eq!(child_usage.lines().nth(1).unwrap().split_whitespace().nth(2), Some("2"), "{child_usage}");

    let info = stdout(&stack.ctr(&["snapshots", "info", "base"]));
    assert!(info.contains("\"Kind\": \"Committed\"") && info.contains("\"Name\": \"base\""), "{info}");
    assert!(info.contains("containerd.io/gc.root"), "ctr's commit labels it: {info}");
    stdout(&stack.ctr(&["snapshots", "label", "base", "team=blue"]));
    assert!(stdout(&stack.ctr(&["snapshots", "info", "base"])).contains("\"team\": \"blue\""));

    // Namespaces: another one sees nothing, and can reuse the keys.
    assert!(rows(&stdout(&stack.ctr(&["-n", "other", "snapshots", "ls"]))).is_empty());
    stdout(&stack.ctr(&["-n", "other", "snapshots", "prepare", "base"]));

    // Removal: not while children exist; then in order.
    let refused = stderr_of_failure(&stack.ctr(&["snapshots", "rm", "base"]));
    assert!(refused.contains("failed precondition") && refused.contains("parent"), "{refused}");
    stdout(&stack.ctr(&["snapshots", "rm", "child", "v1"]));
    stdout(&stack.ctr(&["snapshots", "rm", "base"]));
    assert!(rows(&stdout(&stack.ctr(&["snapshots", "ls"]))).is_empty());
    assert_eq!(rows(&stdout(&stack.ctr(&["-n", "other", "snapshots", "ls"]))), [row("base", "", "Active")]);
    let left = std::fs::read_dir(&snapshots).unwrap().count();
    assert_eq!(left, 1, "only the other namespace's snapshot keeps a directory");
}

#[tokio::test]
async fn ctr_snapshots_with_the_native_snapshotter() {
    require_tool("ctr");
    require_root();
    let stack = Stack::start().await;
    let native = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", "native"];
        all.extend_from_slice(args);
        stack.ctr(&all)
    };
    let json = stdout(&native(&["prepare", "--mounts", "base-a"]));
    let base_dir = json_source(&json);
    assert!(base_dir.starts_with(stack.root.join("snapshot/native/snapshots")), "{}", base_dir.display());
    std::fs::create_dir(base_dir.join("etc")).unwrap();
    std::fs::write(base_dir.join("etc/hostname"), b"berth").unwrap();
    std::os::unix::fs::lchown(base_dir.join("etc/hostname"), Some(42), Some(43)).unwrap();
    stdout(&native(&["commit", "base", "base-a"]));

    let printed = stdout(&native(&["prepare", "--target", "/mnt/n", "child", "base"]));
    assert!(printed.starts_with("mount -t bind "), "{printed}");
    assert!(printed.trim_end().ends_with(" /mnt/n -o rw,rbind"), "{printed}");
    // The child is a full copy of its parent, owners included.
    let child_dir = PathBuf::from(printed.split_whitespace().nth(3).unwrap());
    assert_eq!(std::fs::read(child_dir.join("etc/hostname")).unwrap(), b"berth");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(child_dir.join("etc/hostname")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (42, 43));

    // Mount the printed bind mount and write through it.
    let target = stack.dir.path().join("native-mnt");
    std::fs::create_dir(&target).unwrap();
    let line = stdout(&native(&["mounts", target.to_str().unwrap(), "child"]));
    run_mount_line(line.trim());
    std::fs::write(target.join("new"), b"through the mount").unwrap();
    umount(&target);
    assert_eq!(std::fs::read(child_dir.join("new")).unwrap(), b"through the mount");

    let view = stdout(&native(&["view", "--mounts", "v", "base"]));
    assert!(view.contains("\"ro\""), "{view}");
    assert_eq!(
        rows(&stdout(&native(&["ls"]))),
        [row("base", "", "Committed"), row("child", "base", "Active"), row("v", "base", "View")]
    );
    // Each snapshotter has its own snapshots.
    assert!(rows(&stdout(&stack.ctr(&["snapshots", "ls"]))).is_empty());
    let tree = stdout(&native(&["tree"]));
    assert!(tree.contains("\\_ child") && tree.contains("\\_ v"), "{tree}");
    let usage = stdout(&native(&["usage", "-b", "child"]));
    assert_eq!(usage.lines().nth(1).unwrap().split_whitespace().nth(2), Some("4"), "root, etc, hostname, new: {usage}");

    stdout(&native(&["rm", "child", "v", "base"]));
    assert!(rows(&stdout(&native(&["ls"]))).is_empty());
    assert_eq!(std::fs::read_dir(stack.root.join("snapshot/native/snapshots")).unwrap().count(), 0);
}

#[tokio::test]
async fn ctr_snapshots_errors_name_what_is_wrong() {
    require_tool("ctr");
    let stack = Stack::start().await;
    let unknown = stderr_of_failure(&stack.ctr(&["snapshots", "--snapshotter", "zfs", "ls"]));
    assert!(unknown.contains("snapshotter not loaded: zfs"), "{unknown}");
    stdout(&stack.ctr(&["snapshots", "prepare", "a"]));
    let taken = stderr_of_failure(&stack.ctr(&["snapshots", "prepare", "a"]));
    assert!(taken.contains("already exists"), "{taken}");
    let no_parent = stderr_of_failure(&stack.ctr(&["snapshots", "prepare", "b", "missing"]));
    assert!(no_parent.contains("missing") && no_parent.contains("not found"), "{no_parent}");
    let active_parent = stderr_of_failure(&stack.ctr(&["snapshots", "prepare", "b", "a"]));
    assert!(active_parent.contains("not a committed snapshot"), "{active_parent}");
    let no_key = stderr_of_failure(&stack.ctr(&["snapshots", "commit", "c", "nothing"]));
    assert!(no_key.contains("nothing") && no_key.contains("not found"), "{no_key}");
    let gone = stderr_of_failure(&stack.ctr(&["snapshots", "rm", "nothing"]));
    assert!(gone.contains("not found"), "{gone}");
}

#[tokio::test]
async fn snapshot_records_on_etcd_survive_a_kill() {
    use berth_store::Store;
    require_tool("ctr");
    let etcd = berth_store::testing::EtcdServer::start();
    let metadata = format!("etcd://{}/e2e-snapshots", etcd.endpoint());
    let stack = Stack::start_with(&["--metadata", &metadata]).await;
    stdout(&stack.ctr(&["snapshots", "prepare", "base-a"]));
    stdout(&stack.ctr(&["snapshots", "commit", "base", "base-a"]));
    stdout(&stack.ctr(&["snapshots", "--snapshotter", "native", "prepare", "n", ""]));
    assert!(!stack.root.join("snapshot/snapshot.redb").exists(), "no local database with etcd metadata");
    let records = berth_store::Etcd::connect(&[etcd.endpoint()], "/e2e-snapshots/snapshot/").await.unwrap();
    let keys: Vec<String> = records.list("").await.unwrap().into_iter().map(|e| e.key).collect();
    assert!(keys.iter().any(|k| k.ends_with("/overlayfs/ns/default/snapshots/base")), "{keys:?}");

    let pid = stack.wait_service_pid("berth-snapshot", Duration::from_secs(5));
    procs::signal(pid, Signal::SIGKILL);
    let mut listing = String::new();
    let back = procs::wait_until(Duration::from_secs(20), || {
        let output = stack.ctr(&["snapshots", "ls"]);
        listing = String::from_utf8_lossy(&output.stdout).into_owned();
        output.status.success() && stack.service_pids("berth-snapshot").iter().any(|p| *p != pid)
    });
    assert!(back, "berth-snapshot did not come back: {listing}\n{}", stack.logs());
    assert_eq!(rows(&listing), [row("base", "", "Committed")]);
    assert_eq!(rows(&stdout(&stack.ctr(&["snapshots", "--snapshotter", "native", "ls"]))), [row("n", "", "Active")]);
    stdout(&stack.ctr(&["snapshots", "prepare", "after", "base"]));
}
