//! Our `berth snapshots` CLI against the real stack, cross-checked with containerd's
//! `ctr snapshots`: prepare, view, commit, ls, tree, mounts, usage, info, label and rm on
//! overlayfs and native; the mount lines it prints really mount (and are always unmounted);
//! and `diff` then `apply` rebuilds a changed snapshot exactly on a fresh one of its parent.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_e2e::outcome::{failed, ok, stderr};
use berth_e2e::{Stack, digest_of, require_root, require_tool};
use serde_json::Value;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("not JSON ({err}): {text}"))
}

/// `berth snapshots [--snapshotter S] ARGS...` and `ctr snapshots [--snapshotter S] ARGS...`.
struct Cli<'a> {
    stack: &'a Stack,
    snapshotter: &'a str,
}

impl Cli<'_> {
    fn args<'b>(&'b self, args: &[&'b str]) -> Vec<&'b str> {
        let mut all = vec!["snapshots", "--snapshotter", self.snapshotter];
        all.extend_from_slice(args);
        all
    }

    fn berth(&self, args: &[&str]) -> Output {
        self.stack.berth(&self.args(args))
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.stack.ctr(&self.args(args))
    }

    /// `berth snapshots ARGS` that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        ok(&format!("berth snapshots {}", args.join(" ")), self.berth(args))
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        ok(&format!("ctr snapshots {}", args.join(" ")), self.ctr(args))
    }

    /// ls rows of berth and of ctr, which must agree.
    fn rows(&self) -> Vec<(String, String, String)> {
        let ours = rows(&self.ok(&["ls"]));
        assert_eq!(ours, rows(&self.ctr_ok(&["ls"])), "berth and ctr list the same snapshots");
        ours
    }
}

/// `snapshots ls` rows as (key, parent, kind); an empty parent leaves two fields.
fn rows(listing: &str) -> Vec<(String, String, String)> {
    let mut lines = listing.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["KEY", "PARENT", "KIND"], "{listing}");
    let mut rows: Vec<_> = lines
        .map(|line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            [key, kind] => (key.to_string(), String::new(), kind.to_string()),
            [key, parent, kind] => (key.to_string(), parent.to_string(), kind.to_string()),
            _ => panic!("unexpected ls line {line:?}"),
        })
        .collect();
    rows.sort();
    rows
}

fn row(key: &str, parent: &str, kind: &str) -> (String, String, String) {
    (key.to_string(), parent.to_string(), kind.to_string())
}

/// Lines of a table, each cut into words, without the header (for comparing with ctr's
/// tab-aligned tables, whose spacing differs).
fn words(table: &str) -> Vec<Vec<String>> {
    let mut lines: Vec<Vec<String>> =
        table.lines().skip(1).map(|line| line.split_whitespace().map(str::to_string).collect()).collect();
    lines.sort();
    lines
}

/// A mount made from one printed `mount -t TYPE SOURCE TARGET -o OPTIONS` line; unmounted (by
/// its path) when dropped, so that no failed assertion leaves it behind.
struct Mounted {
    target: PathBuf,
}

impl Mounted {
    fn run(line: &str) -> Mounted {
        assert!(!line.contains('\''), "temp paths need no quoting: {line}");
        let args: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((args[0], args[1]), ("mount", "-t"), "{line}");
        let target = PathBuf::from(args[4]);
        let status = Command::new("mount").args(&args[1..]).status().expect("run mount");
        assert!(status.success(), "{line}");
        Mounted { target }
    }

    /// Mounts the one line `printed` holds.
    fn one(printed: &str) -> Mounted {
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), 1, "one mount: {printed}");
        Mounted::run(lines[0])
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.target).status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("umount {} failed: {status:?}", self.target.display());
        }
    }
}

