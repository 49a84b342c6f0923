//! Creating a layer from the difference between two directories.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::sys::stat::{FileStat, SFlag};

use crate::compression::Encoder;
use crate::digest::Counting;
use crate::path;
use crate::rooted::{Dir, Node, Root, file_type};
use crate::tarfmt::{self, Entry, Kind};
use crate::whiteout::{self, OPAQUE, OVERLAY_OPAQUE_XATTR};
use crate::{Compression, Error, Result};

/// What the `upper` directory given to [`diff`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An overlayfs upper directory (the overlayfs snapshotter): everything in it is a change,
    /// a 0/0 character device is a deletion and a `trusted.overlay.opaque=y` directory replaces
    /// the lower one. `lower` is only checked to be a directory: the upper dir says it all.
    OverlayUpper,
    /// A complete tree (the native snapshotter), compared with `lower` entry by entry: added
    /// and changed entries are written, deleted ones become whiteouts. Like containerd, a
    /// regular file counts as changed when its type, mode, owner, size, mtime (to the
    /// nanosecond), xattrs differ, or its content when both mtimes are whole seconds.
    Compare,
}

/// The layer [`diff`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// `sha256:<hex>` of the bytes written (equal to `diff_id` without compression).
    pub compressed_digest: String,
    /// Bytes written.
    pub size: u64,
}

/// Writes to `writer` the layer that turns `lower` into `upper`.
///
/// The output is deterministic: entries in bytewise path order (parents first), USTAR headers
/// with PAX records only where needed (xattrs, long names, large numbers), numeric owners
/// without user or group names, mtimes in whole seconds as containerd writes them, no atime or
/// ctime, whiteouts with zero mode, owner and mtime, and a gzip header without name or mtime.
/// Sockets are skipped. Xattrs are all carried except overlayfs' own and `security.selinux`.
/// Neither tree's symlinks are ever followed.
pub fn diff(
    lower: &Path,
    upper: &Path,
    source: Source,
    compression: Compression,
    writer: impl Write,
) -> Result<Written> {
    let open = |p: &Path| Root::open(p).map_err(Error::io("open directory", p.display().to_string()));
    let lower = open(lower)?;
    let upper = open(upper)?;
    let encoder = Encoder::new(compression, Counting::new(writer)).map_err(Error::Write)?;
    let mut differ = Differ {
        source,
        upper: &upper,
        out: Counting::new(encoder),
        emitted_dirs: HashSet::new(),
        inode_source: HashMap::new(),
        inode_pending: HashMap::new(),
        buf: vec![0; 128 * 1024],
    };
    let mut parts = Vec::new();
    let lower_dir = match source {
        Source::Compare => Some(lower.dir()),
        Source::OverlayUpper => None,
    };
    differ.walk(&mut parts, lower_dir, upper.dir())?;
    tarfmt::write_end(&mut differ.out).map_err(Error::Write)?;
    let (encoder, diff_id, _) = differ.out.finish();
    let mut counted = encoder.finish().map_err(Error::Write)?;
    counted.flush().map_err(Error::Write)?;
    let (_, compressed_digest, size) = counted.finish();
    Ok(Written { diff_id, compressed_digest, size })
}

/// An inode as found in a tree.
struct Found {
    node: Node,
    st: FileStat,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    link: Option<OsString>,
}

impl Found {
    fn kind(&self) -> SFlag {
        file_type(&self.st)
    }

    fn is_dir(&self) -> bool {
        self.kind() == SFlag::S_IFDIR
    }

    fn exported_xattrs(&self) -> impl Iterator<Item = &(Vec<u8>, Vec<u8>)> {
        self.xattrs.iter().filter(|(k, _)| whiteout::is_exported_xattr(k))
    }

    fn xattr(&self, key: &str) -> Option<&[u8]> {
        self.xattrs.iter().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v.as_slice())
    }
}

