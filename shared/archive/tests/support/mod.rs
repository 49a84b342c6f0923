//! Helpers for the integration tests: tree snapshots, fixtures, crafted layers, mounts.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Everything about one entry that a layer carries (mtime in whole seconds, as layers are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Option<Vec<u8>>,
    pub link: Option<PathBuf>,
    pub rdev: Option<u64>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// A whole tree: every entry below the root (the root itself excluded: layers do not carry
/// it) and which paths share an inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    pub entries: BTreeMap<PathBuf, Info>,
    pub hardlinks: BTreeSet<Vec<PathBuf>>,
}

pub fn snapshot(root: &Path) -> Tree {
    let mut entries = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    walk(root, Path::new(""), &mut entries, &mut inodes);
    let hardlinks = inodes
        .into_values()
        .filter(|paths| paths.len() > 1)
        .map(|mut paths| {
            paths.sort();
            paths
        })
        .collect();
    Tree { entries, hardlinks }
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Info>, inodes: &mut HashMap<(u64, u64), Vec<PathBuf>>) {
    let mut names: Vec<_> = fs::read_dir(root.join(rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let full = root.join(&rel);
        let md = fs::symlink_metadata(&full).unwrap();
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        if ft.is_file() && md.nlink() > 1 {
            inodes.entry((md.dev(), md.ino())).or_default().push(rel.clone());
        }
        let info = Info {
            kind,
            mode: md.permissions().mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            content: ft.is_file().then(|| fs::read(&full).unwrap()),
            link: ft.is_symlink().then(|| fs::read_link(&full).unwrap()),
            rdev: (ft.is_char_device() || ft.is_block_device()).then(|| md.rdev()),
            xattrs: xattrs(&full),
        };
        out.insert(rel.clone(), info);
        if ft.is_dir() {
            walk(root, &rel, out, inodes);
        }
    }
}

/// lgetxattr of everything but overlayfs' own and SELinux labels.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: c is NUL-terminated, buf is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 0, "llistxattr {}: {}", path.display(), std::io::Error::last_os_error());
    let mut out = BTreeMap::new();
    for name in buf[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let key = String::from_utf8(name.to_vec()).unwrap();
        if key.starts_with("trusted.overlay.") || key == "security.selinux" {
            continue;
        }
        let k = CString::new(name).unwrap();
        let mut value = vec![0u8; 65536];
        // SAFETY: as above.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), k.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        assert!(m >= 0, "lgetxattr {} {key}", path.display());
        value.truncate(m as usize);
        out.insert(key, value);
    }
    out
}

pub fn raw_xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let k = CString::new(key).unwrap();
    let mut value = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings, writable buffer.
    let m = unsafe { libc::lgetxattr(c.as_ptr(), k.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    (m >= 0).then(|| {
        value.truncate(m as usize);
        value
    })
}

pub fn set_xattr(path: &Path, key: &str, value: &[u8]) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let k = CString::new(key).unwrap();
    // SAFETY: NUL-terminated strings and a valid slice.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), k.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "lsetxattr {} {key}: {}", path.display(), std::io::Error::last_os_error());
}

pub fn remove_xattr(path: &Path, key: &str) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let k = CString::new(key).unwrap();
    // SAFETY: NUL-terminated strings.
    let r = unsafe { libc::lremovexattr(c.as_ptr(), k.as_ptr()) };
    assert_eq!(r, 0, "lremovexattr {} {key}", path.display());
}

/// Sets a path's mtime (and atime) without following a symlink.
pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = [libc::timespec { tv_sec: sec, tv_nsec: nsec }; 2];
    // SAFETY: c is NUL-terminated and ts holds two timespecs.
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

pub fn mknod(path: &Path, kind: libc::mode_t, perm: libc::mode_t, major: u32, minor: u32) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is NUL-terminated.
    let r = unsafe { libc::mknod(c.as_ptr(), kind | perm, libc::makedev(major, minor)) };
    assert_eq!(r, 0, "mknod {}: {}", path.display(), std::io::Error::last_os_error());
    fs::set_permissions(path, fs::Permissions::from_mode(perm)).unwrap();
}

pub fn write(path: &Path, content: &[u8], mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cp -a`: owners, modes, times, xattrs, hard links, devices.
pub fn copy_tree(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg("--preserve=all").arg(from).arg(to));
}

/// An overlayfs mount, unmounted on drop.
pub struct Overlay {
    pub merged: PathBuf,
}

impl Overlay {
    pub fn mount(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Overlay {
        fs::create_dir_all(work).unwrap();
        fs::create_dir_all(merged).unwrap();
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(merged));
        Overlay { merged: merged.to_owned() }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.merged).status();
    }
}

/// A crafted layer, built with the `tar` crate so that any name, link or type can be written.
#[derive(Default)]
pub struct Layer {
    builder: Option<tar::Builder<Vec<u8>>>,
}

impl Layer {
    pub fn new() -> Layer {
        Layer { builder: Some(tar::Builder::new(Vec::new())) }
    }

    fn header(name: &str, kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        // Raw name bytes: `set_path` would refuse the `..` the escape tests need.
        let field = &mut h.as_old_mut().name;
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        h
    }

    fn append(&mut self, mut h: tar::Header, data: &[u8], pax: &[(&str, &[u8])]) -> &mut Self {
        let b = self.builder.as_mut().unwrap();
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().copied()).unwrap();
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.append(Self::header(name, tar::EntryType::Regular, 0o644), data, &[])
    }

    pub fn file_with(&mut self, name: &str, data: &[u8], mode: u32, pax: &[(&str, &[u8])]) -> &mut Self {
        self.append(Self::header(name, tar::EntryType::Regular, mode), data, pax)
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.append(Self::header(name, tar::EntryType::Directory, 0o755), b"", &[])
    }

    pub fn dir_with(&mut self, name: &str, mode: u32, pax: &[(&str, &[u8])]) -> &mut Self {
        self.append(Self::header(name, tar::EntryType::Directory, mode), b"", pax)
    }

    fn with_link(name: &str, kind: tar::EntryType, target: &str, mode: u32) -> tar::Header {
        let mut h = Self::header(name, kind, mode);
        let field = &mut h.as_old_mut().linkname;
        field.fill(0);
        field[..target.len()].copy_from_slice(target.as_bytes());
        h
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.append(Self::with_link(name, tar::EntryType::Symlink, target, 0o777), b"", &[])
    }

    pub fn hardlink(&mut self, name: &str, target: &str, mode: u32) -> &mut Self {
        self.append(Self::with_link(name, tar::EntryType::Link, target, mode), b"", &[])
    }

    /// The tar, with its end-of-archive blocks.
    pub fn bytes(&mut self) -> Vec<u8> {
        self.builder.take().unwrap().into_inner().unwrap()
    }
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}
