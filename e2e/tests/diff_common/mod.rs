//! Shared by the diff_* and unpack_* tests: snapshots, Apply and Diff through the gateway with
//! containerd's client crate, mounts that are always undone, trees built and compared
//! (owners, modes, content, links, devices, user xattrs, file mtimes), and hand-made layers.

#![allow(dead_code)] // each test file uses a different part

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_e2e::Stack;
use berth_e2e::content::in_namespace;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::services::v1::{ApplyRequest, CreateRequest, DiffRequest, Info, UpdateRequest};
pub use containerd_client::types::{Descriptor, Mount};
use sha2::Digest;
use tonic::transport::Channel;

pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// One snapshotter in one namespace, with the diff service next to it, through the gateway.
/// Everything it makes is held by one lease (as containerd clients work), so that garbage
/// collection, which other calls trigger, cannot take a snapshot or a layer a test still uses.
pub struct Snapshots {
    snapshots: SnapshotsClient<Channel>,
    diff: DiffClient<Channel>,
    pub snapshotter: String,
    pub ns: String,
    pub lease: String,
}

impl Snapshots {
    pub async fn new(stack: &Stack, snapshotter: &str, ns: &str) -> Snapshots {
        let channel = stack.containerd_channel().await;
        static LEASES: AtomicU64 = AtomicU64::new(0);
        let lease = format!("e2e-{snapshotter}-{}-{}", std::process::id(), LEASES.fetch_add(1, Ordering::Relaxed));
        let create = CreateRequest { id: lease.clone(), labels: HashMap::new() };
        LeasesClient::new(channel.clone()).create(in_namespace(create, ns)).await.expect("create lease");
        Snapshots {
            snapshots: SnapshotsClient::new(channel.clone()),
            diff: DiffClient::new(channel),
            snapshotter: snapshotter.to_string(),
            ns: ns.to_string(),
            lease,
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = in_namespace(message, &self.ns);
        request.metadata_mut().insert("containerd-lease", self.lease.parse().expect("lease id is ASCII"));
        request
    }

    pub async fn prepare(&mut self, key: &str, parent: &str) -> Vec<Mount> {
        let request = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        let response = self.snapshots.prepare(self.request(request)).await;
        response.unwrap_or_else(|e| panic!("prepare {key} on {parent:?}: {e}")).into_inner().mounts
    }

    pub async fn view(&mut self, key: &str, parent: &str) -> Vec<Mount> {
        let request = ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        let response = self.snapshots.view(self.request(request)).await;
        response.unwrap_or_else(|e| panic!("view {key} of {parent}: {e}")).into_inner().mounts
    }

    pub async fn mounts(&mut self, key: &str) -> Vec<Mount> {
        let request = MountsRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
        let response = self.snapshots.mounts(self.request(request)).await;
        response.unwrap_or_else(|e| panic!("mounts of {key}: {e}")).into_inner().mounts
    }

    pub async fn commit(&mut self, name: &str, key: &str) {
        let request = CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.into(),
            key: key.into(),
            labels: HashMap::new(),
        };
        self.snapshots.commit(self.request(request)).await.unwrap_or_else(|e| panic!("commit {key}: {e}"));
    }

    pub async fn remove(&mut self, key: &str) -> Result<(), tonic::Status> {
        let request = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.into() };
        self.snapshots.remove(self.request(request)).await.map(|_| ())
    }

    /// Diff.Apply of `layer` onto `mounts`.
    pub async fn apply(&mut self, layer: &Descriptor, mounts: Vec<Mount>) -> Result<Descriptor, tonic::Status> {
        let request = ApplyRequest { diff: Some(layer.clone()), mounts, ..Default::default() };
        let response = self.diff.apply(self.request(request)).await?;
        Ok(response.into_inner().applied.expect("applied descriptor"))
    }

    /// Diff.Diff from `left` to `right` as `media_type` ("" for containerd's default).
    pub async fn diff(
        &mut self,
        left: Vec<Mount>,
        right: Vec<Mount>,
        media_type: &str,
        labels: HashMap<String, String>,
    ) -> Result<Descriptor, tonic::Status> {
        let request = DiffRequest {
            left,
            right,
            media_type: media_type.into(),
            r#ref: String::new(),
            labels,
            ..Default::default()
        };
        let response = self.diff.diff(self.request(request)).await?;
        Ok(response.into_inner().diff.expect("diff descriptor"))
    }

    /// Mounts a fresh view of `name` under `dir` (the view is removed when done via [`Viewed::done`]).
    pub async fn viewed(&mut self, name: &str, dir: &Path) -> Viewed {
        let key = format!("{name}-check-view");
        let mounts = self.view(&key, name).await;
        Viewed { key, mounted: Some(Mounted::new(&mounts, &dir.join(format!("{name}-view")))) }
    }
}

