//! containerd's own `ctr` (Debian's containerd 1.6) against the diff service: `ctr snapshots
//! diff` of snapshots made and changed with `ctr snapshots prepare/mounts/commit`, with its
//! flags (--media-type, --ref, --label, --keep, two snapshots), the layer it prints applied
//! back with containerd's client crate (ctr has no Apply command) onto a snapshot `ctr` made —
//! on overlayfs and native.

mod diff_common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use berth_e2e::{Stack, digest_of, require_root, require_tool};
use containerd_client::services::v1::content_client::ContentClient;
use diff_common::{Snapshots, TAR, TAR_GZIP, assert_same_tree, chown, no_temp_mounts, set_xattr, write};

fn stdout(output: &Output) -> Vec<u8> {
    assert!(
        output.status.success(),
        "ctr failed: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout.clone()
}

fn text(output: &Output) -> String {
    String::from_utf8_lossy(&stdout(output)).into_owned()
}

/// Runs one `mount ...` line as ctr prints it.
fn run_mount_line(line: &str) {
    let args: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(args[0], "mount", "{line}");
    let status = Command::new("mount").args(&args[1..]).status().expect("run mount");
    assert!(status.success(), "{line}");
}

fn umount(target: &Path) {
    assert!(Command::new("umount").arg(target).status().expect("umount").success(), "umount {}", target.display());
}

/// `tar -tv` of a layer: the names with their types, one per line.
fn entries(layer: &[u8], dir: &Path) -> Vec<String> {
    let file = dir.join("layer.listing");
    std::fs::write(&file, layer).unwrap();
    let output = Command::new("tar").arg("-tf").arg(&file).output().expect("run tar");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect();
    names.sort();
    names
}

async fn ctr_diff(snapshotter: &str) {
    require_tool("ctr");
    require_root();
    let stack = Stack::start().await;
    let ctr = |args: &[&str]| {
        let mut all = vec!["snapshots", "--snapshotter", snapshotter];
        all.extend_from_slice(args);
        stack.ctr(&all)
    };
    let work = stack.dir.path().join("work");
    let target = work.join("mnt");
    std::fs::create_dir_all(&target).unwrap();
    let target_str = target.to_str().unwrap();

    // base: made and filled through the mounts ctr prints.
    stdout(&ctr(&["prepare", "base-a"]));
    run_mount_line(text(&ctr(&["mounts", target_str, "base-a"])).trim());
    write(&target.join("etc/config"), b"v1\n", 0o644);
    write(&target.join("etc/gone"), b"gone\n", 0o644);
    write(&target.join("srv/app/data"), &berth_e2e::random_bytes(2 << 20), 0o600);
    chown(&target.join("srv/app"), 33, 33);
    umount(&target);
    stdout(&ctr(&["commit", "base", "base-a"]));

    // child: changed through its mounts.
    stdout(&ctr(&["prepare", "child-a", "base"]));
    run_mount_line(text(&ctr(&["mounts", target_str, "child-a"])).trim());
    write(&target.join("etc/config"), b"v2\n", 0o644);
    std::fs::remove_file(target.join("etc/gone")).unwrap();
    write(&target.join("new/file"), b"new\n", 0o755);
    set_xattr(&target.join("new/file"), "user.origin", b"ctr-test");
    umount(&target);

    // `ctr snapshots diff KEY`: the layer from the parent, gzip by default, on stdout.
    let layer = stdout(&ctr(&["diff", "child-a"]));
    assert_eq!(&layer[..2], &[0x1f, 0x8b], "gzip");
    let names = entries(&layer, &work);
    for name in ["etc/", "etc/.wh.gone", "etc/config", "new/", "new/file"] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("srv")), "unchanged files stay out: {names:?}");
    // Again: the blob is already there (AlreadyExists), yet held by ctr's lease and printed.
    assert_eq!(stdout(&ctr(&["diff", "child-a"])), layer, "the same layer again");

    // The same layer, byte for byte, as containerd's client crate gets it.
    let mut sn = Snapshots::new(&stack, snapshotter, "default").await;
    let parent = sn.view("base-view", "base").await;
    let active = sn.mounts("child-a").await;
    let by_client = sn.diff(parent, active, "", HashMap::new()).await.unwrap();
    assert_eq!((by_client.digest.as_str(), by_client.size), (digest_of(&layer).as_str(), layer.len() as i64));
    assert_eq!(by_client.media_type, TAR_GZIP);
    stdout(&ctr(&["commit", "child", "child-a"]));

    // Two snapshots, uncompressed, kept under a ref with labels.
    let plain = stdout(&ctr(&[
        "diff",
        "--media-type",
        TAR,
        "--ref",
        "ctr-diff-1",
        "--label",
        "team=red",
        "--keep",
        "base",
        "child",
    ]));
    assert_eq!(entries(&plain, &work), names, "the same changes, uncompressed");
    let listing = text(&stack.ctr(&["content", "ls"]));
    let row = listing.lines().find(|l| l.starts_with(&digest_of(&plain))).unwrap_or_else(|| panic!("{listing}"));
    assert!(row.contains("team=red") && row.contains("containerd.io/gc.root"), "{row}");
    assert!(row.contains(&format!("containerd.io/uncompressed={}", digest_of(&plain))), "{row}");

    let refused = ctr(&["diff", "--media-type", "application/x-made-up", "child"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("unsupported diff media type: application/x-made-up"), "{stderr}");

    // Apply ctr's layer onto a snapshot ctr prepares: the same tree.
    let mut content = ContentClient::new(stack.containerd_channel().await);
    diff_common::ingest_held(&mut content, "default", "ctr-layer", &layer).await;
    stdout(&ctr(&["prepare", "copy-a", "base"]));
    let mounts = sn.mounts("copy-a").await;
    let applied = sn.apply(&diff_common::descriptor(TAR_GZIP, &layer), mounts).await.unwrap();
    assert_eq!(applied.digest, digest_of(&plain), "the diffID is the uncompressed layer's digest");
    stdout(&ctr(&["commit", "copy", "copy-a"]));
    let child = sn.viewed("child", &work).await;
    let copy = sn.viewed("copy", &work).await;
    assert_same_tree(child.path(), copy.path(), &format!("{snapshotter}: child and base + ctr's diff"));
    copy.done(&mut sn).await;
    child.done(&mut sn).await;
    assert!(no_temp_mounts(&stack));
}

#[tokio::test]
async fn ctr_snapshots_diff_on_overlayfs() {
    ctr_diff("overlayfs").await;
}

#[tokio::test]
async fn ctr_snapshots_diff_on_native() {
    ctr_diff("native").await;
}
