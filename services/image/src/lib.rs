//! berth's image service: containerd's image records (`containerd.services.images.v1`) and
//! pulls run by the service (`berth.image.v1.Transfer`).
//!
//! - [`records`]: the key layout in the store;
//! - [`images::ImageStore`]: the records with containerd's rules (validation, update masks,
//!   filters), the events they cause, and garbage collection after deletes;
//! - [`pull::Puller`]: resolving a [`reference`] at its [`registry`], walking [`manifest`]s,
//!   fetching blobs into the [`content`] service, reporting [`progress`], and [`unpack`]ing
//!   layers into snapshots;
//! - [`hosts`]: per-registry settings (containerd's hosts.toml directory);
//! - [`push`]: images to a registry (mounting what it has in other repositories);
//! - [`import`] and [`export`]: image archives (OCI layout and docker-archive tars), read
//!   through [`archive`];
//! - [`service`] and [`transfer`]: the tonic adapters; [`server`]: the unix socket.

pub mod archive;
pub mod arrivals;
pub mod content;
pub mod digest;
pub mod export;
pub mod hosts;
pub mod images;
pub mod import;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod push;
pub mod records;
pub mod reference;
pub mod registry;
pub mod server;
pub mod service;
pub mod source_label;
mod tls;
pub mod transfer;
pub mod unpack;

pub use images::{ImageStore, Neighbours};
pub use pull::Puller;