/// A mounted view; unmount and remove it with [`Viewed::done`].
pub struct Viewed {
    key: String,
    mounted: Option<Mounted>,
}

impl Viewed {
    pub fn path(&self) -> &Path {
        &self.mounted.as_ref().expect("mounted").target
    }

    pub async fn done(mut self, snapshots: &mut Snapshots) {
        self.mounted.take();
        snapshots.remove(&self.key).await.unwrap_or_else(|e| panic!("remove view {}: {e}", self.key));
    }
}

/// Mounts (with mount(8), as a user would) that are unmounted when dropped, even on panic.
pub struct Mounted {
    pub target: PathBuf,
    count: usize,
}

impl Mounted {
    pub fn new(mounts: &[Mount], target: &Path) -> Mounted {
        std::fs::create_dir_all(target).unwrap();
        let mut mounted = Mounted { target: target.to_path_buf(), count: 0 };
        for mount in mounts {
            let mut command = Command::new("mount");
            command.arg("-t").arg(&mount.r#type).arg(&mount.source).arg(target);
            if !mount.options.is_empty() {
                command.arg("-o").arg(mount.options.join(","));
            }
            let output = command.output().expect("run mount");
            assert!(output.status.success(), "mount {mount:?}: {}", String::from_utf8_lossy(&output.stderr));
            mounted.count += 1;
        }
        mounted
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for _ in 0..self.count {
            let ok = Command::new("umount").arg(&self.target).status().is_ok_and(|s| s.success());
            if !ok {
                // Detach it anyway so that removing the test dir cannot reach into a snapshot.
                let _ = Command::new("umount").arg("-l").arg(&self.target).status();
            }
        }
    }
}

// ---- building trees ----

pub fn write(path: &Path, data: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mkdir(path: &Path, mode: u32) {
    std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("path without NUL")
}

pub fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let (path_c, name_c) = (c_path(path), CString::new(name).unwrap());
    // SAFETY: both strings are NUL-terminated and live across the call; value's pointer and
    // length describe one slice.
    let rc = unsafe { libc::lsetxattr(path_c.as_ptr(), name_c.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(rc, 0, "setxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}

pub fn mknod(path: &Path, kind: libc::mode_t, mode: u32, major: u32, minor: u32) {
    let path_c = c_path(path);
    // SAFETY: the path is NUL-terminated and outlives the call.
    let rc = unsafe { libc::mknod(path_c.as_ptr(), kind | mode, libc::makedev(major, minor)) };
    assert_eq!(rc, 0, "mknod {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Sets the mtime of `path` itself (not a symlink's target).
pub fn set_mtime(path: &Path, seconds: i64) {
    let path_c = c_path(path);
    let times =
        [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, libc::timespec { tv_sec: seconds, tv_nsec: 0 }];
    // SAFETY: the path is NUL-terminated; `times` holds the two timespecs utimensat reads.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, path_c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(rc, 0, "utimensat {}: {}", path.display(), std::io::Error::last_os_error());
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let path_c = c_path(path);
    let mut names = vec![0u8; 4096];
    // SAFETY: the path is NUL-terminated; the pointer and length describe `names`.
    let len = unsafe { libc::llistxattr(path_c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    let mut found = BTreeMap::new();
    if len <= 0 {
        return found;
    }
    names.truncate(len as usize);
    for name in names.split(|b| *b == 0).filter(|n| n.starts_with(b"user.")) {
        let name_c = CString::new(name).unwrap();
        let mut value = vec![0u8; 4096];
        // SAFETY: both strings are NUL-terminated; the pointer and length describe `value`.
        let n = unsafe { libc::lgetxattr(path_c.as_ptr(), name_c.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        assert!(n >= 0, "getxattr on {}", path.display());
        value.truncate(n as usize);
        found.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    found
}

// ---- comparing trees ----

/// What is compared for one path. Directory times are not (applying into a directory
/// changes it), file and symlink mtimes are, in whole seconds (what layers carry).
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// sha256 of a file's content, a symlink's target.
    pub content: String,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    pub mtime: Option<i64>,
    /// For a hard-linked file: the first path (in sorted order) of its inode.
    pub linked_to: Option<PathBuf>,
}

/// Every path below `root` (not the root itself).
pub fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut found = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut paths = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                pending.push(path.clone());
            }
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let kind = meta.file_type();
        let relative = path.strip_prefix(root).unwrap().to_path_buf();
        let (name, content, mtime) = if kind.is_dir() {
            ("dir", String::new(), None)
        } else if kind.is_symlink() {
            ("symlink", std::fs::read_link(&path).unwrap().display().to_string(), Some(meta.mtime()))
        } else if kind.is_file() {
            let data = std::fs::read(&path).unwrap();
            ("file", hex::encode(sha2::Sha256::digest(&data)), Some(meta.mtime()))
        } else {
            ("special", String::new(), Some(meta.mtime()))
        };
        let linked_to = (kind.is_file() && meta.nlink() > 1)
            .then(|| inodes.entry((meta.dev(), meta.ino())).or_insert_with(|| relative.clone()).clone());
        found.insert(
            relative,
            Node {
                kind: name,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                content,
                rdev: if kind.is_char_device() || kind.is_block_device() { meta.rdev() } else { 0 },
                xattrs: if kind.is_symlink() { BTreeMap::new() } else { xattrs(&path) },
                mtime,
                linked_to,
            },
        );
    }
    found
}

/// Panics with every difference between the trees below `expected` and `actual`.
pub fn assert_same_tree(expected: &Path, actual: &Path, what: &str) {
    compare_trees(expected, actual, what, true);
}

/// [`assert_same_tree`] without looking at which files are hard links of each other.
pub fn assert_same_tree_but_links(expected: &Path, actual: &Path, what: &str) {
    compare_trees(expected, actual, what, false);
}

fn compare_trees(expected: &Path, actual: &Path, what: &str, links: bool) {
    let (mut want, mut got) = (tree(expected), tree(actual));
    if !links {
        want.values_mut().chain(got.values_mut()).for_each(|node| node.linked_to = None);
    }
    let mut problems = Vec::new();
    for (path, node) in &want {
        match got.get(path) {
            None => problems.push(format!("{} is missing", path.display())),
            Some(found) if found != node => {
                problems.push(format!("{}:\n  expected {node:?}\n  found    {found:?}", path.display()))
            }
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        problems.push(format!("{} should not be there", path.display()));
    }
    assert!(problems.is_empty(), "{what}: {} differences:\n{}", problems.len(), problems.join("\n"));
    assert!(!want.is_empty(), "{what}: compared two empty trees");
}

// ---- hand-made layers ----

/// One entry of a hand-made tar.
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}", width = field.len() - 1);
    field[..text.len()].copy_from_slice(text.as_bytes());
}

/// A plain ustar stream of `entries` (names taken as given, so they may be hostile).
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let (name, kind, link, data): (&str, u8, &str, &[u8]) = match entry {
            Entry::File(name, data) => (name, b'0', "", data),
            Entry::Dir(name) => (name, b'5', "", b""),
            Entry::Symlink(name, target) => (name, b'2', target, b""),
            Entry::HardLink(name, target) => (name, b'1', target, b""),
        };
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], if kind == b'5' { 0o755 } else { 0o644 });
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], data.len() as u64);
        octal(&mut header[136..148], 1_704_067_200);
        header[156] = kind;
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].fill(b' ');
        let sum: u64 = header.iter().map(|b| u64::from(*b)).sum();
        octal(&mut header[148..155], sum);
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// `data` gzip-compressed with the system's gzip.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run gzip");
    let mut stdin = child.stdin.take().expect("gzip stdin");
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output().expect("gzip output");
    feeder.join().expect("gzip feeder").expect("feed gzip");
    assert!(output.status.success());
    output.stdout
}

/// Ingests `data` into content and labels it `containerd.io/gc.root`, so that no garbage
/// collection takes it while the test uses it. A blob content has already is fine (containerd clients take AlreadyExists as success).
pub async fn ingest_held(content: &mut ContentClient<Channel>, ns: &str, reference: &str, data: &[u8]) -> String {
    use berth_e2e::content::{Writer, commit, stat, write};
    let digest = berth_e2e::digest_of(data);
    let (mut writer, _) = Writer::open(content, ns, stat(reference)).await.expect("open write");
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        writer.send(write(reference, (i << 20) as i64, chunk)).await.expect("write");
    }
    match writer.send(commit(reference, data.len() as i64, &digest)).await {
        Ok(done) => assert_eq!(done.digest, digest),
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => panic!("commit {reference}: {status}"),
    }
    let info = Info {
        digest: digest.clone(),
        labels: HashMap::from([("containerd.io/gc.root".to_string(), "e2e".to_string())]),
        ..Default::default()
    };
    let mask = prost_types::FieldMask { paths: vec!["labels.containerd.io/gc.root".to_string()] };
    let update = UpdateRequest { info: Some(info), update_mask: Some(mask) };
    content.update(in_namespace(update, ns)).await.expect("label gc.root");
    digest
}

/// A descriptor of `blob` as `media_type`.
pub fn descriptor(media_type: &str, blob: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_string(),
        digest: berth_e2e::digest_of(blob),
        size: blob.len() as i64,
        annotations: HashMap::new(),
    }
}

/// The chain IDs of a list of diffIDs (OCI image spec).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => berth_e2e::digest_of(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// Whether anything under `dir` (the snapshot service's temp mount points) is left.
pub fn no_temp_mounts(stack: &Stack) -> bool {
    let dir = stack.root.join("snapshot/tmpmounts");
    std::fs::read_dir(&dir).map(|entries| entries.count() == 0).unwrap_or(true)
}
