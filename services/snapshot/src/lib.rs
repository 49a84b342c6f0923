//! berth's snapshot service: containerd's snapshotters (`containerd.services.snapshots.v1`).
//!
//! Two snapshotters, chosen per request: `overlayfs` (the default; each snapshot an overlay
//! layer) and `native` (each snapshot a full copy). Snapshots live under
//! `root/<snapshotter>/snapshots/<id>`; their records (per namespace) in the metadata store.
//!
//! - [`snapshotter::Snapshotter`] is the logic (no gRPC types): containerd's rules, records
//!   ([`records`]) and crash-safe directories, over a [`driver::Driver`] that knows one
//!   filesystem layout ([`driver::Overlay`], [`driver::Native`]);
//! - [`snapshotters::Snapshotters`] picks one by name;
//! - [`service::SnapshotsService`] adapts them to the generated tonic server and publishes
//!   [`events`] to whatever [`events::Publisher`] it is given;
//! - [`mount`] performs the mounts snapshotters hand out (for Diff and tests);
//! - [`diff`] is containerd's Diff service (`containerd.services.diff.v1`): Apply unpacks a
//!   layer from the content service onto snapshot mounts, Diff writes one into it;
//! - [`server`] binds the unix socket and serves both.

pub mod diff;
pub mod disk;
pub mod driver;
pub mod error;
pub mod events;
pub mod filters;
pub mod info;
pub mod mount;
pub mod records;
pub mod server;
pub mod service;
pub mod snapshotter;
pub mod snapshotters;
mod time;

pub use diff::DiffService;
pub use error::Error;
pub use info::{Info, Kind, Usage};
pub use mount::Mount;
pub use service::SnapshotsService;
pub use snapshotter::Snapshotter;
pub use snapshotters::Snapshotters;
