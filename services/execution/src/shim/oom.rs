//! Noticing OOM kills in a container's memory cgroup (v1): an eventfd registered through
//! `cgroup.event_control` on `memory.oom_control` fires on each one. The same eventfd also
//! fires when the cgroup is removed, which ends the watch.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::eventfd::{EfdFlags, EventFd};
use tokio::io::unix::AsyncFd;

/// Calls `on_oom` for every OOM kill in the memory cgroup of `pid`, until the cgroup goes.
/// Does nothing (Ok) where there is no v1 memory cgroup to watch.
pub fn watch(pid: u32, on_oom: impl Fn() + Send + 'static) -> io::Result<()> {
    let Some(memory) = super::stats::cgroup_dir(pid, "memory") else { return Ok(()) };
    let control_file = memory.join("memory.oom_control");
    let events = memory.join("cgroup.event_control");
    if !control_file.exists() || !events.exists() {
        return Ok(());
    }
    let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let control = std::fs::File::open(&control_file)?;
    std::fs::write(&events, format!("{} {}", eventfd.as_raw_fd(), control.as_raw_fd()))?;
    let eventfd: OwnedFd = eventfd.into();
    // SAFETY: the AsyncFd owns the eventfd, which stays open until the AsyncFd is dropped.
    let eventfd = unsafe { AsyncFd::register(eventfd) }?;
    tokio::spawn(async move {
        // The registration lasts while this file is open.
        let _control = control;
        loop {
            let Ok(mut ready) = eventfd.readable().await else { return };
            let mut count = [0u8; 8];
            match ready.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut count).map_err(io::Error::from)) {
                Ok(Ok(_)) if still_there(&memory) => on_oom(),
                Ok(Ok(_)) | Ok(Err(_)) => return,
                Err(_would_block) => continue,
            }
        }
    });
    Ok(())
}

fn still_there(cgroup: &Path) -> bool {
    cgroup.join("memory.oom_control").exists()
}
