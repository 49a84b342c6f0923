//! Ingests: partial writes that become blobs once committed.
//!
//! Each lives in `root/ingest/<sha256(namespace NUL ref)>/`, so whatever a client puts in a ref
//! (`/`, `..`) never becomes a path. The directory holds `data` (the bytes so far) and `meta`, a
//! small JSON file with the ref, namespace, total, expected digest and timestamps. The offset is
//! the length of `data`, and the hash state is rebuilt by reading `data` again when an ingest is
//! resumed (after a dropped stream or a restart), so the reported offset and digest are always
//! those of the bytes on disk. After a kill `data` may be longer than what the client saw
//! acknowledged; the client asks Status and carries on from there, as with containerd.
//!
//! Writes are not fsynced (only commit is): a killed process loses nothing the kernel has,
//! and a power loss only costs a resume from an earlier offset.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::time::{from_nanos, now_nanos};

/// Longest ref accepted, in bytes. containerd's own refs (`layer-sha256:<hex>`) are ~80.
pub const MAX_REF_LENGTH: usize = 1024;

const DATA: &str = "data";
const META: &str = "meta";
/// Marks directories and files that are not (yet, or any more) an ingest; see `Ingests::open`.
const TEMP_MARK: &str = ".tmp";
/// Read size when re-hashing `data` on resume.
const REHASH_CHUNK: usize = 4 << 20;
/// Temporary files younger than this are left alone at start: they may belong to a create,
/// remove or meta update in progress on another replica sharing the directory.
const LEFTOVER_AGE: Duration = Duration::from_secs(60);

/// Checks a client-chosen ref. Refs are hashed before they become paths, so only emptiness,
/// NUL (the separator in the hash input) and absurd lengths are refused.
pub fn validate_ref(reference: &str) -> Result<()> {
    if reference.is_empty() {
        return Err(Error::InvalidArgument("ref must not be empty".into()));
    }
    if reference.len() > MAX_REF_LENGTH {
        let shown: String = reference.chars().take(64).collect();
        return Err(Error::InvalidArgument(format!(
            "ref {shown:?}... is {} bytes long, longer than {MAX_REF_LENGTH}",
            reference.len()
        )));
    }
    if reference.contains('\0') {
        return Err(Error::InvalidArgument(format!("ref {reference:?} must not contain NUL")));
    }
    Ok(())
}

/// Names the ingest of `reference` in `namespace`: its directory, and its lock across replicas.
pub fn ingest_id(namespace: &str, reference: &str) -> String {
    let mut hasher = sha2::Sha256::new();
    hasher.update(namespace.as_bytes());
    hasher.update([0u8]);
    hasher.update(reference.as_bytes());
    hex::encode(hasher.finalize())
}

/// What `meta` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    #[serde(rename = "ref")]
    reference: String,
    namespace: String,
    #[serde(default)]
    total: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expected: Option<String>,
    started_at: i64,
    updated_at: i64,
}

/// The state of an ingest as Status and ListStatuses report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub reference: String,
    pub offset: i64,
    pub total: i64,
    pub expected: Option<String>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

/// The ingest directory.
pub struct Ingests {
    dir: PathBuf,
}

impl Ingests {
    /// Opens (creating) `root/ingest` and cleans up after interrupted work: temporary
    /// directories and files, ingests whose `meta` cannot be read (nobody can name them), and
    /// ingests whose `data` is gone (a commit renamed it into the blobs, then stopped).
    pub fn open(root: &Path) -> Result<Ingests> {
        let dir = root.join("ingest");
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let ingests = Ingests { dir };
        ingests.clean()?;
        Ok(ingests)
    }

    fn clean(&self) -> Result<()> {
        for entry in read_dir(&self.dir)? {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let reason = if name.contains(TEMP_MARK) {
                if !is_leftover(&path) {
                    continue;
                }
                Some("interrupted create or abort")
            } else if !path.is_dir() {
                Some("not an ingest directory")
            } else if read_meta(&path).is_err() {
                Some("unreadable meta")
            } else if !path.join(DATA).is_file() {
                Some("data already committed or missing")
            } else {
                let stale_meta = path.join(format!("{META}{TEMP_MARK}"));
                if stale_meta.exists() && is_leftover(&stale_meta) {
                    fs::remove_file(&stale_meta)
                        .map_err(|e| Error::io(format!("remove {}", stale_meta.display()), e))?;
                }
                None
            };
            if let Some(reason) = reason {
                tracing::info!(path = %path.display(), reason, "removing leftover from the ingest directory");
                remove_path(&path)?;
            }
        }
        Ok(())
    }

