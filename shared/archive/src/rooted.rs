//! File-descriptor based filesystem access confined to a root directory.
//!
//! Paths are resolved with `openat2(RESOLVE_IN_ROOT)` (symlinks resolve as if the root were
//! `/`, `..` stops at the root) or `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; the last component
//! of a path is then only ever used with `*at` calls that do not follow it (`O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`, `O_PATH`). Metadata changes go through a descriptor of the inode
//! itself: the real descriptor, or `/proc/self/fd/N` of an `O_PATH` descriptor for symlinks,
//! devices and fifos (a magic link that lands on exactly that inode).

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use crate::path;

/// How many times an `openat2` that raced with a rename (EAGAIN) is retried.
const OPENAT2_RETRIES: usize = 32;

/// A directory that every path is resolved inside.
pub(crate) struct Root {
    dir: Dir,
}

impl Root {
    /// Opens `path` (trusted: given by the caller, symlinks in it are followed).
    pub(crate) fn open(path: &Path) -> io::Result<Root> {
        let fd = nix::fcntl::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(Root { dir: Dir { fd } })
    }

    pub(crate) fn dir(&self) -> &Dir {
        &self.dir
    }

    /// Opens the directory at `parts` inside the root; symlinks on the way resolve as if the
    /// root were `/`. Fails with ENOENT / ENOTDIR like `open` would.
    pub(crate) fn resolve_dir(&self, parts: &[OsString]) -> io::Result<Dir> {
        let resolve = ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV;
        self.open_dir_with(parts, resolve)
    }

    /// Opens the directory at `parts` beneath the root without following any symlink.
    pub(crate) fn open_dir_beneath(&self, parts: &[OsString]) -> io::Result<Dir> {
        let resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV;
        self.open_dir_with(parts, resolve)
    }