fn mount_point(stack: &Stack, name: &str) -> PathBuf {
    let dir = stack.dir.path().join("mnt").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn path(dir: &Path) -> &str {
    dir.to_str().expect("temp paths are UTF-8")
}

/// Mount points under the stack's directory that are still mounted.
fn mounts_left(stack: &Stack) -> Vec<String> {
    let prefix = stack.dir.path().to_str().unwrap().to_string();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn berth_snapshots_on_overlayfs_agree_with_ctr() {
    require_tool("ctr");
    require_root();
    let stack = Stack::start().await;
    let sn = Cli { stack: &stack, snapshotter: "overlayfs" };
    let snapshots_dir = stack.root.join("snapshot/overlayfs/snapshots");

    // prepare --mounts --target prints the mount line; running it mounts the new layer.
    let target = mount_point(&stack, "base");
    let printed = sn.ok(&["prepare", "--mounts", "--target", path(&target), "base-a"]);
    assert!(printed.starts_with("mount -t bind "), "{printed}");
    assert!(printed.trim_end().ends_with(&format!(" {} -o rw,rbind", target.display())), "{printed}");
    let source = PathBuf::from(printed.split_whitespace().nth(3).unwrap());
    assert!(source.starts_with(&snapshots_dir), "{}", source.display());
    {
        let _mounted = Mounted::one(&printed);
        std::fs::create_dir(target.join("etc")).unwrap();
        std::fs::write(target.join("etc/hostname"), b"berth\n").unwrap();
        std::fs::write(target.join("big"), vec![b'x'; 1 << 20]).unwrap();
    }
    assert_eq!(std::fs::read(source.join("etc/hostname")).unwrap(), b"berth\n", "written through the mount");
    // Without --target, the line says where the mount point goes.
    let printed = sn.ok(&["prepare", "--mounts", "scratch"]);
    assert!(printed.starts_with("mount -t bind ") && printed.contains(" TARGET -o rw,rbind"), "{printed}");
    assert_eq!(sn.ok(&["prepare", "quiet"]), "", "prepare alone prints nothing, as ctr");
    let mounts = json(&sn.ok(&["prepare", "--format", "json", "as-json"]));
    assert_eq!(mounts[0]["Type"], "bind");
    assert_eq!(mounts[0]["Options"], serde_json::json!(["rw", "rbind"]));
    ok("berth rm", stack.berth(&["sn", "rm", "scratch", "quiet", "as-json"]));
    assert_eq!(sn.rows(), [row("base-a", "", "Active")]);

    assert_eq!(sn.ok(&["commit", "base", "base-a"]), "");
    let printed = sn.ok(&["prepare", "-t", "/mnt/x", "child", "base"]);
    assert!(printed.starts_with("mount -t overlay overlay /mnt/x -o "), "{printed}");
    assert!(printed.contains("upperdir=") && printed.contains("lowerdir="), "{printed}");
    let printed = sn.ok(&["view", "--mounts", "--label", "purpose=test", "v1", "base"]);
    assert!(printed.contains(" -o ro,rbind"), "a view of one layer is a read-only bind: {printed}");
    assert_eq!(sn.rows(), [row("base", "", "Committed"), row("child", "base", "Active"), row("v1", "base", "View")]);
    assert_eq!(sn.ok(&["ls", "-q"]), "base\nchild\nv1\n");
    assert_eq!(sn.ok(&["ls", "-q", "kind==committed", "parent==base,kind==view"]), "base\nv1\n");
    let listed = json(&sn.ok(&["ls", "--format", "json"]));
    assert_eq!(listed[1]["key"], "child");
    assert_eq!(listed[1]["parent"], "base");
    assert_eq!(listed[1]["kind"], "active");
    assert_eq!(listed[2]["labels"]["purpose"], "test");
    // Snapshots made by hand are garbage collection roots, as ctr makes them.
    for (i, key) in ["base", "child", "v1"].iter().enumerate() {
        assert!(listed[i]["labels"]["containerd.io/gc.root"].is_string(), "{key}: {listed}");
    }
    assert_eq!(sn.ok(&["tree"]), sn.ctr_ok(&["tree"]), "the same tree as ctr's");
    assert_eq!(sn.ok(&["tree"]), " base\n  \\_ child\n  \\_ v1\n");

    // The mount line for the child, as ctr prints it, assembles base + child.
    let target = mount_point(&stack, "child");
    let line = sn.ok(&["mounts", path(&target), "child"]);
    assert_eq!(line, sn.ctr_ok(&["mounts", path(&target), "child"]), "the same mount command as ctr's");
    {
        let _mounted = Mounted::one(&line);
        assert_eq!(std::fs::read(target.join("etc/hostname")).unwrap(), b"berth\n", "the base shows through");
        std::fs::write(target.join("in-child"), b"child data").unwrap();
    }
    let mounts = json(&sn.ok(&["mounts", "--format", "json", "/x", "child"]));
    assert_eq!(mounts[0]["Type"], "overlay");

    // Usage as ctr shows it, human and in bytes.
    assert_eq!(words(&sn.ok(&["usage"])), words(&sn.ctr_ok(&["usage"])));
    assert_eq!(words(&sn.ok(&["usage", "-b", "base", "child"])), words(&sn.ctr_ok(&["usage", "-b", "base", "child"])));
    let usage = json(&sn.ok(&["usage", "--format", "json", "base"]));
    assert!(usage[0]["size"].as_i64().unwrap() >= 1 << 20, "{usage}");
    assert_eq!(usage[0]["inodes"], 4, "root, etc, hostname, big: {usage}");
    assert!(sn.ok(&["usage", "base"]).contains(" MiB "), "human sizes by default");

    // info is ctr's record; labels set by either tool show in the other.
    let ours = json(&sn.ok(&["info", "child"]));
    let theirs = json(&sn.ctr_ok(&["info", "child"]));
    for field in ["Kind", "Name", "Parent", "Labels"] {
        assert_eq!(ours[field], theirs[field], "{field}: {ours} vs {theirs}");
    }
    assert_eq!(ours["Kind"], "Active");
    assert!(ours["Created"].as_str().unwrap().starts_with(&theirs["Created"].as_str().unwrap()[..19]));
    let labels = sn.ok(&["label", "base", "team=blue", "tier=gold"]);
    assert!(labels.starts_with("containerd.io/gc.root=") && labels.ends_with(",team=blue,tier=gold\n"), "{labels}");
    assert!(sn.ctr_ok(&["info", "base"]).contains("\"team\": \"blue\""));
    sn.ctr_ok(&["label", "base", "by=ctr"]);
    let labels = sn.ok(&["label", "base", "tier="]);
    assert!(labels.contains("by=ctr") && labels.contains("team=blue") && !labels.contains("tier"), "{labels}");
    assert_eq!(sn.ok(&["label", "base"]), labels, "no changes: the labels as they are");

    // Namespaces keep their snapshots apart.
    assert_eq!(ok("berth -n other ls", stack.berth(&["-n", "other", "snapshot", "ls", "-q"])), "");
    ok("berth -n other prepare", stack.berth(&["-n", "other", "snapshot", "prepare", "base"]));

    // Removal: not while children exist; then in order, each key printed.
    let refused = failed("rm base", sn.berth(&["rm", "base"]));
    assert!(refused.contains("refused") && refused.contains("parent"), "{refused}");
    assert_eq!(sn.ok(&["rm", "child", "v1"]), "child\nv1\n");
    assert_eq!(sn.ok(&["rm", "base"]), "base\n");
    assert!(sn.rows().is_empty());
    assert_eq!(ok("ctr -n other ls", stack.ctr(&["-n", "other", "snapshots", "ls"])).lines().count(), 2);
    assert_eq!(std::fs::read_dir(&snapshots_dir).unwrap().count(), 1, "only the other namespace's is left");
    assert!(mounts_left(&stack).is_empty(), "{:?}", mounts_left(&stack));
}

#[tokio::test]
async fn berth_snapshots_with_the_native_snapshotter() {
    require_tool("ctr");
    require_root();
    let stack = Stack::start().await;
    let sn = Cli { stack: &stack, snapshotter: "native" };
    let target = mount_point(&stack, "native");
    let printed = sn.ok(&["prepare", "--mounts", "-t", path(&target), "base-a"]);
    let base_dir = PathBuf::from(printed.split_whitespace().nth(3).unwrap());
    assert!(base_dir.starts_with(stack.root.join("snapshot/native/snapshots")), "{}", base_dir.display());
    {
        let _mounted = Mounted::one(&printed);
        std::fs::create_dir(target.join("etc")).unwrap();
        std::fs::write(target.join("etc/hostname"), b"native").unwrap();
        std::os::unix::fs::lchown(target.join("etc/hostname"), Some(42), Some(43)).unwrap();
    }
    sn.ok(&["commit", "base", "base-a"]);
    // The flag also goes after the command.
    let printed = ok(
        "prepare child",
        stack.berth(&["snapshots", "prepare", "--snapshotter", "native", "-t", path(&target), "child", "base"]),
    );
    assert!(printed.trim_end().ends_with(&format!(" {} -o rw,rbind", target.display())), "{printed}");
    {
        // The child is a full copy of its parent, owners included; writes stay in the child.
        let _mounted = Mounted::one(&printed);
        let meta = std::fs::metadata(target.join("etc/hostname")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (42, 43));
        std::fs::write(target.join("new"), b"through the mount").unwrap();
    }
    let child_dir = PathBuf::from(printed.split_whitespace().nth(3).unwrap());
    assert_eq!(std::fs::read(child_dir.join("new")).unwrap(), b"through the mount");
    assert!(!base_dir.join("new").exists());
    assert_eq!(sn.ok(&["mounts", path(&target), "child"]), sn.ctr_ok(&["mounts", path(&target), "child"]));

    sn.ok(&["view", "v", "base"]);
    assert_eq!(sn.rows(), [row("base", "", "Committed"), row("child", "base", "Active"), row("v", "base", "View")]);
    assert!(rows(&ok("berth ls", stack.berth(&["sn", "ls"]))).is_empty(), "overlayfs has its own snapshots");
    assert_eq!(sn.ok(&["tree"]), sn.ctr_ok(&["tree"]));
    assert_eq!(words(&sn.ok(&["usage", "-b"])), words(&sn.ctr_ok(&["usage", "-b"])));
    let usage = json(&sn.ok(&["usage", "--format", "json", "child"]));
    assert_eq!(usage[0]["inodes"], 4, "root, etc, hostname, new: {usage}");
    assert_eq!(json(&sn.ok(&["info", "v"]))["Kind"], "View");

    assert_eq!(sn.ok(&["rm", "child", "v", "base"]), "child\nv\nbase\n");
    assert!(sn.rows().is_empty());
    assert_eq!(std::fs::read_dir(stack.root.join("snapshot/native/snapshots")).unwrap().count(), 0);
    assert!(mounts_left(&stack).is_empty(), "{:?}", mounts_left(&stack));
}

/// One file in a tree: type, mode, owner, and content or link target.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    data: Vec<u8>,
}

/// Everything below `root`, by relative path.
fn tree_of(root: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, entries: &mut BTreeMap<PathBuf, Entry>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let file_type = meta.file_type();
            let (kind, data) = if file_type.is_dir() {
                ("dir", Vec::new())
            } else if file_type.is_symlink() {
                ("symlink", std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes())
            } else if file_type.is_file() {
                ("file", std::fs::read(&path).unwrap())
            } else if file_type.is_fifo() {
                ("fifo", Vec::new())
            } else {
                ("other", Vec::new())
            };
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            entries.insert(relative, Entry { kind, mode: meta.mode() & 0o7777, owner: (meta.uid(), meta.gid()), data });
            if file_type.is_dir() {
                walk(root, &path, entries);
            }
        }
    }
    let mut entries = BTreeMap::new();
    walk(root, root, &mut entries);
    entries
}

