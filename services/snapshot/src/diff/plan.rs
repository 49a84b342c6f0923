//! Reading mount sets as containerd's differ does: what can be worked on in place (an overlay
//! upper directory over known lower directories) and what has to be mounted first.

use std::path::{Path, PathBuf};

use crate::mount::Mount;

/// Where Apply writes a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyTo {
    /// One overlay mount with an upper directory: the layer goes straight into it (whiteouts as
    /// overlay whiteouts, implied directories copied from `parents`), without mounting — what
    /// containerd's overlay applier does.
    OverlayUpper { upper: PathBuf, parents: Vec<PathBuf> },
    /// Anything else is mounted, and the layer applied onto the mounted tree.
    Mounted(Vec<Mount>),
}

/// How Diff finds the changes from `left` to `right`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffFrom {
    /// `right` is one overlay layer over exactly `left`'s layers, so its upper directory holds
    /// the changes (whiteout devices, opaque directories): read in place, nothing mounted.
    /// `lower` is only there to be a directory.
    OverlayUpper { lower: PathBuf, upper: PathBuf },
    /// Both mounted read-only and compared file by file (containerd's walking differ).
    Compare { left: Vec<Mount>, right: Vec<Mount> },
}

/// The `upperdir=` and `lowerdir=` of overlay options (lowerdirs topmost first).
fn overlay_dirs(options: &[String]) -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut upper = None;
    let mut lower = Vec::new();
    for option in options {
        if let Some(dir) = option.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(dir));
        } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
            lower = dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from).collect();
        }
    }
    (upper, lower)
}

fn absolute(what: &str, dir: &Path) -> Result<(), String> {
    if dir.is_absolute() {
        Ok(())
    } else {
        Err(format!("overlay mount: {what} {} is not an absolute path", dir.display()))
    }
}

/// Where to apply a layer given a snapshot's mounts. `Err` says what is wrong with them.
pub fn apply_to(mounts: &[Mount]) -> Result<ApplyTo, String> {
    if mounts.is_empty() {
        return Err("apply needs the mounts of the snapshot to apply to (mounts is empty)".to_string());
    }
    if let [mount] = mounts
        && mount.kind == "overlay"
        && mount.target.is_empty()
        && let (Some(upper), parents) = overlay_dirs(&mount.options)
    {
        absolute("upperdir", &upper)?;
        for parent in &parents {
            absolute("lowerdir", parent)?;
        }
        return Ok(ApplyTo::OverlayUpper { upper, parents });
    }
    Ok(ApplyTo::Mounted(mounts.to_vec()))
}

/// The layers of a mount set that is a single bind or overlay mount, topmost first, and
/// whether it is an overlay (whose topmost layer then may hold overlay whiteouts).
fn layers(mounts: &[Mount]) -> Option<(bool, Vec<PathBuf>)> {
    let [mount] = mounts else { return None };
    if !mount.target.is_empty() {
        return None;
    }
    match mount.kind.as_str() {
        "overlay" => {
            let (upper, lower) = overlay_dirs(&mount.options);
            let all: Vec<PathBuf> = upper.into_iter().chain(lower).collect();
            all.iter().all(|d| d.is_absolute()).then_some((true, all))
        }
        "bind" if Path::new(&mount.source).is_absolute() => Some((false, vec![PathBuf::from(&mount.source)])),
        _ => None,
    }
}

/// How to diff `left` (the base) against `right`.
pub fn diff_from(left: &[Mount], right: &[Mount]) -> DiffFrom {
    if let (Some((_, below)), Some((true, above))) = (layers(left), layers(right))
        && let Some((upper, rest)) = above.split_first()
        && rest == below.as_slice()
    {
        let lower = below.first().unwrap_or(upper).clone();
        return DiffFrom::OverlayUpper { lower, upper: upper.clone() };
    }
    DiffFrom::Compare { left: read_only(left), right: read_only(right) }
}

