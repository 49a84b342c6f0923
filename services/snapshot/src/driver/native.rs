//! The native snapshotter: each snapshot is a full copy of its parent, bind mounted. Slow to
//! prepare and large on disk, but works on any filesystem and needs no overlay support.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::disk::copy_dir;
use crate::driver::{Driver, Layers};
use crate::error::{Error, Result};
use crate::info::Kind;
use crate::mount::Mount;

#[derive(Default)]
pub struct Native;

impl Driver for Native {
    fn name(&self) -> &'static str {
        "native"
    }

    fn populate(&self, dir: &Path, _kind: Kind, parent: Option<&Path>) -> Result<()> {
        match parent {
            Some(parent) => copy_dir(parent, dir),
            None => std::fs::set_permissions(dir, Permissions::from_mode(0o755))
                .map_err(|e| Error::io(format!("chmod {}", dir.display()), e)),
        }
    }

    fn files(&self, dir: &Path) -> PathBuf {
        dir.to_path_buf()
    }

    fn mounts(&self, layers: &Layers<'_>) -> Vec<Mount> {
        vec![Mount::bind(layers.dir, layers.kind != Kind::Active)]
    }
}