fn find(dir: &Dir, name: &OsStr, shown: impl Fn() -> String) -> Result<Option<Found>> {
    let node = match dir.node(name) {
        Ok(node) => node,
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(err) => return Err(Error::io("open", shown())(err)),
    };
    let handle = node.handle();
    let st = handle.stat().map_err(Error::io("stat", shown()))?;
    let xattrs = handle.xattrs().map_err(Error::io("read xattrs of", shown()))?;
    let link = if file_type(&st) == SFlag::S_IFLNK {
        Some(node.readlink().map_err(Error::io("read symlink", shown()))?)
    } else {
        None
    };
    Ok(Some(Found { node, st, xattrs, link }))
}

struct Differ<'a, W: Write> {
    source: Source,
    upper: &'a Root,
    /// Counts and hashes the uncompressed tar.
    out: Counting<Encoder<Counting<W>>>,
    /// Directories already in the output (their paths).
    emitted_dirs: HashSet<Vec<u8>>,
    /// Hard-linked inodes of `upper` already written, and the path they were written as.
    inode_source: HashMap<(u64, u64), Vec<u8>>,
    /// Unchanged paths of hard-linked inodes not written yet: if the inode is written later,
    /// they are written as links to it (as containerd's change writer does).
    inode_pending: HashMap<(u64, u64), Vec<Vec<OsString>>>,
    buf: Vec<u8>,
}