/// The base tree, written through a mount of the first snapshot.
fn write_base(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), b"before\n").unwrap();
    std::fs::write(root.join("gone"), b"to be deleted\n").unwrap();
    std::fs::create_dir_all(root.join("olddir/inner")).unwrap();
    std::fs::write(root.join("olddir/inner/file"), b"deep\n").unwrap();
    std::fs::write(root.join("keep"), b"unchanged\n").unwrap();
}

/// The changes, written through a mount of the child.
fn write_changes(root: &Path) {
    std::fs::write(root.join("etc/hostname"), b"after\n").unwrap();
    std::fs::remove_file(root.join("gone")).unwrap();
    std::fs::remove_dir_all(root.join("olddir")).unwrap();
    std::fs::create_dir_all(root.join("new/dir")).unwrap();
    std::fs::write(root.join("new/dir/file"), berth_e2e::random_bytes(300_000)).unwrap();
    std::os::unix::fs::lchown(root.join("new/dir/file"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(root.join("new/dir/file"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("etc/hostname", root.join("link")).unwrap();
}

/// A blob's bytes, read with `berth content get`.
fn blob_bytes(stack: &Stack, digest: &str) -> Vec<u8> {
    let output = stack.berth(&["content", "get", digest]);
    assert!(output.status.success(), "content get {digest}: {}", stderr(&output));
    output.stdout
}

/// prepare + write through the mount + commit, then diff, apply onto a fresh snapshot of the
/// parent, and compare the trees through mounts.
async fn diff_and_apply_round_trip(snapshotter: &str) {
    require_tool("ctr");
    require_root();
    let stack = Stack::start().await;
    let sn = Cli { stack: &stack, snapshotter };

    let target = mount_point(&stack, "work");
    let printed = sn.ok(&["prepare", "--mounts", "-t", path(&target), "base-a"]);
    {
        let _mounted = Mounted::one(&printed);
        write_base(&target);
    }
    sn.ok(&["commit", "base", "base-a"]);
    let printed = sn.ok(&["prepare", "--mounts", "-t", path(&target), "changed-a", "base"]);
    {
        let _mounted = Mounted::one(&printed);
        write_changes(&target);
    }

    // The diff of an active snapshot against its parent, before and after committing it.
    let active_layer = sn.ok(&["diff", "changed-a"]).trim().to_string();
    sn.ok(&["commit", "changed", "changed-a"]);
    let layer = sn.ok(&["diff", "--label", "made-by=e2e", "changed"]).trim().to_string();
    assert!(layer.starts_with("sha256:") && layer.len() == 71, "{layer}");
    assert_eq!(layer, active_layer, "the same changes give the same layer");
    assert_eq!(sn.ok(&["diff", "base", "changed"]).trim(), layer, "IDA IDB: from base to changed");
    // ctr's diff writes the same layer (and prints its bytes).
    let by_ctr = sn.ctr(&["diff", "base", "changed"]);
    assert!(by_ctr.status.success(), "ctr snapshots diff: {}", stderr(&by_ctr));
    assert_eq!(digest_of(&by_ctr.stdout), layer, "ctr's diff gives the same bytes");

    // The layer is kept (a gc root) and labelled; nothing temporary is left behind.
    let blobs = json(&ok("content ls", stack.berth(&["content", "ls", "--format", "json"])));
    let blob =
        blobs.as_array().unwrap().iter().find(|blob| blob["digest"] == layer.as_str()).expect("layer in content");
    assert_eq!(blob["labels"]["made-by"], "e2e");
    assert!(blob["labels"]["containerd.io/gc.root"].is_string(), "{blob}");
    let diff_id = blob["labels"]["containerd.io/uncompressed"].as_str().expect("uncompressed label").to_string();
    assert_eq!(sn.ok(&["ls", "-q"]), "base\nchanged\n", "the temporary views are gone");
    assert_eq!(ok("leases ls", stack.berth(&["leases", "ls", "-q"])), "", "the temporary lease is gone");
    assert!(blob_bytes(&stack, &layer).starts_with(&[0x1f, 0x8b]), "a gzip layer by default");

    // Apply onto a fresh snapshot of the parent: the diffID is the uncompressed digest.
    sn.ok(&["prepare", "fresh", "base"]);
    assert_eq!(sn.ok(&["apply", &layer, "fresh"]).trim(), diff_id);
    let rebuilt_view = mount_point(&stack, "rebuilt");
    let changed_view = mount_point(&stack, "changed");
    {
        let _rebuilt = Mounted::one(&sn.ok(&["mounts", path(&rebuilt_view), "fresh"]));
        let _changed = Mounted::one(&sn.ok(&["view", "-t", path(&changed_view), "changed-view", "changed"]));
        let (rebuilt, changed) = (tree_of(&rebuilt_view), tree_of(&changed_view));
        assert_eq!(rebuilt, changed, "apply(diff(base, changed)) on base gives changed");
        assert!(changed.contains_key(Path::new("new/dir/file")) && !changed.contains_key(Path::new("gone")));
        assert!(!changed.contains_key(Path::new("olddir")), "{:?}", changed.keys());
    }

    // Other media types: a plain tar, and zstd found from its magic number on apply.
    let tar = sn.ok(&["diff", "--media-type", TAR, "--ref", "e2e-tar", "changed"]).trim().to_string();
    assert_eq!(tar, diff_id, "an uncompressed layer is its own diffID");
    let zstd = sn.ok(&["diff", "--media-type", "zstd", "changed"]).trim().to_string();
    let blobs = json(&ok("content ls", stack.berth(&["content", "ls", "--format", "json"])));
    assert!(blobs.as_array().unwrap().iter().any(|blob| blob["digest"] == zstd.as_str()), "{blobs}");
    assert!(blob_bytes(&stack, &zstd).starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "--media-type zstd: a zstd layer");
    sn.ok(&["prepare", "fresh-zstd", "base"]);
    assert_eq!(sn.ok(&["apply", &zstd, "fresh-zstd"]).trim(), diff_id);
    sn.ok(&["prepare", "fresh-tar", "base"]);
    assert_eq!(sn.ok(&["apply", "--media-type", TAR, &tar, "fresh-tar"]).trim(), diff_id);
    {
        let _rebuilt = Mounted::one(&sn.ok(&["mounts", path(&rebuilt_view), "fresh-zstd"]));
        let _changed = Mounted::one(&sn.ok(&["mounts", path(&changed_view), "changed-view"]));
        assert_eq!(tree_of(&rebuilt_view), tree_of(&changed_view));
    }

    // Apply only goes onto active snapshots, and only with a blob that exists.
    let err = failed("apply onto committed", sn.berth(&["apply", &layer, "base"]));
    assert!(err.contains("snapshot base is committed, not active") && err.contains("snapshots prepare"), "{err}");
    let missing = digest_of(b"no such layer");
    let err = failed("apply missing blob", sn.berth(&["apply", &missing, "fresh"]));
    assert!(err.contains(&format!("content {missing} not found")), "{err}");
    let err = failed("diff of nothing", sn.berth(&["diff", "nothing"]));
    assert!(err.contains("\"nothing\" does not exist") && err.contains("snapshots"), "{err}");

    sn.ok(&["rm", "fresh", "fresh-zstd", "fresh-tar", "changed-view", "changed", "base"]);
    assert!(sn.rows().is_empty());
    assert!(mounts_left(&stack).is_empty(), "{:?}", mounts_left(&stack));
}

#[tokio::test]
async fn berth_snapshots_diff_then_apply_rebuilds_the_snapshot_on_overlayfs() {
    diff_and_apply_round_trip("overlayfs").await;
}

#[tokio::test]
async fn berth_snapshots_diff_then_apply_rebuilds_the_snapshot_on_native() {
    diff_and_apply_round_trip("native").await;
}

#[tokio::test]
async fn berth_snapshots_errors_say_what_to_do() {
    let stack = Stack::start().await;
    let sn = Cli { stack: &stack, snapshotter: "overlayfs" };
    let err = failed("unknown snapshotter", stack.berth(&["sn", "--snapshotter", "zfs", "ls"]));
    assert!(err.contains("snapshotter not loaded: zfs") && err.contains("--snapshotter"), "{err}");
    sn.ok(&["prepare", "a"]);
    let err = failed("prepare twice", sn.berth(&["prepare", "a"]));
    assert!(err.contains("already exists") && err.contains("`berth -n default snapshots rm a`"), "{err}");
    let err = failed("missing parent", sn.berth(&["prepare", "b", "missing"]));
    assert!(err.contains("\"missing\" does not exist") && err.contains("`berth -n default snapshots ls`"), "{err}");
    let err = failed("active parent", sn.berth(&["prepare", "b", "a"]));
    assert!(err.contains("not a committed snapshot") && err.contains("commit it first"), "{err}");
    let err = failed("commit nothing", sn.berth(&["commit", "c", "nothing"]));
    assert!(err.contains("\"nothing\" does not exist"), "{err}");
    sn.ok(&["prepare", "c-a"]);
    sn.ok(&["commit", "c", "c-a"]);
    let err = failed("mounts of committed", sn.berth(&["mounts", "/mnt/c", "c"]));
    assert!(
        err.contains("snapshot c is committed") && err.contains("snapshots view --target /mnt/c VIEW-KEY c"),
        "{err}"
    );
    let err = failed("native: not found", stack.berth(&["sn", "--snapshotter", "native", "info", "a"]));
    assert!(err.contains("snapshots --snapshotter native ls"), "the hint keeps the snapshotter: {err}");
    let err = failed("rm nothing", sn.berth(&["rm", "nothing", "a"]));
    assert!(err.contains("1 of 2 snapshots could not be removed"), "{err}");
    let err = failed("bad filter", sn.berth(&["ls", "kind=="]));
    assert!(err.contains("filters look like"), "{err}");
    let err = failed("bad digest", sn.berth(&["apply", "sha256:abc", "a"]));
    assert!(err.contains("invalid digest"), "{err}");
}
