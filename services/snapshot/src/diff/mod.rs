//! containerd's Diff service (`containerd.services.diff.v1.Diff`), next to the snapshotters
//! whose mounts it works on.
//!
//! - Apply ([`apply`]) unpacks a layer blob read from the content service onto a snapshot's
//!   mounts: in place into an overlay upper directory, or onto the mounted tree;
//! - Diff ([`compare`]) writes the changes between two mount sets as a layer blob into the
//!   content service;
//! - [`plan`] reads mount sets (what can be worked on in place, what must be mounted),
//!   [`tempmount`] mounts for the length of a call, [`blob`] and [`upload`] stream layers out
//!   of and into content, [`service`] is the tonic adapter.
//!
//! The layer formats themselves (tar, whiteouts, never escaping the root) are
//! `berth_archive`'s.

pub mod apply;
pub mod blob;
pub mod compare;
pub mod error;
pub mod plan;
pub mod service;
pub mod tempmount;
pub mod upload;

pub use error::DiffError;
pub use service::DiffService;
