//! Mounts as snapshotters hand them out, and performing them (mount(2)) the way containerd's
//! clients do: the Diff service mounts what Prepare and View return, and each task's shim mounts
//! its rootfs.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use thiserror::Error;

/// One mount(2) call: containerd's `containerd.types.Mount` without the gRPC type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type: `bind`, `overlay`.
    pub kind: String,
    pub source: String,
    /// Sub-path below the mount target; empty for the target itself.
    pub target: String,
    pub options: Vec<String>,
}

impl Mount {
    /// A recursive bind mount of `source`, read-only or read-write (containerd's options).
    pub fn bind(source: &Path, read_only: bool) -> Mount {
        Mount {
            kind: "bind".to_string(),
            source: source.display().to_string(),
            target: String::new(),
            options: vec![if read_only { "ro" } else { "rw" }.to_string(), "rbind".to_string()],
        }
    }
}

impl From<&berth_api::containerd::types::Mount> for Mount {
    fn from(mount: &berth_api::containerd::types::Mount) -> Mount {
        Mount {
            kind: mount.r#type.clone(),
            source: mount.source.clone(),
            target: mount.target.clone(),
            options: mount.options.clone(),
        }
    }
}

#[derive(Debug, Error)]
pub enum MountError {
    #[error("mount {kind} {from} on {target}: {errno}")]
    Mount { kind: String, from: String, target: PathBuf, errno: Errno },
    #[error("unmount {target}: {errno}")]
    Unmount { target: PathBuf, errno: Errno },
    #[error("mount {kind} on {target}: options are {len} bytes, more than a page even with relative lowerdirs")]
    OptionsTooLong { kind: String, target: PathBuf, len: usize },
}

/// Longest option string mount(2) takes: one page (the smallest page size Linux has).
const MAX_DATA: usize = 4095;

