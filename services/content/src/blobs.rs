//! The blob directory: `root/blobs/sha256/<hex>`, one read-only file per committed digest.
//!
//! A file only ever appears here by `rename` of fully written, fsynced and verified data, so a
//! file under its digest's name always holds exactly that content. Which namespaces may see a
//! blob is the records' business, not this directory's.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::{ALGORITHM, Digest};
use crate::error::{Error, Result};

pub struct Blobs {
    dir: PathBuf,
}

impl Blobs {
    /// Opens (creating) `root/blobs/sha256` and removes anything that is not a blob.
    pub fn open(root: &Path) -> Result<Blobs> {
        let dir = root.join("blobs").join(ALGORITHM);
        fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let blobs = Blobs { dir };
        blobs.remove_strays()?;
        Ok(blobs)
    }

    /// Only `<64 hex>` files belong here; anything else (a temp file from an interrupted
    /// commit of an older layout, a stray copy) is removed so it can never be listed.
    fn remove_strays(&self) -> Result<()> {
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io(format!("read {}", self.dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("read {}", self.dir.display()), e))?;
            let name = entry.file_name();
            let is_blob = name.to_str().is_some_and(|n| Digest::parse(&format!("{ALGORITHM}:{n}")).is_ok());
            if !is_blob {
                let path = entry.path();
                tracing::warn!(path = %path.display(), "removing stray file from the blob directory");
                let removed = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                removed.map_err(|e| Error::io(format!("remove {}", path.display()), e))?;
            }
        }
        Ok(())
    }

    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.encoded())
    }

    /// Size of the blob, `None` when it is not on disk.
    pub fn size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("stat {}", path.display()), e)),
        }
    }

    /// Opens the blob for reading, `None` when it is not on disk.
    pub fn open_file(&self, digest: &Digest) -> Result<Option<File>> {
        let path = self.path(digest);
        match File::open(&path) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("open {}", path.display()), e)),
        }
    }

    /// Moves `data` (already fsynced and verified to hash to `digest`) into place and makes
    /// the rename durable. `data` must be on the same filesystem (it lives under the root).
    pub fn commit(&self, data: &Path, digest: &Digest) -> Result<()> {
        // Committed content is immutable; make accidental writes fail loudly.
        fs::set_permissions(data, fs::Permissions::from_mode(0o444))
            .map_err(|e| Error::io(format!("chmod {}", data.display()), e))?;
        let target = self.path(digest);
        fs::rename(data, &target)
            .map_err(|e| Error::io(format!("rename {} to {}", data.display(), target.display()), e))?;
        sync_dir(&self.dir)
    }

    /// Removes the blob file; false when it was not there.
    pub fn remove(&self, digest: &Digest) -> Result<bool> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }
}

/// fsync of a directory: makes renames and removals in it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_moves_data_into_place_read_only() {
        let root = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(root.path()).unwrap();
        let digest = Digest::of(b"hello");
        assert_eq!(blobs.size(&digest).unwrap(), None);
        assert!(blobs.open_file(&digest).unwrap().is_none());

        let staged = root.path().join("staged");
        fs::write(&staged, b"hello").unwrap();
        blobs.commit(&staged, &digest).unwrap();
        assert!(!staged.exists());
        assert_eq!(blobs.size(&digest).unwrap(), Some(5));
        assert_eq!(fs::read(blobs.path(&digest)).unwrap(), b"hello");
        let mode = fs::metadata(blobs.path(&digest)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);
        assert!(blobs.path(&digest).starts_with(root.path().join("blobs/sha256")));

        assert!(blobs.remove(&digest).unwrap());
        assert!(!blobs.remove(&digest).unwrap());
        assert_eq!(blobs.size(&digest).unwrap(), None);
    }

    #[test]
    fn open_removes_strays_and_keeps_blobs() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("blobs/sha256");
        fs::create_dir_all(&dir).unwrap();
        let digest = Digest::of(b"kept");
        fs::write(dir.join(digest.encoded()), b"kept").unwrap();
        fs::write(dir.join(format!("{}.tmp", digest.encoded())), b"half").unwrap();
        fs::create_dir(dir.join("junk")).unwrap();

        let blobs = Blobs::open(root.path()).unwrap();
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(digest.encoded())]);
        assert_eq!(blobs.size(&digest).unwrap(), Some(4));
    }
}
