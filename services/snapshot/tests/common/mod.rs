//! Helpers for the snapshotter tests: a snapshotter on temp dirs, filesystem changes to apply
//! to mounted snapshots, a directory comparison, and mounts that are always undone.

#![allow(dead_code)] // each test file uses a different part

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_snapshot::disk::xattr;
use berth_snapshot::driver::{Driver, Native, Overlay};
use berth_snapshot::mount::{mount_all, unmount_all};
use berth_snapshot::{Mount, Snapshotter};
use berth_store::Store;

pub const NS: &str = "testsuite";

/// Which snapshotter a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Overlay,
    Native,
}

impl Flavor {
    pub fn driver(self) -> Arc<dyn Driver> {
        match self {
            Flavor::Overlay => Arc::new(Overlay::new()),
            Flavor::Native => Arc::new(Native),
        }
    }
}

/// The labels containerd's test suite gives every snapshot.
pub fn gc_root() -> HashMap<String, String> {
    [("containerd.io/gc.root".to_string(), "2024-01-01T00:00:00Z".to_string())].into()
}

/// A snapshotter on a temp root, with a `work` dir for mount points and check trees.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub work: PathBuf,
    pub flavor: Flavor,
    pub store: Arc<dyn Store>,
    pub sn: Snapshotter,
}

pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests mount filesystems: run them as root");
}

impl Harness {
    pub async fn new(flavor: Flavor) -> Harness {
        let dir = tempfile::Builder::new().prefix("berth-snapshot-test-").tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(berth_store::Embedded::open(&dir.path().join("snapshot.redb")).unwrap());
        Self::with_store(flavor, dir, store).await
    }

    pub async fn with_store(flavor: Flavor, dir: tempfile::TempDir, store: Arc<dyn Store>) -> Harness {
        require_root();
        let root = dir.path().join("root");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        let sn = Snapshotter::open(&root, flavor.driver(), Arc::clone(&store)).await.unwrap();
        Harness { dir, root, work, flavor, store, sn }
    }

    /// Opens the snapshotter again on the same root and records (a restart).
    pub async fn reopen(&mut self) {
        self.sn = Snapshotter::open(&self.root, self.flavor.driver(), Arc::clone(&self.store)).await.unwrap();
    }

    /// A fresh empty directory under `work`.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        tempfile::Builder::new().prefix(name).tempdir_in(&self.work).unwrap().keep()
    }

    /// Prepares `key` on `parent`, applies `changes` through its mounts, commits it as `name`.
    pub async fn layer(&self, name: &str, parent: &str, changes: &[Change]) {
        let key = format!("{name}-active");
        let mounts = self.sn.prepare(NS, &key, parent, gc_root()).await.unwrap();
        {
            let mounted = Mounted::new(&mounts, &self.fresh_dir("apply"));
            apply(&mounted.target, changes);
        }
        self.sn.commit(NS, name, &key, gc_root()).await.unwrap();
    }

    /// Checks that a view of `name` looks exactly like `expected`.
    pub async fn check_view(&self, name: &str, expected: &Path) {
        let view = format!("{name}-view");
        let mounts = self.sn.view(NS, &view, name, gc_root()).await.unwrap();
        {
            let mounted = Mounted::new(&mounts, &self.fresh_dir("check"));
            if let Err(diff) = compare_dirs(expected, &mounted.target) {
                panic!("{:?}: view of {name} differs from the expected tree: {diff}", self.flavor);
            }
        }
        self.sn.remove(NS, &view).await.unwrap();
    }

    /// containerd's checkSnapshots: a chain of layers, one per change set, each checked in a
    /// view against the same changes applied to one plain directory.
    pub async fn check_chain(&self, layers: &[&[Change]]) {
        let flat = self.fresh_dir("flat");
        let mut parent = String::new();
        for (i, changes) in layers.iter().enumerate() {
            let name = format!("layer-{i}");
            self.layer(&name, &parent, changes).await;
            apply(&flat, changes);
            self.check_view(&name, &flat).await;
            parent = name;
        }
    }
}

/// Mounts that are unmounted (and checked to be) when dropped, even when a test panics.
pub struct Mounted {
    pub target: PathBuf,
}

