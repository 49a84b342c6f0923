//! berth's metadata service: containerd's namespaces, containers, leases and events, and the
//! garbage collector that frees what no container, image or lease holds any more.
//!
//! - [`records`]: the key layout in the store and typed reads/writes of records;
//! - [`namespaces`], [`containers`], [`leases`]: each containerd service, logic plus its
//!   tonic adapter;
//! - [`events`]: the broker every service publishes to and clients subscribe from;
//! - [`gc`]: mark from the roots, sweep content and snapshots through their services;
//! - [`server`]: all of the above on one unix socket.

pub mod containers;
pub mod events;
pub mod gc;
pub mod inventory;
pub mod leases;
pub mod namespaces;
pub mod records;
pub mod server;
pub mod time;

pub use server::Metadata;
