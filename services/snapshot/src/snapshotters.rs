//! The snapshotters this service runs, chosen per request by name.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use berth_store::Store;

use crate::driver::{Driver, Native, Overlay, overlay};
use crate::error::{Error, Result};
use crate::snapshotter::Snapshotter;

/// The snapshotter used when a request names none (containerd's default on Linux).
pub const DEFAULT: &str = "overlayfs";

pub struct Snapshotters {
    by_name: BTreeMap<&'static str, Arc<Snapshotter>>,
}

impl Snapshotters {
    /// Opens `native`, and `overlayfs` when overlay mounts work under `root` (otherwise it is
    /// not loaded, as in containerd, and requests for it are refused).
    pub async fn open(root: &Path, store: Arc<dyn Store>) -> Result<Snapshotters> {
        let mut drivers: Vec<Arc<dyn Driver>> = vec![Arc::new(Native)];
        let overlay_dir = root.join("overlayfs");
        std::fs::create_dir_all(&overlay_dir).map_err(|e| Error::io(format!("create {}", overlay_dir.display()), e))?;
        let check = tokio::task::spawn_blocking(move || overlay::check_support(&overlay_dir))
            .await
            .map_err(|e| Error::Internal(format!("overlay check failed: {e}")))?;
        match check {
            Ok(()) => drivers.push(Arc::new(Overlay::new())),
            Err(why) => {
                tracing::warn!(reason = %why, "overlayfs does not work here; the overlayfs snapshotter is not loaded")
            }
        }
        Self::with_drivers(root, store, drivers).await
    }

    /// Opens exactly the given snapshotters (tests choose one).
    pub async fn with_drivers(
        root: &Path,
        store: Arc<dyn Store>,
        drivers: Vec<Arc<dyn Driver>>,
    ) -> Result<Snapshotters> {
        let mut by_name = BTreeMap::new();
        for driver in drivers {
            let snapshotter = Snapshotter::open(root, driver, Arc::clone(&store)).await?;
            by_name.insert(snapshotter.name(), Arc::new(snapshotter));
        }
        Ok(Snapshotters { by_name })
    }

    /// The snapshotter called `name`; the default for an empty name.
    pub fn get(&self, name: &str) -> Result<Arc<Snapshotter>> {
        let name = if name.is_empty() { DEFAULT } else { name };
        self.by_name.get(name).cloned().ok_or_else(|| {
            let loaded: Vec<&str> = self.names().collect();
            Error::InvalidArgument(format!("snapshotter not loaded: {name} (loaded: {})", loaded.join(", ")))
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_name.keys().copied()
    }
}
