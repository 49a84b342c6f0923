//! Applying a layer onto a directory.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use nix::sys::stat::SFlag;

use crate::digest;
use crate::path::RelPath;
use crate::pipeline::{self, Uncompressed};
use crate::rooted::{Dir, Handle, Root, file_type};
use crate::tarfmt::{self, Entry, Kind};
use crate::whiteout::{self, OVERLAY_OPAQUE_XATTR};
use crate::{Error, Result};

/// What kind of snapshot directory a layer is applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A full copy of the parent snapshot (the native snapshotter): a whiteout deletes its
    /// target, an opaque marker deletes what lower layers put in its directory.
    Native,
    /// An overlayfs upper directory: a whiteout becomes a 0/0 character device, an opaque marker
    /// the `trusted.overlay.opaque=y` xattr. `parents` are the lower directories, topmost first:
    /// a directory the layer implies without an entry for it is created with the owner, mode,
    /// xattrs and mtime it has in the first parent holding it (as containerd does), so that it
    /// does not change in the merged view.
    Overlay { parents: Vec<PathBuf> },
}

/// Bounds on what a layer may make us do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most bytes the decompressed stream may have; past it apply fails with
    /// [`Error::TooLarge`].
    pub max_uncompressed_bytes: u64,
}

impl Default for Limits {
    /// 64 GiB.
    fn default() -> Self {
        Limits { max_uncompressed_bytes: 64 << 30 }
    }
}

/// What applying a layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:<hex>` of the whole uncompressed stream, bytes after the tar's end included.
    pub diff_id: String,
    /// Bytes in the uncompressed stream.
    pub uncompressed_size: u64,
}

/// Applies the layer read from `reader` (uncompressed, gzip or zstd: detected from its first
/// bytes, as containerd does) onto `root`.
///
/// On error `root` may hold part of the layer: the caller discards it.
pub fn apply(reader: impl Read + Send, root: &Path, target: &Target, limits: Limits) -> Result<Applied> {
    apply_verified(reader, root, target, limits, None)
}

/// [`apply`], then fails with [`Error::DiffIdMismatch`] unless the diffID is `expected`.
pub fn apply_verified(
    reader: impl Read + Send,
    root: &Path,
    target: &Target,
    limits: Limits,
    expected: Option<&str>,
) -> Result<Applied> {
    if let Some(expected) = expected
        && !digest::is_sha256(expected)
    {
        return Err(Error::InvalidDiffId(expected.to_owned()));
    }
    let too_large = |e: Error| match e {
        Error::Read(io) if digest::is_limit_exceeded(&io) => Error::TooLarge { limit: limits.max_uncompressed_bytes },
        other => other,
    };
    let mut applier = Applier::new(root, target)?;
    let stop = AtomicBool::new(false);
    let (diff_id, uncompressed_size) = std::thread::scope(|scope| {
        let input = pipeline::start(scope, reader, limits.max_uncompressed_bytes, &stop).map_err(Error::Read)?;
        applier.run(input).map_err(too_large)
    })?;
    if let Some(expected) = expected
        && expected != diff_id
    {
        return Err(Error::DiffIdMismatch { expected: expected.to_owned(), actual: diff_id });
    }
    Ok(Applied { diff_id, uncompressed_size })
}

struct Applier<'a> {
    root: Root,
    target: &'a Target,
    parents: Vec<Root>,
    /// Native: what this layer created so far, as (directory device, directory inode, name),
    /// so that an opaque marker removes only what lower layers put there.
    created: HashSet<(u64, u64, OsString)>,
    /// Directory mtimes, set once nothing more is created in them.
    dir_times: Vec<(RelPath, i64, u32)>,
}

impl<'a> Applier<'a> {
    fn new(root: &Path, target: &'a Target) -> Result<Self> {
        let open = |p: &Path| Root::open(p).map_err(Error::io("open directory", p.display().to_string()));
        let parents = match target {
            Target::Native => Vec::new(),
            Target::Overlay { parents } => parents.iter().map(|p| open(p)).collect::<Result<_>>()?,
        };
        Ok(Applier { root: open(root)?, target, parents, created: HashSet::new(), dir_times: Vec::new() })
    }

