//! The metadata store every service keeps its records in.
//!
//! A small key-value interface with revision compare-and-swap transactions, so that the
//! same service code runs on the embedded backend (a redb file) and on etcd: on redb a
//! transaction is ACID, on etcd it maps onto a Txn comparing mod revisions. Values are
//! opaque bytes; each service encodes its own records.
//!
//! The store also hands out locks ([`Store::try_lock`], see [`lock`]): in-process on the
//! embedded backend (its file belongs to one process), leases on etcd (shared by every
//! process on the cluster, freed by etcd when their holder dies).

mod embedded;
mod etcd;
pub mod lock;
mod open;
pub mod testing;

use async_trait::async_trait;
use thiserror::Error;

pub use embedded::Embedded;
pub use etcd::{DEFAULT_LOCK_TTL, Etcd};
pub use lock::{Holder, LockGuard, lock_waiting};
pub use open::Backend;

/// Version of the key layout; recorded by each backend so a future layout change can migrate.
pub const SCHEMA_VERSION: u64 = 1;

/// A stored value with the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// Store-wide increasing revision at which this key was last written.
    pub revision: u64,
}

/// A condition a transaction checks before it applies anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last written at this revision.
    Revision(String, u64),
}

/// A change a transaction applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// Compares then changes, all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.ops.push(Op::Put(key.into(), value));
        self
    }

    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// A compare failed: someone else changed the record first. Re-read and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend cannot be reached right now.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend reported.
    #[error("metadata store: {0}")]
    Backend(String),
    /// [`Store::try_lock`]: someone else holds the lock.
    #[error("{key} is locked by {holder}")]
    Locked { key: String, holder: Holder },
    /// A held lock may have passed to someone else (on etcd: its lease was not renewed in time).
    #[error("lost the lock {key}: {reason}")]
    LockLost { key: String, reason: String },
}

impl From<StoreError> for tonic::Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(_) => tonic::Status::aborted(err.to_string()),
            StoreError::Unavailable(_) | StoreError::Locked { .. } | StoreError::LockLost { .. } => {
                tonic::Status::unavailable(err.to_string())
            }
            StoreError::Backend(_) => tonic::Status::internal(err.to_string()),
        }
    }
}

/// The interface both backends implement.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;
    /// Applies `txn.ops` atomically when every compare holds; `Conflict` otherwise.
    async fn commit(&self, txn: Txn) -> Result<(), StoreError>;
    /// Takes the lock `key` (a name of its own, apart from the records) for `owner`, a
    /// description of the caller reported to whoever is refused. `Locked` when it is held,
    /// also by this same process: locks are not reentrant.
    async fn try_lock(&self, key: &str, owner: &str) -> Result<LockGuard, StoreError>;
}

#[cfg(test)]
mod conformance;
