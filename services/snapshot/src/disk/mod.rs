//! Filesystem work the snapshotters need: measuring a tree and copying one faithfully.

pub mod copy;
pub mod usage;
pub mod xattr;

pub use copy::copy_dir;
pub use usage::disk_usage;