    fn open_dir_with(&self, parts: &[OsString], resolve: ResolveFlag) -> io::Result<Dir> {
        let rel = if parts.is_empty() { b".".to_vec() } else { path::join(parts) };
        let how = OpenHow::new().flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).resolve(resolve);
        let rel = OsStr::from_bytes(&rel);
        let mut tries = 0;
        loop {
            match nix::fcntl::openat2(self.dir.fd.as_fd(), rel, how) {
                Ok(fd) => return Ok(Dir { fd }),
                Err(Errno::EAGAIN) if tries < OPENAT2_RETRIES => tries += 1,
                Err(Errno::ENOSYS) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        "openat2 is not available: berth needs Linux 5.6 or later",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// An open directory; names passed to its methods are single components.
pub(crate) struct Dir {
    fd: OwnedFd,
}

fn nofollow_open(flags: OFlag) -> OFlag {
    flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

impl Dir {
    pub(crate) fn handle(&self) -> Handle<'_> {
        Handle { fd: self.fd.as_fd(), opath: false }
    }

    /// lstat of `name`; `None` if it does not exist.
    pub(crate) fn stat(&self, name: &OsStr) -> io::Result<Option<FileStat>> {
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the directory `name` (not following a symlink there).
    pub(crate) fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let flags = nofollow_open(OFlag::O_RDONLY | OFlag::O_DIRECTORY);
        Ok(Dir { fd: nix::fcntl::openat(&self.fd, name, flags, Mode::empty())? })
    }

    /// Opens `name` itself, whatever it is, without following or opening it (`O_PATH`).
    pub(crate) fn node(&self, name: &OsStr) -> io::Result<Node> {
        let fd = nix::fcntl::openat(&self.fd, name, nofollow_open(OFlag::O_PATH), Mode::empty())?;
        Ok(Node { fd })
    }

    pub(crate) fn mkdir(&self, name: &OsStr, mode: u32) -> io::Result<()> {
        Ok(nix::sys::stat::mkdirat(&self.fd, name, Mode::from_bits_truncate(mode))?)
    }

    /// Creates the regular file `name`, which must not exist (never follows a symlink).
    pub(crate) fn create_file(&self, name: &OsStr) -> io::Result<File> {
        let flags = nofollow_open(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL);
        let fd = nix::fcntl::openat(&self.fd, name, flags, Mode::from_bits_truncate(0o600))?;
        Ok(File::from(fd))
    }

    pub(crate) fn symlink(&self, target: &OsStr, name: &OsStr) -> io::Result<()> {
        Ok(nix::unistd::symlinkat(target, &self.fd, name)?)
    }

    /// Hard-links `src_dir/src_name` (not following a symlink there) as `name`.
    pub(crate) fn link(&self, src_dir: &Dir, src_name: &OsStr, name: &OsStr) -> io::Result<()> {
        Ok(nix::unistd::linkat(&src_dir.fd, src_name, &self.fd, name, AtFlags::empty())?)
    }

    pub(crate) fn mknod(&self, name: &OsStr, kind: SFlag, perm: u32, dev: u64) -> io::Result<()> {
        Ok(nix::sys::stat::mknodat(&self.fd, name, kind, Mode::from_bits_truncate(perm), dev)?)
    }

    /// Removes `name` and, if it is a directory, everything under it; a missing `name` is fine.
    /// Never follows symlinks: a symlink is removed, not what it points to.
    pub(crate) fn remove_all(&self, name: &OsStr) -> io::Result<()> {
        match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) => {
                let child = self.open_dir(name)?;
                for entry in child.names()? {
                    child.remove_all(&entry)?;
                }
                match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The names in this directory, without `.` and `..`, sorted bytewise.
    pub(crate) fn names(&self) -> io::Result<Vec<OsString>> {
        // A fresh open file description, so that reading does not move a shared offset.
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let mut dir = nix::dir::Dir::openat(&self.fd, ".", flags, Mode::empty())?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }
}

/// An `O_PATH` descriptor of any inode (symlinks included).
pub(crate) struct Node {
    fd: OwnedFd,
}

impl Node {
    pub(crate) fn handle(&self) -> Handle<'_> {
        Handle { fd: self.fd.as_fd(), opath: true }
    }

    /// The content of the symlink this descriptor is.
    pub(crate) fn readlink(&self) -> io::Result<OsString> {
        Ok(nix::fcntl::readlinkat(&self.fd, "")?)
    }

    /// Opens a regular file for reading through this descriptor: the very inode that was
    /// looked at, never whatever is at its name now (and never a fifo or device).
    pub(crate) fn open_regular(&self) -> io::Result<File> {
        let st = nix::sys::stat::fstat(&self.fd)?;
        if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) != SFlag::S_IFREG {
            return Err(io::Error::other("not a regular file any more"));
        }
        let fd =
            nix::fcntl::open(proc_path(self.fd.as_fd()).as_c_str(), OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(File::from(fd))
    }
}

fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a formatted number")
}

/// Metadata operations on one inode, through its descriptor. `opath` descriptors are used via
/// `/proc/self/fd/N`, since the kernel refuses `fchmod`/`fsetxattr` on them.
#[derive(Clone, Copy)]
pub(crate) struct Handle<'a> {
    fd: BorrowedFd<'a>,
    opath: bool,
}

impl<'a> Handle<'a> {
    pub(crate) fn of(file: &'a File) -> Handle<'a> {
        Handle { fd: file.as_fd(), opath: false }
    }

    pub(crate) fn stat(&self) -> io::Result<FileStat> {
        Ok(nix::sys::stat::fstat(self.fd)?)
    }

    pub(crate) fn chown(&self, uid: u32, gid: u32) -> io::Result<()> {
        let (uid, gid) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
        Ok(nix::unistd::fchownat(self.fd, "", uid, gid, AtFlags::AT_EMPTY_PATH)?)
    }

    /// chmod; the caller never calls it on a symlink (Linux has no symlink modes).
    pub(crate) fn chmod(&self, mode: u32) -> io::Result<()> {
        let mode = Mode::from_bits_truncate(mode);
        if self.opath {
            let at = nix::sys::stat::FchmodatFlags::FollowSymlink;
            Ok(nix::sys::stat::fchmodat(nix::fcntl::AT_FDCWD, proc_path(self.fd).as_c_str(), mode, at)?)
        } else {
            Ok(nix::sys::stat::fchmod(self.fd, mode)?)
        }
    }

    /// Sets atime and mtime to `sec`.`nsec`.
    pub(crate) fn set_mtime(&self, sec: i64, nsec: u32) -> io::Result<()> {
        let ts = TimeSpec::new(sec, i64::from(nsec));
        if self.opath {
            let path = proc_path(self.fd);
            Ok(nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                path.as_c_str(),
                &ts,
                &ts,
                UtimensatFlags::FollowSymlink,
            )?)
        } else {
            Ok(nix::sys::stat::futimens(self.fd, &ts, &ts)?)
        }
    }

    pub(crate) fn set_xattr(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        let key = CString::new(key).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let ret = if self.opath {
            let path = proc_path(self.fd);
            // SAFETY: path and key are NUL-terminated strings and value is a valid slice,
            // all alive for the duration of the call.
            unsafe { libc::setxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) }
        } else {
            // SAFETY: as above, and the descriptor is borrowed for the call.
            unsafe { libc::fsetxattr(self.fd.as_raw_fd(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) }
        };
        if ret == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }

    /// All xattrs (name, value), sorted by name.
    pub(crate) fn xattrs(&self) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let path = self.opath.then(|| proc_path(self.fd));
        let raw = self.fd.as_raw_fd();
        let list = read_growing(|buf| match &path {
            // SAFETY: buf points to buf.len() writable bytes; path is NUL-terminated.
            Some(p) => unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
            // SAFETY: as above, with a borrowed open descriptor.
            None => unsafe { libc::flistxattr(raw, buf.as_mut_ptr().cast(), buf.len()) },
        })?;
        let mut out = Vec::new();
        for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let key = CString::new(name).expect("split on NUL");
            let value = read_growing(|buf| match &path {
                // SAFETY: buf points to buf.len() writable bytes; path and key are NUL-terminated.
                Some(p) => unsafe { libc::getxattr(p.as_ptr(), key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
                // SAFETY: as above, with a borrowed open descriptor.
                None => unsafe { libc::fgetxattr(raw, key.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) },
            });
            match value {
                Ok(value) => out.push((name.to_vec(), value)),
                // Removed between list and get.
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Calls a `*xattr` style function (returns a length, or -1 with ERANGE when the buffer is
/// too small) with a buffer large enough.
fn read_growing(mut call: impl FnMut(&mut [u8]) -> isize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = call(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) || buf.len() >= 1 << 20 {
            return Err(err);
        }
        let len = buf.len() * 4;
        buf.resize(len, 0);
    }
}

/// The file type bits of a stat.
pub(crate) fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_in_root_stays_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let root_path = tmp.path().join("root");
        std::fs::create_dir_all(root_path.join("real")).unwrap();
        std::os::unix::fs::symlink("/", root_path.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", root_path.join("real/up")).unwrap();
        let root = Root::open(&root_path).unwrap();
        // `abs` -> `/` is the root itself: `abs/real` is `real`.
        let d = root.resolve_dir(&["abs".into(), "real".into()]).unwrap();
        assert_eq!(d.names().unwrap(), vec![OsString::from("up")]);
        // `real/up` -> `../..` stops at the root.
        let d = root.resolve_dir(&["real".into(), "up".into()]).unwrap();
        assert_eq!(d.names().unwrap(), vec![OsString::from("abs"), OsString::from("real")]);
        // Beneath without symlinks refuses both.
        assert!(root.open_dir_beneath(&["abs".into()]).is_err());
        assert!(root.open_dir_beneath(&["real".into()]).is_ok());
    }

    #[test]
    fn symlink_handles_do_not_follow() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("link")).unwrap();
        let root = Root::open(tmp.path()).unwrap();
        let node = root.dir().node(OsStr::new("link")).unwrap();
        let h = node.handle();
        assert_eq!(file_type(&h.stat().unwrap()), SFlag::S_IFLNK);
        h.set_xattr(b"trusted.test", b"v").unwrap();
        h.chown(1234, 4321).unwrap();
        h.set_mtime(1_000_000, 5).unwrap();
        assert_eq!(h.xattrs().unwrap(), vec![(b"trusted.test".to_vec(), b"v".to_vec())]);
        let file = root.dir().node(OsStr::new("target")).unwrap();
        let fh = file.handle();
        assert!(fh.xattrs().unwrap().is_empty(), "the symlink's target got the xattr");
        let st = fh.stat().unwrap();
        assert_eq!((st.st_uid, st.st_gid), (0, 0));
        assert_ne!(st.st_mtime, 1_000_000);
        let lst = h.stat().unwrap();
        assert_eq!((lst.st_uid, lst.st_gid, lst.st_mtime, lst.st_mtime_nsec), (1234, 4321, 1_000_000, 5));
        assert!(node.open_regular().is_err());
    }

    #[test]
    fn remove_all_does_not_follow() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let root_path = tmp.path().join("root");
        std::fs::create_dir_all(root_path.join("d/e")).unwrap();
        std::fs::write(root_path.join("d/e/f"), b"f").unwrap();
        std::os::unix::fs::symlink(&outside, root_path.join("d/link")).unwrap();
        let root = Root::open(&root_path).unwrap();
        root.dir().remove_all(OsStr::new("d")).unwrap();
        root.dir().remove_all(OsStr::new("missing")).unwrap();
        assert!(root.dir().names().unwrap().is_empty());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"k");
    }
}
