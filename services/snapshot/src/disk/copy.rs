//! A faithful copy of a directory tree, as the native snapshotter makes of a parent: owners,
//! modes (setuid, sticky), extended attributes, timestamps, symlinks, hard links (kept as
//! links), devices, fifos and sockets.

use std::collections::HashMap;
use std::fs::{Metadata, OpenOptions, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;

use crate::disk::xattr;
use crate::error::{Error, Result};

/// Copies the contents and attributes of `src` into the existing, empty directory `dst`.
pub fn copy_dir(src: &Path, dst: &Path) -> Result<()> {
    let root = std::fs::symlink_metadata(src).map_err(|e| Error::io(format!("stat {}", src.display()), e))?;
    // Directories get their final mode and times once everything inside them exists.
    let mut dirs = vec![(src.to_path_buf(), dst.to_path_buf(), root)];
    let mut pending = vec![(src.to_path_buf(), dst.to_path_buf())];
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    while let Some((src_dir, dst_dir)) = pending.pop() {
        let entries = std::fs::read_dir(&src_dir).map_err(|e| Error::io(format!("read {}", src_dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("read {}", src_dir.display()), e))?;
            let (from, to) = (entry.path(), dst_dir.join(entry.file_name()));
            let meta =
                std::fs::symlink_metadata(&from).map_err(|e| Error::io(format!("stat {}", from.display()), e))?;
            let context = || format!("copy {} to {}", from.display(), to.display());
            if meta.is_dir() {
                std::fs::DirBuilder::new().mode(0o700).create(&to).map_err(|e| Error::io(context(), e))?;
                pending.push((from.clone(), to.clone()));
                dirs.push((from, to, meta));
                continue;
            }
            if meta.nlink() > 1 {
                let inode = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&inode) {
                    std::fs::hard_link(first, &to).map_err(|e| Error::io(context(), e))?;
                    continue;
                }
                links.insert(inode, to.clone());
            }
            copy_entry(&from, &to, &meta).map_err(|e| Error::io(context(), e))?;
            copy_attributes(&from, &to, &meta).map_err(|e| Error::io(context(), e))?;
        }
    }
    for (from, to, meta) in dirs.iter().rev() {
        copy_attributes(from, to, meta)
            .map_err(|e| Error::io(format!("copy attributes of {} to {}", from.display(), to.display()), e))?;
    }
    Ok(())
}

/// Creates `to` as a copy of the non-directory `from`.
fn copy_entry(from: &Path, to: &Path, meta: &Metadata) -> io::Result<()> {
    let file_type = meta.file_type();
    if file_type.is_file() {
        let mut source = std::fs::File::open(from)?;
        let mut target = OpenOptions::new().write(true).create_new(true).mode(0o600).open(to)?;
        // copy_file_range underneath: a reflink or in-kernel copy where the filesystem can.
        io::copy(&mut source, &mut target)?;
        return Ok(());
    }
    if file_type.is_symlink() {
        return std::os::unix::fs::symlink(std::fs::read_link(from)?, to);
    }
    let kind = if file_type.is_char_device() {
        SFlag::S_IFCHR
    } else if file_type.is_block_device() {
        SFlag::S_IFBLK
    } else if file_type.is_fifo() {
        SFlag::S_IFIFO
    } else if file_type.is_socket() {
        SFlag::S_IFSOCK
    } else {
        return Err(io::Error::new(ErrorKind::Unsupported, "unknown file type"));
    };
    nix::sys::stat::mknod(to, kind, Mode::from_bits_truncate(0o600), meta.rdev())?;
    Ok(())
}

/// Owner, then mode (a chown clears setuid bits), then extended attributes (a chown clears
/// file capabilities), then times.
fn copy_attributes(from: &Path, to: &Path, meta: &Metadata) -> io::Result<()> {
    let symlink = meta.file_type().is_symlink();
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    if !symlink {
        std::fs::set_permissions(to, Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    copy_xattrs(from, to, symlink)?;
    let atime = TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, to, &atime, &mtime, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

fn copy_xattrs(from: &Path, to: &Path, symlink: bool) -> io::Result<()> {
    let names = match xattr::list(from) {
        Ok(names) => names,
        Err(e) if unsupported(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in names {
        let value = xattr::get(from, &name)?;
        match xattr::set(to, &name, &value) {
            Ok(()) => {}
            Err(e) if unsupported(&e) => {}
            // Symlinks cannot carry user.* attributes; the source cannot have had any.
            Err(e) if symlink && e.raw_os_error() == Some(libc::EPERM) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("set extended attribute {}: {e}", name.to_string_lossy()),
                ));
            }
        }
    }
    Ok(())
}

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn copies_contents_and_attributes() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        std::fs::create_dir_all(src.join("a/b")).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(src.join("a/b/file"), b"hello").unwrap();
        std::fs::hard_link(src.join("a/b/file"), src.join("link")).unwrap();
        std::os::unix::fs::symlink("a/b/file", src.join("symlink")).unwrap();
        nix::unistd::mkfifo(&src.join("fifo"), Mode::from_bits_truncate(0o640)).unwrap();
        std::fs::set_permissions(src.join("a"), Permissions::from_mode(0o1750)).unwrap();
        std::fs::set_permissions(src.join("a/b/file"), Permissions::from_mode(0o4755)).unwrap();
        std::fs::set_permissions(&src, Permissions::from_mode(0o751)).unwrap();
        xattr::set(&src.join("a/b/file"), OsStr::new("user.berth"), b"kept").unwrap();
        let root = nix::unistd::geteuid().is_root();
        if root {
            std::os::unix::fs::lchown(src.join("a/b"), Some(1), Some(2)).unwrap();
            std::os::unix::fs::lchown(src.join("symlink"), Some(3), Some(4)).unwrap();
            nix::sys::stat::mknod(
                &src.join("null"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                libc::makedev(1, 3),
            )
            .unwrap();
        }

        copy_dir(&src, &dst).unwrap();

        let meta = |p: &str| std::fs::symlink_metadata(if p.is_empty() { dst.clone() } else { dst.join(p) }).unwrap();
        let source = |p: &str| std::fs::symlink_metadata(if p.is_empty() { src.clone() } else { src.join(p) }).unwrap();
        assert_eq!(std::fs::read(dst.join("a/b/file")).unwrap(), b"hello");
        assert_eq!(meta("").mode() & 0o7777, 0o751);
        assert_eq!(meta("a").mode() & 0o7777, 0o1750);
        assert_eq!(meta("a/b/file").mode() & 0o7777, 0o4755);
        assert_eq!(meta("a/b/file").ino(), meta("link").ino(), "hard link kept");
        assert_eq!(std::fs::read_link(dst.join("symlink")).unwrap(), Path::new("a/b/file"));
        assert!(meta("fifo").file_type().is_fifo());
        assert_eq!(xattr::get(&dst.join("a/b/file"), OsStr::new("user.berth")).unwrap(), b"kept");
        for path in ["", "a", "a/b", "a/b/file", "symlink"] {
            assert_eq!(meta(path).mtime(), source(path).mtime(), "{path}");
            assert_eq!(meta(path).mtime_nsec(), source(path).mtime_nsec(), "{path}");
        }
        if root {
            assert_eq!((meta("a/b").uid(), meta("a/b").gid()), (1, 2));
            assert_eq!((meta("symlink").uid(), meta("symlink").gid()), (3, 4));
            assert!(meta("null").file_type().is_char_device());
            assert_eq!(meta("null").rdev(), libc::makedev(1, 3));
        }
    }
}