impl<W: Write> Differ<'_, W> {
    fn walk(&mut self, parts: &mut Vec<OsString>, lower: Option<&Dir>, upper: &Dir) -> Result<()> {
        let shown_dir = path::join(parts);
        let list_err = || String::from_utf8_lossy(&shown_dir).into_owned();
        let mut names: BTreeSet<Vec<u8>> =
            upper.names().map_err(Error::io("list", list_err()))?.into_iter().map(OsString::into_vec).collect();
        if let Some(lower) = lower {
            names.extend(
                lower.names().map_err(Error::io("list lower", list_err()))?.into_iter().map(OsString::into_vec),
            );
        }
        for name in names {
            let name = OsString::from_vec(name);
            parts.push(name.clone());
            let result = self.visit(parts, &name, lower, upper);
            parts.pop();
            result?;
        }
        Ok(())
    }

    fn visit(&mut self, parts: &mut Vec<OsString>, name: &OsStr, lower: Option<&Dir>, upper: &Dir) -> Result<()> {
        let shown = || String::from_utf8_lossy(&path::join(parts)).into_owned();
        let up = find(upper, name, shown)?;
        match self.source {
            Source::Compare => {
                let low = match lower {
                    Some(lower) => find(lower, name, shown)?,
                    None => None,
                };
                match (low, up) {
                    // Gone from both while walking.
                    (None, None) => Ok(()),
                    (Some(_), None) => self.whiteout(parts),
                    (_, Some(up)) if up.kind() == SFlag::S_IFSOCK => Ok(()),
                    (low, Some(up)) => {
                        let changed = match &low {
                            None => true,
                            Some(low) => !same(low, &up).map_err(Error::io("compare", shown()))?,
                        };
                        if !up.is_dir() {
                            return self.file(parts, &up, changed);
                        }
                        if changed {
                            self.emit(parts, &up)?;
                        }
                        let lower_child = match (&low, lower) {
                            (Some(low), Some(lower)) if low.is_dir() => {
                                Some(lower.open_dir(name).map_err(Error::io("open lower", shown()))?)
                            }
                            _ => None,
                        };
                        let upper_child = upper.open_dir(name).map_err(Error::io("open", shown()))?;
                        self.walk(parts, lower_child.as_ref(), &upper_child)
                    }
                }
            }
            Source::OverlayUpper => {
                let Some(up) = up else { return Ok(()) };
                match up.kind() {
                    SFlag::S_IFSOCK => Ok(()),
                    SFlag::S_IFCHR if up.st.st_rdev == 0 => self.whiteout(parts),
                    SFlag::S_IFDIR => {
                        if up.xattr("trusted.overlay.redirect").is_some() {
                            let reason = "directory renamed with overlayfs redirect_dir, which a layer cannot express";
                            return Err(Error::Unsupported { path: shown(), reason: reason.into() });
                        }
                        self.emit(parts, &up)?;
                        if up.xattr(OVERLAY_OPAQUE_XATTR) == Some(b"y") {
                            self.opaque(parts)?;
                        }
                        let upper_child = upper.open_dir(name).map_err(Error::io("open", shown()))?;
                        self.walk(parts, None, &upper_child)
                    }
                    _ => {
                        if up.xattr("trusted.overlay.metacopy").is_some() {
                            let reason = "overlayfs metacopy file without its data";
                            return Err(Error::Unsupported { path: shown(), reason: reason.into() });
                        }
                        self.file(parts, &up, true)
                    }
                }
            }
        }
    }

    /// A non-directory: written if changed, or as a hard link when its inode was written.
    fn file(&mut self, parts: &[OsString], found: &Found, changed: bool) -> Result<()> {
        if found.kind() != SFlag::S_IFREG || found.st.st_nlink <= 1 {
            return if changed { self.emit(parts, found) } else { Ok(()) };
        }
        let key = (found.st.st_dev, found.st.st_ino);
        if let Some(source) = self.inode_source.get(&key).cloned() {
            return self.link(parts, found, &source);
        }
        if !changed {
            self.inode_pending.entry(key).or_default().push(parts.to_vec());
            return Ok(());
        }
        self.emit(parts, found)?;
        let source = path::join(parts);
        for pending in self.inode_pending.remove(&key).unwrap_or_default() {
            self.link(&pending, found, &source)?;
        }
        self.inode_source.insert(key, source);
        Ok(())
    }

    /// Writes the entry, after any parent directory not written yet.
    fn emit(&mut self, parts: &[OsString], found: &Found) -> Result<()> {
        self.ensure_parents(&parts[..parts.len() - 1])?;
        self.write(parts, found)
    }

    fn ensure_parents(&mut self, parents: &[OsString]) -> Result<()> {
        for i in 0..parents.len() {
            if self.emitted_dirs.contains(&path::join(&parents[..=i])) {
                continue;
            }
            let shown = || String::from_utf8_lossy(&path::join(&parents[..=i])).into_owned();
            let dir = self.upper.open_dir_beneath(&parents[..i]).map_err(Error::io("open", shown()))?;
            let found = find(&dir, &parents[i], shown)?
                .ok_or_else(|| Error::io("open", shown())(io::Error::from(io::ErrorKind::NotFound)))?;
            self.write(&parents[..=i], &found)?;
        }
        Ok(())
    }

    fn write(&mut self, parts: &[OsString], found: &Found) -> Result<()> {
        let mut name = path::join(parts);
        let shown = String::from_utf8_lossy(&name).into_owned();
        let kind = match found.kind() {
            SFlag::S_IFREG => Kind::Regular,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            SFlag::S_IFCHR => Kind::Char,
            SFlag::S_IFBLK => Kind::Block,
            SFlag::S_IFIFO => Kind::Fifo,
            _ => return Err(Error::Unsupported { path: shown, reason: "unknown file type".into() }),
        };
        if kind == Kind::Dir {
            self.emitted_dirs.insert(name.clone());
            name.push(b'/');
        }
        let mut entry = header(name, kind, &found.st);
        if let Some(link) = &found.link {
            entry.link = link.as_bytes().to_vec();
        }
        if matches!(kind, Kind::Char | Kind::Block) {
            entry.dev_major = libc::major(found.st.st_rdev);
            entry.dev_minor = libc::minor(found.st.st_rdev);
        }
        if kind == Kind::Regular {
            entry.size = found.st.st_size as u64;
        }
        entry.xattrs = found.exported_xattrs().cloned().collect();
        tarfmt::write_header(&mut self.out, &entry).map_err(Error::Write)?;
        if kind == Kind::Regular {
            self.copy_data(found, entry.size, &shown)?;
        }
        Ok(())
    }

    fn copy_data(&mut self, found: &Found, size: u64, shown: &str) -> Result<()> {
        let file = found.node.open_regular().map_err(Error::io("open", shown))?;
        let mut file = file.take(size);
        let mut copied = 0u64;
        loop {
            let n = file.read(&mut self.buf).map_err(Error::io("read", shown))?;
            if n == 0 {
                break;
            }
            self.out.write_all(&self.buf[..n]).map_err(Error::Write)?;
            copied += n as u64;
        }
        if copied != size {
            let changed = io::Error::other("file shrank while being read");
            return Err(Error::io("read", shown)(changed));
        }
        tarfmt::write_padding(&mut self.out, size).map_err(Error::Write)
    }

    fn link(&mut self, parts: &[OsString], found: &Found, source: &[u8]) -> Result<()> {
        self.ensure_parents(&parts[..parts.len() - 1])?;
        let mut entry = header(path::join(parts), Kind::Link, &found.st);
        entry.link = source.to_vec();
        tarfmt::write_header(&mut self.out, &entry).map_err(Error::Write)
    }

    fn whiteout(&mut self, parts: &[OsString]) -> Result<()> {
        let (name, parents) = parts.split_last().expect("a path has a name");
        self.ensure_parents(parents)?;
        self.marker(parents, &[whiteout::PREFIX, name.as_bytes()].concat())
    }

    fn opaque(&mut self, dir: &[OsString]) -> Result<()> {
        self.marker(dir, OPAQUE)
    }

    /// A whiteout file: empty, mode 0, owned by 0:0, mtime 0.
    fn marker(&mut self, dir: &[OsString], name: &[u8]) -> Result<()> {
        let mut full = path::join(dir);
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(name);
        tarfmt::write_header(&mut self.out, &Entry::new(full, Kind::Regular)).map_err(Error::Write)
    }
}

