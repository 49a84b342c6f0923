//! berth's content service: containerd's content store (`containerd.services.content.v1`).
//!
//! Blobs live once on disk under `root/blobs/sha256/<hex>`; each namespace sees the blobs it
//! has a record of (records in the metadata store). Ingests (resumable partial writes) live
//! under `root/ingest/` and survive restarts.
//!
//! Replicas: with records on etcd, several processes may serve one root. What makes that
//! safe: one writer per ref across processes (an etcd lease lock held for the Write stream,
//! checked before every change), commits and deletes of one digest serialized the same way,
//! blobs moved into place by atomic renames of verified data, records changed only by
//! compare-and-swap, and start-up cleaning that leaves young temporary files alone (see
//! [`locks`], [`writer`], [`ingest`]).
//!
//! - [`store::ContentStore`] is the logic (no gRPC types), built from [`blobs`], [`ingest`],
//!   [`records`], [`locks`] and the Write rules in [`writer`];
//! - [`service::ContentService`] adapts it to the generated tonic server;
//! - [`server`] binds the unix socket and serves.

pub mod blobs;
pub mod digest;
pub mod error;
pub mod filters;
pub mod ingest;
pub mod locks;
pub mod records;
pub mod server;
pub mod service;
pub mod store;
mod time;
pub mod writer;

pub use digest::Digest;
pub use error::Error;
pub use service::ContentService;
pub use store::ContentStore;