    fn native(&self) -> bool {
        matches!(self.target, Target::Native)
    }

    /// Applies the entries, then reads the rest of the stream; returns the diffID and size.
    fn run(&mut self, input: Uncompressed<'_>) -> Result<(String, u64)> {
        let mut tar = tarfmt::Reader::new(input);
        while let Some(entry) = tar.next()? {
            self.entry(&entry, &mut tar)?;
        }
        // The diffID covers the whole stream: what follows the tar's end too.
        let decoded = tar.into_inner().finish().map_err(Error::Read)?;
        self.set_dir_times()?;
        Ok(decoded)
    }

    fn entry<R: BufRead>(&mut self, e: &Entry, tar: &mut tarfmt::Reader<R>) -> Result<()> {
        let path = match RelPath::clean(&e.name) {
            Ok(Some(path)) => path,
            // The root itself: containerd ignores it (its attributes belong to the snapshot).
            Ok(None) => return Ok(()),
            Err(reason) => return Err(Error::invalid(e.display_name(), reason)),
        };
        let shown = path.display();
        if let Some((key, _)) = e.xattrs.iter().find(|(k, _)| whiteout::is_overlay_xattr(k)) {
            let key = String::from_utf8_lossy(key);
            return Err(Error::invalid(
                shown,
                format!("refusing xattr {key}: overlayfs metadata must not come from a layer"),
            ));
        }
        let (parent_parts, name) = path.split_last();
        let kind = whiteout::classify(name).map_err(|reason| Error::invalid(&shown, reason))?;
        if kind == whiteout::Kind::Meta {
            return Ok(());
        }
        let parent = self.parent_dir(parent_parts, &shown)?;
        match kind {
            whiteout::Kind::Opaque => return self.opaque(&parent, &shown),
            whiteout::Kind::Remove(victim) => return self.whiteout(&parent, victim, e, &shown),
            whiteout::Kind::None | whiteout::Kind::Meta => {}
        }

        // What is there is replaced, except that a directory over a directory merges.
        let existing = parent.stat(name).map_err(Error::io("stat", &shown))?;
        let dir_exists = existing.as_ref().is_some_and(|st| file_type(st) == SFlag::S_IFDIR);
        if existing.is_some() && !(dir_exists && e.kind == Kind::Dir) {
            parent.remove_all(name).map_err(Error::io("remove", &shown))?;
        }

        match e.kind {
            Kind::Dir => {
                if !dir_exists {
                    parent.mkdir(name, 0o700).map_err(Error::io("create directory", &shown))?;
                }
                let dir = parent.open_dir(name).map_err(Error::io("open directory", &shown))?;
                set_attributes(dir.handle(), e, false, &shown)?;
                self.dir_times.push((path.clone(), e.mtime, e.mtime_nsec));
            }
            Kind::Regular => {
                let mut file = parent.create_file(name).map_err(Error::io("create file", &shown))?;
                // Written straight from the decoded chunks.
                loop {
                    let data = tar.data_buf()?;
                    if data.is_empty() {
                        break;
                    }
                    let n = data.len();
                    file.write_all(data).map_err(Error::io("write", &shown))?;
                    tar.consume_data(n);
                }
                set_attributes(Handle::of(&file), e, true, &shown)?;
            }
            Kind::Symlink => {
                parent.symlink(OsStr::from_bytes(&e.link), name).map_err(Error::io("create symlink", &shown))?;
                let node = parent.node(name).map_err(Error::io("open", &shown))?;
                set_attributes(node.handle(), e, true, &shown)?;
            }
            Kind::Link => self.hardlink(&parent, name, e, &shown)?,
            Kind::Char | Kind::Block | Kind::Fifo => {
                let (sflag, dev) = match e.kind {
                    Kind::Char => (SFlag::S_IFCHR, libc::makedev(e.dev_major, e.dev_minor)),
                    Kind::Block => (SFlag::S_IFBLK, libc::makedev(e.dev_major, e.dev_minor)),
                    _ => (SFlag::S_IFIFO, 0),
                };
                parent.mknod(name, sflag, 0o600, dev).map_err(Error::io("create node", &shown))?;
                let node = parent.node(name).map_err(Error::io("open", &shown))?;
                set_attributes(node.handle(), e, true, &shown)?;
            }
        }
        self.record_created(&parent, name, &shown)
    }