/// Flags that change how a mount propagates; containerd applies them in a second call.
fn propagation(option: &str) -> Option<MsFlags> {
    Some(match option {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// A flag option: `(clear, flag)`; anything else is filesystem data.
fn flag(option: &str) -> Option<(bool, MsFlags)> {
    Some(match option {
        "async" => (true, MsFlags::MS_SYNCHRONOUS),
        "atime" => (true, MsFlags::MS_NOATIME),
        "bind" => (false, MsFlags::MS_BIND),
        "defaults" => (false, MsFlags::empty()),
        "dev" => (true, MsFlags::MS_NODEV),
        "diratime" => (true, MsFlags::MS_NODIRATIME),
        "dirsync" => (false, MsFlags::MS_DIRSYNC),
        "exec" => (true, MsFlags::MS_NOEXEC),
        "noatime" => (false, MsFlags::MS_NOATIME),
        "nodev" => (false, MsFlags::MS_NODEV),
        "nodiratime" => (false, MsFlags::MS_NODIRATIME),
        "noexec" => (false, MsFlags::MS_NOEXEC),
        "nosuid" => (false, MsFlags::MS_NOSUID),
        "rbind" => (false, MsFlags::MS_BIND | MsFlags::MS_REC),
        "relatime" => (false, MsFlags::MS_RELATIME),
        "remount" => (false, MsFlags::MS_REMOUNT),
        "ro" => (false, MsFlags::MS_RDONLY),
        "rw" => (true, MsFlags::MS_RDONLY),
        "strictatime" => (false, MsFlags::MS_STRICTATIME),
        "suid" => (true, MsFlags::MS_NOSUID),
        "sync" => (false, MsFlags::MS_SYNCHRONOUS),
        _ => return None,
    })
}

struct Parsed {
    flags: MsFlags,
    propagation: MsFlags,
    data: Vec<String>,
}

fn parse(options: &[String]) -> Parsed {
    let mut parsed = Parsed { flags: MsFlags::empty(), propagation: MsFlags::empty(), data: Vec::new() };
    for option in options {
        if let Some(flags) = propagation(option) {
            parsed.propagation |= flags;
        } else if let Some((clear, flags)) = flag(option) {
            if clear {
                parsed.flags &= !flags;
            } else {
                parsed.flags |= flags;
            }
        } else {
            parsed.data.push(option.clone());
        }
    }
    parsed
}

/// Mounts every mount on `target` in order (later ones on top).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), MountError> {
    for mount in mounts {
        mount_one(mount, target)?;
    }
    Ok(())
}

fn mount_one(mount: &Mount, root: &Path) -> Result<(), MountError> {
    let target =
        if mount.target.is_empty() { root.to_path_buf() } else { root.join(mount.target.trim_start_matches('/')) };
    let failed = |errno| MountError::Mount {
        kind: mount.kind.clone(),
        from: mount.source.clone(),
        target: target.clone(),
        errno,
    };
    let Parsed { flags, propagation, mut data } = parse(&mount.options);
    let mut chdir = None;
    if mount.kind == "overlay" && data.join(",").len() > MAX_DATA {
        chdir = compact_lowerdirs(&mut data);
        let len = data.join(",").len();
        if chdir.is_none() || len > MAX_DATA {
            return Err(MountError::OptionsTooLong { kind: mount.kind.clone(), target, len });
        }
    }
    let data = data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let fstype = (mount.kind != "bind").then_some(mount.kind.as_str());
    if !flags.contains(MsFlags::MS_REMOUNT) || data.is_some() {
        let call = || nix::mount::mount(Some(mount.source.as_str()), &target, fstype, flags, data);
        match &chdir {
            None => call().map_err(failed)?,
            Some(dir) => in_dir(dir, call).map_err(failed)?,
        }
    }
    if !propagation.is_empty() {
        nix::mount::mount(None::<&str>, &target, None::<&str>, propagation, None::<&str>).map_err(failed)?;
    }
    // A bind mount ignores MS_RDONLY on creation; it takes a remount to make it read-only.
    if flags.contains(MsFlags::MS_BIND | MsFlags::MS_RDONLY) {
        nix::mount::mount(None::<&str>, &target, None::<&str>, flags | MsFlags::MS_REMOUNT, None::<&str>)
            .map_err(failed)?;
    }
    Ok(())
}

/// Rewrites `lowerdir=` to paths relative to the lowerdirs' common directory (returned), so
/// that 128 layers fit in one page, as containerd's mount does.
fn compact_lowerdirs(data: &mut [String]) -> Option<PathBuf> {
    let option = data.iter_mut().find(|o| o.starts_with("lowerdir="))?;
    let dirs: Vec<&Path> = option["lowerdir=".len()..].split(':').map(Path::new).collect();
    let mut common: PathBuf = dirs.first()?.parent()?.to_path_buf();
    while !dirs.iter().all(|dir| dir.starts_with(&common)) {
        common = common.parent()?.to_path_buf();
    }
    if common.as_os_str().is_empty() || common == Path::new("/") {
        return None;
    }
    let relative: Vec<String> = dirs
        .iter()
        .map(|dir| dir.strip_prefix(&common).map(|p| p.display().to_string()))
        .collect::<Result<_, _>>()
        .ok()?;
    *option = format!("lowerdir={}", relative.join(":"));
    Some(common)
}

/// Runs `call` with `dir` as working directory, on a thread of its own whose working
/// directory is not shared with the rest of the process (unshare CLONE_FS).
fn in_dir(dir: &Path, call: impl FnOnce() -> nix::Result<()> + Send) -> nix::Result<()> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                nix::unistd::chdir(dir)?;
                call()
            })
            .join()
            .unwrap_or(Err(Errno::EIO))
    })
}

/// Unmounts everything mounted on `target` (stacked mounts too). Busy mounts are retried
/// for a moment before giving up.
pub fn unmount_all(target: &Path) -> Result<(), MountError> {
    let mut busy = 0;
    loop {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => continue,
            // Not a mount point (any more): done.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) if busy < 50 => {
                busy += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(errno) => return Err(MountError::Unmount { target: target.to_path_buf(), errno }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let options: Vec<String> =
            ["ro", "rbind", "nosuid", "rprivate", "index=off", "lowerdir=/a:/b"].map(String::from).into();
        let parsed = parse(&options);
        assert_eq!(parsed.flags, MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID);
        assert_eq!(parsed.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(parsed.data, ["index=off", "lowerdir=/a:/b"]);
        assert_eq!(parse(&["ro".into(), "rw".into()]).flags, MsFlags::empty(), "later options win");
    }

    #[test]
    fn lowerdirs_become_relative_to_their_common_dir() {
        let mut data = vec!["upperdir=/r/s/9/fs".to_string(), "lowerdir=/r/s/10/fs:/r/s/2/fs:/r/s/1/fs".to_string()];
        assert_eq!(compact_lowerdirs(&mut data), Some(PathBuf::from("/r/s")));
        assert_eq!(data, ["upperdir=/r/s/9/fs", "lowerdir=10/fs:2/fs:1/fs"]);
        // Nothing in common but the root: no compaction.
        let mut data = vec!["lowerdir=/a/fs:/b/fs".to_string()];
        assert_eq!(compact_lowerdirs(&mut data), None);
    }
}
