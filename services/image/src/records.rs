//! Where the image service keeps its records, and how they are encoded.
//!
//! ```text
//! images/<ns>/<name>     Image (protobuf, as on the wire)
//! ```
//! Namespaces are identifiers (no `/`), so a prefix scan of `images/<ns>/` sees one namespace
//! even though image names contain slashes.

use std::sync::Arc;

use berth_store::{Entry, Store};
use prost::Message;
use tonic::Status;

pub type Records = Arc<dyn Store>;

pub fn image_key(namespace: &str, name: &str) -> String {
    format!("images/{namespace}/{name}")
}

pub fn images_prefix(namespace: &str) -> String {
    format!("images/{namespace}/")
}

/// A decoded record with the revision it was read at (for compare-and-swap writes).
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub key: String,
    pub value: T,
    pub revision: u64,
}

pub fn decode<T: Message + Default>(entry: Entry) -> Result<Versioned<T>, Status> {
    let value = T::decode(entry.value.as_slice())
        .map_err(|e| Status::internal(format!("record {} is corrupt: {e}", entry.key)))?;
    Ok(Versioned { key: entry.key, value, revision: entry.revision })
}