    fn dir_of(&self, namespace: &str, reference: &str) -> PathBuf {
        self.dir.join(ingest_id(namespace, reference))
    }

    /// Status of the ingest `reference` in `namespace`; `None` when there is none.
    pub fn status(&self, namespace: &str, reference: &str) -> Result<Option<Status>> {
        let dir = self.dir_of(namespace, reference);
        match status_of(&dir) {
            Ok((meta, status)) if meta.namespace == namespace && meta.reference == reference => Ok(Some(status)),
            // A hash collision cannot happen in practice; treat a mismatch as absent.
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every ingest of `namespace`, in no particular order.
    pub fn list(&self, namespace: &str) -> Result<Vec<Status>> {
        let mut statuses = Vec::new();
        for entry in read_dir(&self.dir)? {
            if entry.file_name().to_string_lossy().contains(TEMP_MARK) {
                continue;
            }
            match status_of(&entry.path()) {
                Ok((meta, status)) if meta.namespace == namespace => statuses.push(status),
                Ok(_) => {}
                // Committed or aborted while we looked.
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(statuses)
    }

    /// Removes the ingest; false when there was none.
    pub fn remove(&self, namespace: &str, reference: &str) -> Result<bool> {
        let dir = self.dir_of(namespace, reference);
        match fs::symlink_metadata(&dir) {
            Ok(_) => {
                remove_path(&dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("stat {}", dir.display()), e)),
        }
    }

    /// Opens the ingest for writing, creating it when missing. An existing one is resumed:
    /// its `data` is read through once to rebuild the hash. The caller holds the ref's lock.
    pub fn open_ingest(&self, namespace: &str, reference: &str) -> Result<Ingest> {
        let dir = self.dir_of(namespace, reference);
        if !dir.exists() {
            self.create(&dir, namespace, reference)?;
        }
        match Ingest::resume(dir.clone()) {
            Ok(ingest) if ingest.meta.namespace == namespace && ingest.meta.reference == reference => Ok(ingest),
            Ok(_) => Err(Error::Internal(format!("ingest {} belongs to another ref", dir.display()))),
            Err(e) if is_not_found(&e) => {
                // Half-removed or damaged: start it over.
                tracing::warn!(path = %dir.display(), error = %e, "restarting an unreadable ingest");
                remove_path(&dir)?;
                self.create(&dir, namespace, reference)?;
                Ingest::resume(dir)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the directory under a temporary name and renames it into place, so an ingest
    /// directory is never seen without its `meta`.
    fn create(&self, dir: &Path, namespace: &str, reference: &str) -> Result<()> {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let temp = temp_name(dir, &format!("create-{}", SEQUENCE.fetch_add(1, Ordering::Relaxed)));
        fs::create_dir(&temp).map_err(|e| Error::io(format!("create {}", temp.display()), e))?;
        let now = now_nanos();
        let meta = Meta {
            reference: reference.to_string(),
            namespace: namespace.to_string(),
            total: 0,
            expected: None,
            started_at: now,
            updated_at: now,
        };
        let result = write_meta(&temp, &meta)
            .and_then(|()| {
                File::create(temp.join(DATA))
                    .map(drop)
                    .map_err(|e| Error::io(format!("create {}", temp.join(DATA).display()), e))
            })
            .and_then(|()| match fs::rename(&temp, dir) {
                Ok(()) => Ok(()),
                // Someone created it first (another replica); use theirs.
                Err(e) if dir.exists() => {
                    tracing::debug!(path = %dir.display(), error = %e, "ingest created concurrently");
                    Ok(())
                }
                Err(e) => Err(Error::io(format!("rename {} to {}", temp.display(), dir.display()), e)),
            });
        if temp.exists() {
            let _ = fs::remove_dir_all(&temp);
        }
        result
    }
}

/// One open ingest: the `data` file, the running hash of its contents, and its meta.
pub struct Ingest {
    dir: PathBuf,
    meta: Meta,
    file: File,
    hasher: sha2::Sha256,
    offset: u64,
}

impl Ingest {
    fn resume(dir: PathBuf) -> Result<Ingest> {
        let meta = read_meta(&dir)?;
        let path = dir.join(DATA);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        let mut hasher = sha2::Sha256::new();
        let mut offset = 0u64;
        let mut buffer = vec![0u8; REHASH_CHUNK];
        loop {
            let n = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
            };
            hasher.update(&buffer[..n]);
            offset += n as u64;
        }
        Ok(Ingest { dir, meta, file, hasher, offset })
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn total(&self) -> i64 {
        self.meta.total
    }

    pub fn expected(&self) -> Option<&str> {
        self.meta.expected.as_deref()
    }

    pub fn started_at(&self) -> SystemTime {
        from_nanos(self.meta.started_at)
    }

    pub fn updated_at(&self) -> SystemTime {
        from_nanos(self.meta.updated_at)
    }

    /// Digest of the bytes written so far.
    pub fn digest(&self) -> Digest {
        Digest::from_hasher(self.hasher.clone())
    }

    /// Appends `data` at the current offset and hashes it.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if let Err(e) = self.file.write_all_at(data, self.offset) {
            // Keep `data` exactly as long as what was hashed.
            let _ = self.file.set_len(self.offset);
            return Err(Error::io(format!("write {}", self.dir.join(DATA).display()), e));
        }
        self.hasher.update(data);
        self.offset += data.len() as u64;
        // Kept in memory only: Status takes the newer of this file's mtime and `meta`.
        self.meta.updated_at = now_nanos();
        Ok(())
    }

    /// Throws away everything written so far (a WRITE at offset 0 restarts the ingest).
    pub fn truncate(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(|e| Error::io(format!("truncate {}", self.dir.join(DATA).display()), e))?;
        self.hasher = sha2::Sha256::new();
        self.offset = 0;
        self.meta.updated_at = now_nanos();
        Ok(())
    }

    /// Records the size the client announced (persisted; 0 means unknown).
    pub fn set_total(&mut self, total: i64) -> Result<()> {
        if self.meta.total != total {
            self.meta.total = total;
            self.meta.updated_at = now_nanos();
            write_meta(&self.dir, &self.meta)?;
        }
        Ok(())
    }

    /// Records the digest the client announced (persisted).
    pub fn set_expected(&mut self, expected: &Digest) -> Result<()> {
        if self.meta.expected.as_deref() != Some(expected.as_str()) {
            self.meta.expected = Some(expected.to_string());
            self.meta.updated_at = now_nanos();
            write_meta(&self.dir, &self.meta)?;
        }
        Ok(())
    }

    /// Makes `data` durable and returns its path, digest and size for the commit.
    ///
    /// NotFound when the ingest is not this one any more: an Abort (on another replica,
    /// which cannot tell this writer) removed it, and `data` is no longer the open file.
    pub fn finish(&mut self) -> Result<(PathBuf, Digest, u64)> {
        let path = self.dir.join(DATA);
        // fdatasync: the data and the length are what a reader of the blob needs.
        self.file.sync_data().map_err(|e| Error::io(format!("fsync {}", path.display()), e))?;
        let open = self.file.metadata().map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        let named = match fs::metadata(&path) {
            Ok(named) => Some(named),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        if named.is_none_or(|named| (named.dev(), named.ino()) != (open.dev(), open.ino())) {
            return Err(Error::NotFound(format!(
                "ref {}: ingest was aborted in namespace {}",
                self.meta.reference, self.meta.namespace
            )));
        }
        let length = open.len();
        if length != self.offset {
            return Err(Error::Internal(format!(
                "{} is {length} bytes long but {} were written",
                path.display(),
                self.offset
            )));
        }
        Ok((path, self.digest(), self.offset))
    }

    /// Removes the ingest directory (after a commit moved `data` out, or to drop it).
    pub fn remove(self) -> Result<()> {
        remove_path(&self.dir)
    }
}

/// Whether a temporary file or directory is old enough to be nobody's work in progress.
fn is_leftover(path: &Path) -> bool {
    let modified = fs::symlink_metadata(path).and_then(|meta| meta.modified());
    // Unknown age (or gone already): leave it; the next start looks again.
    modified.is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age >= LEFTOVER_AGE))
}

fn status_of(dir: &Path) -> Result<(Meta, Status)> {
    let meta = read_meta(dir)?;
    let path = dir.join(DATA);
    let data = fs::metadata(&path).map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    // Writes don't rewrite `meta`; the data file's mtime is the better "updated at".
    let mut updated_at = from_nanos(meta.updated_at);
    if let Ok(modified) = data.modified() {
        updated_at = updated_at.max(modified);
    }
    let status = Status {
        reference: meta.reference.clone(),
        offset: i64::try_from(data.len()).unwrap_or(i64::MAX),
        total: meta.total,
        expected: meta.expected.clone(),
        started_at: from_nanos(meta.started_at),
        updated_at,
    };
    Ok((meta, status))
}

fn read_meta(dir: &Path) -> Result<Meta> {
    let path = dir.join(META);
    let raw = fs::read(&path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    serde_json::from_slice(&raw).map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
}

/// Replaces `meta` atomically (write aside, rename over).
fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let path = dir.join(META);
    let temp = dir.join(format!("{META}{TEMP_MARK}"));
    let raw = serde_json::to_vec(meta).map_err(|e| Error::Internal(format!("encode {}: {e}", path.display())))?;
    fs::write(&temp, raw).map_err(|e| Error::io(format!("write {}", temp.display()), e))?;
    fs::rename(&temp, &path).map_err(|e| Error::io(format!("rename {} to {}", temp.display(), path.display()), e))
}

fn temp_name(dir: &Path, purpose: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dir.with_file_name(format!("{name}{TEMP_MARK}-{purpose}-{}", std::process::id()))
}

/// Removes a directory by first renaming it aside, so a half-removed ingest never remains
/// under its real name (a leftover temp name is cleaned at the next start).
fn remove_path(path: &Path) -> Result<()> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let aside = if path.file_name().is_some_and(|n| n.to_string_lossy().contains(TEMP_MARK)) {
        path.to_path_buf()
    } else {
        let aside = temp_name(path, &format!("remove-{}", SEQUENCE.fetch_add(1, Ordering::Relaxed)));
        match fs::rename(path, &aside) {
            Ok(()) => aside,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io(format!("rename {} aside", path.display()), e)),
        }
    };
    let removed = if aside.is_dir() { fs::remove_dir_all(&aside) } else { fs::remove_file(&aside) };
    match removed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", aside.display()), e)),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(format!("read {}", dir.display()), e))?;
    entries.collect::<std::io::Result<Vec<_>>>().map_err(|e| Error::io(format!("read {}", dir.display()), e))
}

fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Io { source, .. } if source.kind() == ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingests() -> (tempfile::TempDir, Ingests) {
        let root = tempfile::tempdir().unwrap();
        let ingests = Ingests::open(root.path()).unwrap();
        (root, ingests)
    }

    #[test]
    fn refs_are_validated_and_hashed_into_paths() {
        assert!(validate_ref("layer-sha256:abc").is_ok());
        assert!(validate_ref("../../etc").is_ok());
        for bad in ["", "a\0b", &"r".repeat(MAX_REF_LENGTH + 1)] {
            assert!(matches!(validate_ref(bad), Err(Error::InvalidArgument(_))));
        }
        let (root, ingests) = ingests();
        let sneaky = ingests.dir_of("default", "../../../escape");
        assert_eq!(sneaky.parent().unwrap(), root.path().join("ingest"));
        assert_ne!(ingests.dir_of("a", "b"), ingests.dir_of("b", "a"));
        assert_ne!(ingests.dir_of("ab", "c"), ingests.dir_of("a", "bc"));
    }

    #[test]
    fn resume_rebuilds_offset_and_digest() {
        let (_root, ingests) = ingests();
        let mut ingest = ingests.open_ingest("ns", "ref").unwrap();
        ingest.write(b"hello ").unwrap();
        ingest.set_total(11).unwrap();
        ingest.set_expected(&Digest::of(b"hello world")).unwrap();
        drop(ingest);

        let status = ingests.status("ns", "ref").unwrap().unwrap();
        assert_eq!((status.offset, status.total), (6, 11));
        assert_eq!(status.expected.as_deref(), Some(Digest::of(b"hello world").as_str()));
        assert!(ingests.status("other", "ref").unwrap().is_none());

        let mut ingest = ingests.open_ingest("ns", "ref").unwrap();
        assert_eq!(ingest.offset(), 6);
        assert_eq!(ingest.digest(), Digest::of(b"hello "));
        assert_eq!(ingest.total(), 11);
        ingest.write(b"world").unwrap();
        assert_eq!(ingest.digest(), Digest::of(b"hello world"));
        let (path, digest, size) = ingest.finish().unwrap();
        assert_eq!(fs::read(path).unwrap(), b"hello world");
        assert_eq!((digest, size), (Digest::of(b"hello world"), 11));
    }

    #[test]
    fn truncate_restarts() {
        let (_root, ingests) = ingests();
        let mut ingest = ingests.open_ingest("ns", "ref").unwrap();
        ingest.write(b"aaaaaaaa").unwrap();
        ingest.truncate().unwrap();
        ingest.write(b"bb").unwrap();
        assert_eq!(ingest.digest(), Digest::of(b"bb"));
        drop(ingest);
        let ingest = ingests.open_ingest("ns", "ref").unwrap();
        assert_eq!((ingest.offset(), ingest.digest()), (2, Digest::of(b"bb")));
    }

    #[test]
    fn data_longer_than_acknowledged_is_the_new_offset() {
        let (_root, ingests) = ingests();
        let mut ingest = ingests.open_ingest("ns", "ref").unwrap();
        ingest.write(b"abc").unwrap();
        let data = ingest.dir.join(DATA);
        drop(ingest);
        // A write that reached the kernel but was never acknowledged before a kill.
        let file = OpenOptions::new().append(true).open(&data).unwrap();
        file.write_all_at(b"def", 3).unwrap();
        let ingest = ingests.open_ingest("ns", "ref").unwrap();
        assert_eq!((ingest.offset(), ingest.digest()), (6, Digest::of(b"abcdef")));
    }

    #[test]
    fn list_is_per_namespace_and_remove_drops() {
        let (_root, ingests) = ingests();
        for (ns, reference) in [("a", "one"), ("a", "two"), ("b", "one")] {
            ingests.open_ingest(ns, reference).unwrap().write(reference.as_bytes()).unwrap();
        }
        let mut refs: Vec<_> = ingests.list("a").unwrap().into_iter().map(|s| s.reference).collect();
        refs.sort();
        assert_eq!(refs, ["one", "two"]);
        assert!(ingests.remove("a", "one").unwrap());
        assert!(!ingests.remove("a", "one").unwrap());
        assert!(ingests.status("a", "one").unwrap().is_none());
        assert_eq!(ingests.status("b", "one").unwrap().unwrap().offset, 3);
    }

    #[test]
    fn open_cleans_leftovers_and_keeps_ingests() {
        let root = tempfile::tempdir().unwrap();
        let ingests = Ingests::open(root.path()).unwrap();
        ingests.open_ingest("ns", "kept").unwrap().write(b"kept").unwrap();
        let committed = ingests.open_ingest("ns", "committed").unwrap();
        fs::remove_file(committed.dir.join(DATA)).unwrap();
        let dir = root.path().join("ingest");
        let old = dir.join(format!("abc{TEMP_MARK}-create-1-1"));
        fs::create_dir(&old).unwrap();
        File::open(&old).unwrap().set_modified(SystemTime::now() - LEFTOVER_AGE * 2).unwrap();
        // Another replica's create in progress.
        let fresh = dir.join(format!("def{TEMP_MARK}-create-1-1"));
        fs::create_dir(&fresh).unwrap();
        fs::create_dir(dir.join("nometa")).unwrap();
        fs::write(dir.join("stray-file"), b"x").unwrap();

        let ingests = Ingests::open(root.path()).unwrap();
        let mut left: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        left.retain(|path| *path != fresh);
        assert_eq!(left.len(), 1, "only the live ingest and a fresh temp dir remain: {left:?}");
        assert!(fresh.exists());
        assert_eq!(ingests.status("ns", "kept").unwrap().unwrap().offset, 4);
        assert!(ingests.status("ns", "committed").unwrap().is_none());
    }
}
