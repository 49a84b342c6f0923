//! berth's execution service: containerd's Tasks API on runc (or crun), one shim process per
//! task so that tasks outlive the service.
//!
//! - [`ttrpc`]: containerd's shim RPC protocol, client and server;
//! - [`protocol`]: the runtime v2 shim API's messages and the exit record shims leave on disk;
//! - [`shim`]: berth-shim, the per-task process (subreaper, stdio, runtime calls);
//! - [`tasks`]: the service's side: starting shims, re-attaching after a restart, events;
//! - [`service`]: the tonic adapter for containerd.services.tasks.v1.Tasks;
//! - [`server`]: serving it on a unix socket.

pub mod protocol;
pub mod server;
pub mod service;
pub mod shim;
pub mod tasks;
pub mod ttrpc;