impl Mounted {
    pub fn new(mounts: &[Mount], target: &Path) -> Mounted {
        std::fs::create_dir_all(target).unwrap();
        mount_all(mounts, target).unwrap_or_else(|e| panic!("mount {mounts:?}: {e}"));
        Mounted { target: target.to_path_buf() }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = unmount_all(&self.target) {
            // Detach it anyway, so that removing the temp dir cannot reach into the snapshot.
            let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
            if !std::thread::panicking() {
                panic!("unmount {}: {e}", self.target.display());
            }
        }
    }
}

/// One change to a filesystem tree (containerd's fstest appliers).
#[derive(Debug, Clone)]
pub enum Change {
    File(&'static str, &'static [u8], u32),
    Dir(&'static str, u32),
    RemoveAll(&'static str),
    Chown(&'static str, u32, u32),
    Link(&'static str, &'static str),
    Symlink(&'static str, &'static str),
    Rename(&'static str, &'static str),
    Xattr(&'static str, &'static str, &'static [u8]),
    /// A file with owned content (for generated layers).
    OwnedFile(String, Vec<u8>, u32),
    OwnedRemoveAll(String),
    OwnedDir(String, u32),
}

fn at(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

pub fn apply(root: &Path, changes: &[Change]) {
    for change in changes {
        apply_one(root, change).unwrap_or_else(|e| panic!("apply {change:?} in {}: {e}", root.display()));
    }
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn make_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn remove_all(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    }
}

fn apply_one(root: &Path, change: &Change) -> std::io::Result<()> {
    match change {
        Change::File(path, content, mode) => write_file(&at(root, path), content, *mode),
        Change::OwnedFile(path, content, mode) => write_file(&at(root, path), content, *mode),
        Change::Dir(path, mode) => make_dir(&at(root, path), *mode),
        Change::OwnedDir(path, mode) => make_dir(&at(root, path), *mode),
        Change::RemoveAll(path) => remove_all(&at(root, path)),
        Change::OwnedRemoveAll(path) => remove_all(&at(root, path)),
        Change::Chown(path, uid, gid) => std::os::unix::fs::lchown(at(root, path), Some(*uid), Some(*gid)),
        Change::Link(old, new) => std::fs::hard_link(at(root, old), at(root, new)),
        Change::Symlink(target, link) => std::os::unix::fs::symlink(target, at(root, link)),
        Change::Rename(old, new) => std::fs::rename(at(root, old), at(root, new)),
        Change::Xattr(path, name, value) => xattr::set(&at(root, path), OsStr::new(name), value),
    }
}

/// What a comparison looks at for one path: type, permissions, owner, content or link target,
/// device number and user.* extended attributes (not times: copy-up may touch them).
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    content: Vec<u8>,
    rdev: u64,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

fn entries(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let file_type = meta.file_type();
            let (kind, content) = if file_type.is_dir() {
                pending.push(path.clone());
                ("dir", Vec::new())
            } else if file_type.is_symlink() {
                ("symlink", std::fs::read_link(&path).unwrap().as_os_str().as_bytes().to_vec())
            } else if file_type.is_file() {
                ("file", std::fs::read(&path).unwrap())
            } else {
                ("special", Vec::new())
            };
            let mut xattrs = BTreeMap::new();
            if !file_type.is_symlink() {
                for name in xattr::list(&path).unwrap_or_default() {
                    if name.as_bytes().starts_with(b"user.") {
                        xattrs.insert(name.as_bytes().to_vec(), xattr::get(&path, &name).unwrap());
                    }
                }
            }
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            found.insert(
                relative,
                Entry {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    content,
                    rdev: meta.rdev(),
                    xattrs,
                },
            );
        }
    }
    found
}

/// `Err` describes the first differences between the trees below `expected` and `actual`
/// (their roots themselves are not compared).
pub fn compare_dirs(expected: &Path, actual: &Path) -> Result<(), String> {
    let (want, got) = (entries(expected), entries(actual));
    let mut problems = Vec::new();
    for (path, entry) in &want {
        match got.get(path) {
            None => problems.push(format!("{} is missing", path.display())),
            Some(found) if found != entry => {
                problems.push(format!("{}: expected {entry:?}, found {found:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        problems.push(format!("{} should not be there", path.display()));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}
