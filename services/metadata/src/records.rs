//! Where the metadata service keeps its records, and how they are encoded.
//!
//! ```text
//! namespaces/<ns>              Namespace (protobuf), with `deleting` while a Delete checks emptiness
//! containers/<ns>/<id>         Container (protobuf, as on the wire)
//! leases/<ns>/<id>             Lease record (JSON: labels, created_at, resources)
//! ```
//! Identifiers never contain `/`, so a prefix scan of `containers/<ns>/` sees one namespace.

use std::collections::HashMap;
use std::sync::Arc;

use berth_store::{Entry, Store};
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::Status;

pub fn namespace_key(namespace: &str) -> String {
    format!("namespaces/{namespace}")
}

pub const NAMESPACES_PREFIX: &str = "namespaces/";

pub fn container_key(namespace: &str, id: &str) -> String {
    format!("containers/{namespace}/{id}")
}

pub fn containers_prefix(namespace: &str) -> String {
    format!("containers/{namespace}/")
}

pub fn lease_key(namespace: &str, id: &str) -> String {
    format!("leases/{namespace}/{id}")
}

pub fn leases_prefix(namespace: &str) -> String {
    format!("leases/{namespace}/")
}

/// A namespace as stored: its labels, and whether a Delete is under way.
#[derive(Clone, PartialEq, Message)]
pub struct NamespaceRecord {
    #[prost(map = "string, string", tag = "1")]
    pub labels: HashMap<String, String>,
    /// Set by Delete before it checks that the namespace is empty, so that a create racing
    /// with it (which compares the namespace's revision) fails instead of being orphaned.
    #[prost(bool, tag = "2")]
    pub deleting: bool,
}

/// A lease as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub labels: HashMap<String, String>,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub resources: Vec<Resource>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resource {
    pub r#type: String,
    pub id: String,
}

/// A decoded record with the revision it was read at (for compare-and-swap writes).
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub key: String,
    pub value: T,
    pub revision: u64,
}

pub type Records = Arc<dyn Store>;

pub fn decode_proto<T: Message + Default>(entry: Entry) -> Result<Versioned<T>, Status> {
    let value = T::decode(entry.value.as_slice())
        .map_err(|e| Status::internal(format!("record {} is corrupt: {e}", entry.key)))?;
    Ok(Versioned { key: entry.key, value, revision: entry.revision })
}

pub fn decode_json<T: for<'de> Deserialize<'de>>(entry: Entry) -> Result<Versioned<T>, Status> {
    let value = serde_json::from_slice(&entry.value)
        .map_err(|e| Status::internal(format!("record {} is corrupt: {e}", entry.key)))?;
    Ok(Versioned { key: entry.key, value, revision: entry.revision })
}

pub fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain maps, strings and numbers: serialising them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// The last path component of a record key: the id.
pub fn id_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}
