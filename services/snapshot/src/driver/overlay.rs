//! The overlayfs snapshotter: each snapshot is an overlay upper directory (`<id>/fs`, with
//! `<id>/work` for active ones); its parents are the lower directories.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::driver::{Driver, Layers};
use crate::error::{Error, Result};
use crate::info::Kind;
use crate::mount::Mount;

pub struct Overlay {
    /// Adds `index=off`: with the inode index on, overlayfs refuses lower layers that were
    /// mounted with another upper before (containerd does the same).
    index_off: bool,
}

impl Overlay {
    pub fn new() -> Overlay {
        Overlay { index_off: Path::new("/sys/module/overlay/parameters/index").exists() }
    }
}

impl Default for Overlay {
    fn default() -> Self {
        Overlay::new()
    }
}

/// Checks that overlayfs works with directories under `dir` (the kernel has it, this process
/// may mount, `dir`'s filesystem can hold an upper layer) by mounting a tiny overlay, as
/// containerd does before it loads the snapshotter. `Err` says why not.
pub fn check_support(dir: &Path) -> Result<(), String> {
    let check = dir.join("check");
    let merged = check.join("merged");
    // A previous check may have been interrupted while mounted.
    if check.exists() {
        crate::mount::unmount_all(&merged).map_err(|e| e.to_string())?;
        std::fs::remove_dir_all(&check).map_err(|e| format!("remove {}: {e}", check.display()))?;
    }
    for sub in ["lower", "upper", "work", "merged"] {
        let path = check.join(sub);
        std::fs::create_dir_all(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    }
    let options = vec![
        format!("lowerdir={}", check.join("lower").display()),
        format!("upperdir={}", check.join("upper").display()),
        format!("workdir={}", check.join("work").display()),
    ];
    let mount = Mount { kind: "overlay".to_string(), source: "overlay".to_string(), target: String::new(), options };
    let mounted = crate::mount::mount_all(&[mount], &merged).map_err(|e| e.to_string());
    let unmounted = crate::mount::unmount_all(&merged).map_err(|e| e.to_string());
    let removed = std::fs::remove_dir_all(&check).map_err(|e| format!("remove {}: {e}", check.display()));
    mounted.and(unmounted).and(removed)
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new().mode(mode).create(path).map_err(|e| Error::io(format!("create {}", path.display()), e))
}

fn fs(dir: &Path) -> PathBuf {
    dir.join("fs")
}

impl Driver for Overlay {
    fn name(&self) -> &'static str {
        "overlayfs"
    }

    fn populate(&self, dir: &Path, kind: Kind, parent: Option<&Path>) -> Result<()> {
        let upper = fs(dir);
        mkdir(&upper, 0o755)?;
        if kind == Kind::Active {
            mkdir(&dir.join("work"), 0o711)?;
        }
        // The merged root takes the upper root's owner: keep the parent's, or a chown of
        // `/` in a lower layer would be undone by this one.
        if let Some(parent) = parent {
            let lower = fs(parent);
            let meta = std::fs::metadata(&lower).map_err(|e| Error::io(format!("stat {}", lower.display()), e))?;
            std::os::unix::fs::lchown(&upper, Some(meta.uid()), Some(meta.gid()))
                .map_err(|e| Error::io(format!("chown {}", upper.display()), e))?;
        }
        Ok(())
    }

    fn files(&self, dir: &Path) -> PathBuf {
        fs(dir)
    }

    fn mounts(&self, layers: &Layers<'_>) -> Vec<Mount> {
        let view = layers.kind != Kind::Active;
        match layers.parents {
            // Overlay needs a lower layer: a snapshot without parents is its directory.
            [] => return vec![Mount::bind(&fs(layers.dir), view)],
            // A view of one layer is that layer, read-only.
            [parent] if view => return vec![Mount::bind(&fs(parent), true)],
            _ => {}
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if !view {
            options.push(format!("workdir={}", layers.dir.join("work").display()));
            options.push(format!("upperdir={}", fs(layers.dir).display()));
        }
        let lower: Vec<String> = layers.parents.iter().map(|p| fs(p).display().to_string()).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount { kind: "overlay".to_string(), source: "overlay".to_string(), target: String::new(), options }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay() -> Overlay {
        Overlay { index_off: true }
    }

    #[test]
    fn mounts_like_containerd() {
        let dir = Path::new("/s/3");
        let parents = [PathBuf::from("/s/2"), PathBuf::from("/s/1")];
        let mounts = |kind, parents: &[PathBuf]| overlay().mounts(&Layers { kind, dir, parents });

        assert_eq!(mounts(Kind::Active, &[]), [Mount::bind(Path::new("/s/3/fs"), false)]);
        assert_eq!(mounts(Kind::View, &[]), [Mount::bind(Path::new("/s/3/fs"), true)]);
        assert_eq!(mounts(Kind::View, &parents[1..]), [Mount::bind(Path::new("/s/1/fs"), true)]);
        let active = &mounts(Kind::Active, &parents)[0];
        assert_eq!((active.kind.as_str(), active.source.as_str()), ("overlay", "overlay"));
        assert_eq!(active.options, ["index=off", "workdir=/s/3/work", "upperdir=/s/3/fs", "lowerdir=/s/2/fs:/s/1/fs"]);
        let view = &mounts(Kind::View, &parents)[0];
        assert_eq!(view.options, ["index=off", "lowerdir=/s/2/fs:/s/1/fs"]);
        let one = &mounts(Kind::Active, &parents[1..])[0];
        assert_eq!(one.options, ["index=off", "workdir=/s/3/work", "upperdir=/s/3/fs", "lowerdir=/s/1/fs"]);
    }
}