fn header(name: Vec<u8>, kind: Kind, st: &FileStat) -> Entry {
    let mut entry = Entry::new(name, kind);
    entry.mode = st.st_mode & 0o7777;
    entry.uid = st.st_uid;
    entry.gid = st.st_gid;
    // Whole seconds, as containerd writes them.
    entry.mtime = st.st_mtime;
    entry
}

/// Whether `up` is unchanged from `low`.
fn same(low: &Found, up: &Found) -> io::Result<bool> {
    let (l, u) = (&low.st, &up.st);
    let meta_same = low.kind() == up.kind()
        && l.st_mode & 0o7777 == u.st_mode & 0o7777
        && (l.st_uid, l.st_gid) == (u.st_uid, u.st_gid)
        && (l.st_mtime, l.st_mtime_nsec) == (u.st_mtime, u.st_mtime_nsec)
        && low.exported_xattrs().eq(up.exported_xattrs())
        && low.link == up.link;
    if !meta_same {
        return Ok(false);
    }
    match up.kind() {
        SFlag::S_IFCHR | SFlag::S_IFBLK => Ok(l.st_rdev == u.st_rdev),
        SFlag::S_IFREG if l.st_size != u.st_size => Ok(false),
        // Mtimes in whole seconds may have come from a tar (truncated): look at the content.
        SFlag::S_IFREG if u.st_mtime_nsec == 0 => same_content(&low.node, &up.node),
        _ => Ok(true),
    }
}

fn same_content(a: &Node, b: &Node) -> io::Result<bool> {
    let (mut a, mut b) = (a.open_regular()?, b.open_regular()?);
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let (n, m) = (read_full(&mut a, &mut x)?, read_full(&mut b, &mut y)?);
        if x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
