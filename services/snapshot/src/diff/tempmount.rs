//! Mount sets mounted for the length of one call, in a private directory that is always
//! unmounted and removed again: when the work succeeds, fails or panics.

use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::mount::MntFlags;

use crate::diff::error::{DiffError, Result};
use crate::mount::{Mount, mount_all, unmount_all};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A mount set mounted on a fresh directory; see the module docs.
#[derive(Debug)]
pub struct TempMount {
    dir: PathBuf,
}

fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().mode(0o700).create(path)
}

impl TempMount {
    /// Mounts `mounts` in order on a new directory under `parent` (created, 0700, if missing).
    /// No mounts give an empty directory (containerd treats them as an empty tree).
    pub fn new(parent: &Path, mounts: &[Mount]) -> Result<TempMount> {
        match private_dir(parent) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                return Err(DiffError::io(format!("create {}", parent.display()), e));
            }
            _ => {}
        }
        let dir = loop {
            let dir = parent.join(format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
            match private_dir(&dir) {
                Ok(()) => break dir,
                // Left by an earlier process with our pid; the next start sweeps it.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(DiffError::io(format!("create {}", dir.display()), e)),
            }
        };
        // From here on, dropping the guard undoes whatever part of the mounts was made.
        let mounted = TempMount { dir };
        mount_all(mounts, &mounted.dir)?;
        Ok(mounted)
    }

    /// Where the tree is.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        release(&self.dir);
    }
}

/// Unmounts everything on `dir`, then removes it. Never deletes recursively: if a mount
/// stays, the directory stays too (and the next sweep tries again).
fn release(dir: &Path) -> bool {
    if let Err(e) = unmount_all(dir) {
        tracing::warn!(error = %e, dir = %dir.display(), "temporary mount is busy; detaching it");
        if let Err(errno) = nix::mount::umount2(dir, MntFlags::MNT_DETACH) {
            tracing::error!(%errno, dir = %dir.display(), "could not detach a temporary mount");
            return false;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "could not remove a temporary mount point");
            false
        }
    }
}

/// Unmounts and removes the temporary mount points a killed process left under `parent`.
/// Runs before the service takes calls. Returns how many were cleaned up.
pub fn sweep(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    entries.flatten().filter(|entry| release(&entry.path())).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_mounts_give_an_empty_directory_that_goes_away() {
        let parent = tempfile::tempdir().unwrap();
        let under = parent.path().join("tmpmounts");
        let path = {
            let mounted = TempMount::new(&under, &[]).unwrap();
            assert_eq!(std::fs::read_dir(mounted.path()).unwrap().count(), 0);
            mounted.path().to_path_buf()
        };
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&under).unwrap().count(), 0);
    }

    #[test]
    fn a_failed_mount_leaves_nothing() {
        let parent = tempfile::tempdir().unwrap();
        let missing = Mount::bind(&parent.path().join("missing"), true);
        let err = TempMount::new(parent.path(), &[missing]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn sweep_removes_left_over_directories_but_never_their_content() {
        let parent = tempfile::tempdir().unwrap();
        std::fs::create_dir(parent.path().join("1-0")).unwrap();
        std::fs::create_dir(parent.path().join("1-1")).unwrap();
        std::fs::write(parent.path().join("1-1/precious"), b"x").unwrap();
        assert_eq!(sweep(parent.path()), 1);
        assert!(parent.path().join("1-1/precious").exists());
    }
}
