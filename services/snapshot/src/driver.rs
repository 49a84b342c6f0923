//! What differs between snapshotters: how a new snapshot's directory is filled, where its
//! files are, and how it is mounted. Records, ids and crash safety are shared
//! ([`crate::snapshotter`]); a driver only sees directories.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::info::Kind;
use crate::mount::Mount;

pub mod native;
pub mod overlay;

pub use native::Native;
pub use overlay::Overlay;

/// The directories of one snapshot and its ancestors, as a driver needs them for mounts.
pub struct Layers<'a> {
    pub kind: Kind,
    /// The snapshot's own directory.
    pub dir: &'a Path,
    /// Directories of its ancestors, nearest first.
    pub parents: &'a [PathBuf],
}

/// One kind of snapshotter (`overlayfs`, `native`).
pub trait Driver: Send + Sync + 'static {
    /// The name clients ask for (`snapshotter` in every request).
    fn name(&self) -> &'static str;

    /// Fills `dir` (new, empty, not yet visible) for a snapshot of `kind` whose nearest
    /// parent lives in `parent`. Runs on a blocking thread.
    fn populate(&self, dir: &Path, kind: Kind, parent: Option<&Path>) -> Result<()>;

    /// Where the snapshot's own files are: what Usage measures.
    fn files(&self, dir: &Path) -> PathBuf;

    /// The mounts that assemble the snapshot's filesystem.
    fn mounts(&self, layers: &Layers<'_>) -> Vec<Mount>;
}
