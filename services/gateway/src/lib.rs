//! The gateway: one socket in front of every berth service.
//!
//! It routes each call by its gRPC service path to the service serving it (spreading calls
//! over live replicas), streams both ways without buffering, and answers Version and
//! Introspection itself. It holds no service logic.

pub mod backends;
pub mod forward;
pub mod local;
pub mod routes;
pub mod serve;

pub use backends::Backends;
pub use serve::{Config, serve};
