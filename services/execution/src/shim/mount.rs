//! Mounting a task's rootfs (containerd's `Mount` records, as the snapshot service hands them
//! out) on `<bundle>/rootfs`, and unmounting it when the task is deleted: berth-mount.

pub use berth_mount::*;