    /// A hard link keeps its target's attributes: the header's are not applied, so no chmod or
    /// chown can reach through a link to a symlink (CVE-2021-32760).
    fn hardlink(&self, parent: &Dir, name: &OsStr, e: &Entry, shown: &str) -> Result<()> {
        let link = String::from_utf8_lossy(&e.link);
        let target = match RelPath::clean(&e.link) {
            Ok(Some(target)) => target,
            Ok(None) => return Err(Error::invalid(shown, "hard link to the root")),
            Err(reason) => return Err(Error::invalid(shown, format!("hard link target {link:?}: {reason}"))),
        };
        let (target_parent, target_name) = target.split_last();
        let missing = || Error::invalid(shown, format!("hard link target {link:?} does not exist in the root"));
        let dir = match self.root.resolve_dir(target_parent) {
            Ok(dir) => dir,
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => return Err(missing()),
            Err(err) => return Err(Error::io("resolve hard link target of", shown)(err)),
        };
        match dir.stat(target_name).map_err(Error::io("stat hard link target of", shown))? {
            None => Err(missing()),
            Some(st) if file_type(&st) == SFlag::S_IFDIR => {
                Err(Error::invalid(shown, format!("hard link target {link:?} is a directory")))
            }
            Some(_) => parent.link(&dir, target_name, name).map_err(Error::io("create hard link", shown)),
        }
    }

    fn whiteout(&mut self, parent: &Dir, victim: &OsStr, e: &Entry, shown: &str) -> Result<()> {
        parent.remove_all(victim).map_err(Error::io("remove whited-out entry for", shown))?;
        if self.native() {
            return Ok(());
        }
        parent.mknod(victim, SFlag::S_IFCHR, 0, 0).map_err(Error::io("create whiteout device for", shown))?;
        let node = parent.node(victim).map_err(Error::io("open", shown))?;
        node.handle().chown(e.uid, e.gid).map_err(Error::io("chown", shown))
    }

    fn opaque(&self, dir: &Dir, shown: &str) -> Result<()> {
        if self.native() {
            self.prune(dir).map_err(Error::io("clear opaque directory for", shown))
        } else {
            dir.handle().set_xattr(OVERLAY_OPAQUE_XATTR.as_bytes(), b"y").map_err(Error::io("mark opaque", shown))
        }
    }

    /// Removes from `dir`, recursively, everything this layer did not create.
    fn prune(&self, dir: &Dir) -> io::Result<()> {
        let st = dir.handle().stat()?;
        for name in dir.names()? {
            if !self.created.contains(&(st.st_dev, st.st_ino, name.clone())) {
                dir.remove_all(&name)?;
            } else if dir.stat(&name)?.is_some_and(|st| file_type(&st) == SFlag::S_IFDIR) {
                self.prune(&dir.open_dir(&name)?)?;
            }
        }
        Ok(())
    }

    fn record_created(&mut self, parent: &Dir, name: &OsStr, shown: &str) -> Result<()> {
        if self.native() {
            let st = parent.handle().stat().map_err(Error::io("stat parent of", shown))?;
            self.created.insert((st.st_dev, st.st_ino, name.to_owned()));
        }
        Ok(())
    }

