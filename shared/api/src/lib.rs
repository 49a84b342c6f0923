//! Wire types and tonic clients/servers for containerd's v1 gRPC API.
//!
//! Modules follow the proto packages: `containerd::services::content::v1` and so on.
//! Well-known types (`google.protobuf.*`) come from `prost_types`.

#![allow(clippy::all, missing_docs)]

include!(concat!(env!("OUT_DIR"), "/berth_api.rs"));

pub use prost_types;