/// The mounts made read-only, as containerd's temp mounts for diffs: an overlay loses its
/// upper and work directories (the upper becomes the top lower one), anything else gets `ro`.
pub fn read_only(mounts: &[Mount]) -> Vec<Mount> {
    mounts
        .iter()
        .map(|mount| {
            let mut mount = mount.clone();
            if mount.kind == "overlay" {
                let (upper, _) = overlay_dirs(&mount.options);
                mount.options.retain(|o| !o.starts_with("upperdir=") && !o.starts_with("workdir=") && o != "volatile");
                if let Some(upper) = upper {
                    for option in &mut mount.options {
                        if let Some(lower) = option.strip_prefix("lowerdir=") {
                            *option = format!("lowerdir={}:{lower}", upper.display());
                        }
                    }
                }
            } else {
                mount.options.retain(|o| o != "rw" && o != "ro");
                mount.options.push("ro".to_string());
            }
            mount
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay(options: &[&str]) -> Mount {
        Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: options.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn bind(source: &str, read_only: bool) -> Mount {
        Mount::bind(Path::new(source), read_only)
    }

    #[test]
    fn an_overlay_with_an_upper_is_applied_in_place() {
        let active = overlay(&["index=off", "workdir=/s/3/work", "upperdir=/s/3/fs", "lowerdir=/s/2/fs:/s/1/fs"]);
        assert_eq!(
            apply_to(std::slice::from_ref(&active)).unwrap(),
            ApplyTo::OverlayUpper { upper: "/s/3/fs".into(), parents: vec!["/s/2/fs".into(), "/s/1/fs".into()] }
        );
        // A first layer (a bind mount) and a read-only view are mounted.
        let first = bind("/s/1/fs", false);
        assert_eq!(apply_to(std::slice::from_ref(&first)).unwrap(), ApplyTo::Mounted(vec![first]));
        let view = overlay(&["lowerdir=/s/2/fs:/s/1/fs"]);
        assert_eq!(apply_to(std::slice::from_ref(&view)).unwrap(), ApplyTo::Mounted(vec![view]));
        assert!(apply_to(&[]).unwrap_err().contains("mounts is empty"));
        let relative = overlay(&["upperdir=s/3/fs", "lowerdir=/s/1/fs"]);
        assert!(apply_to(&[relative]).unwrap_err().contains("not an absolute path"));
    }

    #[test]
    fn an_overlay_layer_over_exactly_the_left_layers_is_read_in_place() {
        let active = overlay(&["workdir=/s/3/work", "upperdir=/s/3/fs", "lowerdir=/s/2/fs:/s/1/fs"]);
        let parent_view = overlay(&["lowerdir=/s/2/fs:/s/1/fs"]);
        let in_place = DiffFrom::OverlayUpper { lower: "/s/2/fs".into(), upper: "/s/3/fs".into() };
        assert_eq!(diff_from(std::slice::from_ref(&parent_view), std::slice::from_ref(&active)), in_place);
        // A view of a committed layer: its own directory is the top lowerdir.
        let committed_view = overlay(&["lowerdir=/s/3/fs:/s/2/fs:/s/1/fs"]);
        assert_eq!(diff_from(std::slice::from_ref(&parent_view), std::slice::from_ref(&committed_view)), in_place);
        // The parent seen as a one-layer view (a read-only bind).
        let one = overlay(&["upperdir=/s/2/fs", "workdir=/s/2/work", "lowerdir=/s/1/fs"]);
        assert_eq!(
            diff_from(&[bind("/s/1/fs", true)], &[one]),
            DiffFrom::OverlayUpper { lower: "/s/1/fs".into(), upper: "/s/2/fs".into() }
        );
    }

    #[test]
    fn anything_else_is_compared_read_only() {
        let active = overlay(&["workdir=/s/3/work", "upperdir=/s/3/fs", "lowerdir=/s/2/fs:/s/1/fs"]);
        let other_base = overlay(&["lowerdir=/s/9/fs:/s/1/fs"]);
        let DiffFrom::Compare { left, right } = diff_from(&[other_base], &[active]) else { panic!("compare") };
        assert_eq!(left[0].options, ["lowerdir=/s/9/fs:/s/1/fs"]);
        assert_eq!(right[0].options, ["lowerdir=/s/3/fs:/s/2/fs:/s/1/fs"]);
        // Native snapshots: two binds.
        let DiffFrom::Compare { left, right } = diff_from(&[bind("/n/1", true)], &[bind("/n/2", false)]) else {
            panic!("compare")
        };
        assert_eq!(left[0].options, ["rbind", "ro"]);
        assert_eq!(right[0].options, ["rbind", "ro"]);
        // Nothing on the left: an empty base.
        assert!(matches!(diff_from(&[], &[bind("/n/2", false)]), DiffFrom::Compare { .. }));
    }
}