    /// The entry's parent directory, created (0755, or as in the overlay parents) if missing.
    fn parent_dir(&mut self, parts: &[OsString], shown: &str) -> Result<Dir> {
        let not_dir = || Error::invalid(shown, "a parent is not a directory");
        match self.root.resolve_dir(parts) {
            Ok(dir) => return Ok(dir),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => return Err(not_dir()),
            Err(err) => return Err(Error::io("open parent directory of", shown)(err)),
        }
        let mut dir = self.root.resolve_dir(&[]).map_err(Error::io("open root for", shown))?;
        for i in 0..parts.len() {
            let prefix = &parts[..=i];
            match self.root.resolve_dir(prefix) {
                Ok(next) => {
                    dir = next;
                    continue;
                }
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
                Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => return Err(not_dir()),
                Err(err) => return Err(Error::io("open parent directory of", shown)(err)),
            }
            let name = &parts[i];
            match dir.mkdir(name, 0o755) {
                Ok(()) => {}
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                    let prefix = RelPath::from_components(prefix.to_vec()).display();
                    return Err(Error::invalid(shown, format!("parent {prefix:?} is a dangling symlink")));
                }
                Err(err) => return Err(Error::io("create parent directory of", shown)(err)),
            }
            let next = dir.open_dir(name).map_err(Error::io("open parent directory of", shown))?;
            next.handle().chmod(0o755).map_err(Error::io("chmod parent directory of", shown))?;
            self.copy_from_parents(prefix, &next, shown)?;
            self.record_created(&dir, name, shown)?;
            dir = next;
        }
        Ok(dir)
    }

    /// Overlay: gives a directory created implicitly the attributes it has below.
    fn copy_from_parents(&mut self, parts: &[OsString], dir: &Dir, shown: &str) -> Result<()> {
        for parent in &self.parents {
            let below = match parent.resolve_dir(parts) {
                Ok(below) => below,
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                // Not a directory in this layer: it hides the layers below it.
                Err(err) if err.raw_os_error() == Some(libc::ENOTDIR) => return Ok(()),
                Err(err) => return Err(Error::io("open lower directory for", shown)(err)),
            };
            let from = below.handle();
            let st = from.stat().map_err(Error::io("stat lower directory for", shown))?;
            let to = dir.handle();
            to.chown(st.st_uid, st.st_gid).map_err(Error::io("chown parent directory of", shown))?;
            for (key, value) in from.xattrs().map_err(Error::io("read lower xattrs for", shown))? {
                if whiteout::is_exported_xattr(&key) {
                    to.set_xattr(&key, &value).map_err(Error::io("copy lower xattr for", shown))?;
                }
            }
            to.chmod(st.st_mode & 0o7777).map_err(Error::io("chmod parent directory of", shown))?;
            let path = RelPath::from_components(parts.to_vec());
            self.dir_times.push((path, st.st_mtime, st.st_mtime_nsec as u32));
            return Ok(());
        }
        Ok(())
    }

    fn set_dir_times(&self) -> Result<()> {
        for (path, sec, nsec) in &self.dir_times {
            let (parent_parts, name) = path.split_last();
            let shown = path.display();
            // Removed or replaced by a later entry: nothing to do.
            let gone = |err: &io::Error| matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP));
            let parent = match self.root.resolve_dir(parent_parts) {
                Ok(parent) => parent,
                Err(err) if gone(&err) => continue,
                Err(err) => return Err(Error::io("open parent directory of", shown)(err)),
            };
            let dir = match parent.open_dir(name) {
                Ok(dir) => dir,
                Err(err) if gone(&err) => continue,
                Err(err) => return Err(Error::io("open directory", shown)(err)),
            };
            dir.handle().set_mtime(*sec, *nsec).map_err(Error::io("set mtime of", shown))?;
        }
        Ok(())
    }
}

/// Owner, xattrs, mode and (unless a directory, whose time is set last) mtime, in that order:
/// chown clears setuid bits and file capabilities, so they come after it.
fn set_attributes(handle: Handle<'_>, e: &Entry, times: bool, shown: &str) -> Result<()> {
    handle.chown(e.uid, e.gid).map_err(Error::io("chown", shown))?;
    for (key, value) in &e.xattrs {
        if let Err(err) = handle.set_xattr(key, value) {
            let unsupported = err.raw_os_error() == Some(libc::ENOTSUP);
            // The kernel refuses user.* xattrs on symlinks and devices; containerd skips those.
            let user_on_special = err.raw_os_error() == Some(libc::EPERM)
                && key.starts_with(b"user.")
                && !matches!(e.kind, Kind::Regular | Kind::Dir);
            if !(unsupported || user_on_special) {
                let key = String::from_utf8_lossy(key);
                return Err(Error::io("set xattr", format!("{shown} ({key})"))(err));
            }
        }
    }
    if e.kind != Kind::Symlink {
        handle.chmod(e.mode & 0o7777).map_err(Error::io("chmod", shown))?;
    }
    if times {
        handle.set_mtime(e.mtime, e.mtime_nsec).map_err(Error::io("set mtime of", shown))?;
    }
    Ok(())
}
