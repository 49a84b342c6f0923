//! Snapshot records in the service's metadata store (`berth_store::Store`: redb or etcd).
//!
//! One snapshotter's keys:
//!
//! ```text
//! snapshot/v1/<snapshotter>/next-id                               next free snapshot id
//! snapshot/v1/<snapshotter>/ns/<ns>/snapshots/<key>               JSON record
//! snapshot/v1/<snapshotter>/ns/<ns>/children/<parent>/<child>     empty; "has children?" index
//! ```
//!
//! Keys and names are arbitrary strings (containerd's extract keys have spaces and slashes),
//! so they are escaped (`%` → `%25`, `/` → `%2F`) to keep every prefix exact. Ids are shared
//! by all namespaces of a snapshotter: they name the snapshot's directory on disk.
//!
//! This module only builds keys and transactions; [`crate::snapshotter`] decides what to
//! change and retries when a compare fails.

use std::collections::HashMap;
use std::sync::Arc;

use berth_store::{Compare, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::info::{Kind, Usage};

const PREFIX: &str = "snapshot/v1";

/// What is stored about one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Names the directory; kept by Commit.
    pub id: u64,
    pub kind: Kind,
    /// Name of the committed parent, empty when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent: String,
    /// Ids of every ancestor, nearest first (committed snapshots never change, so this stays
    /// true for as long as the record exists; mounts need no walk up the chain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_ids: Vec<u64>,
    /// Nanoseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub labels: HashMap<String, String>,
    /// Measured when committed; zero for active snapshots (measured on demand) and views.
    #[serde(default)]
    pub usage: Usage,
}

/// A record as read, with what a compare-and-swap needs.
#[derive(Debug, Clone)]
pub struct Stored {
    pub record: Record,
    pub revision: u64,
    raw: Vec<u8>,
}

/// One snapshot anywhere in the snapshotter (for Cleanup).
#[derive(Debug, Clone)]
pub struct Located {
    pub namespace: String,
    pub key: String,
    pub record: Record,
}

/// The records of one snapshotter.
pub struct Records {
    store: Arc<dyn Store>,
    base: String,
}

/// Makes `key` safe to use as one path segment of a store key.
pub fn escape(key: &str) -> String {
    let mut escaped = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '/' => escaped.push_str("%2F"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Reverses [`escape`]; `None` for text [`escape`] cannot have produced.
pub fn unescape(segment: &str) -> Option<String> {
    let mut key = String::with_capacity(segment.len());
    let mut rest = segment;
    while let Some(at) = rest.find('%') {
        key.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("%25") => key.push('%'),
            Some("%2F") => key.push('/'),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    if rest.contains('/') {
        return None;
    }
    key.push_str(rest);
    Some(key)
}

fn decode(key: &str, raw: &[u8]) -> Result<Record> {
    serde_json::from_slice(raw).map_err(|e| Error::Internal(format!("snapshot record {key}: {e}")))
}

fn encode(record: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| Error::Internal(format!("encode snapshot record: {e}")))
}

/// `Ok(false)` when a compare failed: someone changed something first; re-read and decide.
fn committed(result: Result<(), StoreError>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

impl Records {
    pub fn new(store: Arc<dyn Store>, snapshotter: &str) -> Records {
        Records { store, base: format!("{PREFIX}/{snapshotter}") }
    }

    fn counter_key(&self) -> String {
        format!("{}/next-id", self.base)
    }

    fn snapshots_prefix(&self, namespace: &str) -> String {
        format!("{}/ns/{namespace}/snapshots/", self.base)
    }

    fn record_key(&self, namespace: &str, key: &str) -> String {
        format!("{}{}", self.snapshots_prefix(namespace), escape(key))
    }

    fn children_prefix(&self, namespace: &str, parent: &str) -> String {
        format!("{}/ns/{namespace}/children/{}/", self.base, escape(parent))
    }

    fn child_key(&self, namespace: &str, parent: &str, child: &str) -> String {
        format!("{}{}", self.children_prefix(namespace, parent), escape(child))
    }

    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Stored>> {
        let store_key = self.record_key(namespace, key);
        match self.store.get(&store_key).await? {
            Some(entry) => {
                let record = decode(&store_key, &entry.value)?;
                Ok(Some(Stored { record, revision: entry.revision, raw: entry.value }))
            }
            None => Ok(None),
        }
    }

    /// Every snapshot of `namespace` by key, in key order.
    pub async fn list(&self, namespace: &str) -> Result<Vec<(String, Record)>> {
        let prefix = self.snapshots_prefix(namespace);
        let mut records = Vec::new();
        for entry in self.store.list(&prefix).await? {
            let Some(key) = unescape(&entry.key[prefix.len()..]) else {
                tracing::warn!(key = %entry.key, "skipping a snapshot record with a malformed key");
                continue;
            };
            records.push((key, decode(&entry.key, &entry.value)?));
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(records)
    }

    /// Every snapshot of every namespace.
    pub async fn all(&self) -> Result<Vec<Located>> {
        let prefix = format!("{}/ns/", self.base);
        let mut located = Vec::new();
        for entry in self.store.list(&prefix).await? {
            let mut parts = entry.key[prefix.len()..].splitn(3, '/');
            let (Some(namespace), Some("snapshots"), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Some(key) = unescape(key) else { continue };
            let record = decode(&entry.key, &entry.value)?;
            located.push(Located { namespace: namespace.to_string(), key, record });
        }
        Ok(located)
    }

    pub async fn has_children(&self, namespace: &str, key: &str) -> Result<bool> {
        Ok(!self.store.list(&self.children_prefix(namespace, key)).await?.is_empty())
    }

    /// The lowest id never handed out; every id below it was allocated by this store.
    pub async fn next_id(&self) -> Result<u64> {
        Ok(self.read_counter().await?.map_or(1, |(next, _)| next))
    }

    async fn read_counter(&self) -> Result<Option<(u64, u64)>> {
        let key = self.counter_key();
        let Some(entry) = self.store.get(&key).await? else { return Ok(None) };
        let next = std::str::from_utf8(&entry.value)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| Error::Internal(format!("{key}: not a number")))?;
        Ok(Some((next, entry.revision)))
    }

    /// Takes the next id for good (ids are never reused, even when the snapshot is not made).
    pub async fn allocate_id(&self) -> Result<u64> {
        let key = self.counter_key();
        for _ in 0..crate::snapshotter::ATTEMPTS {
            let (id, compare) = match self.read_counter().await? {
                Some((next, revision)) => (next, Compare::Revision(key.clone(), revision)),
                None => (1, Compare::Absent(key.clone())),
            };
            let txn = Txn::new().when(compare).put(key.clone(), (id + 1).to_string().into_bytes());
            if committed(self.store.commit(txn).await)? {
                return Ok(id);
            }
        }
        Err(Error::Unavailable("snapshot ids: allocated concurrently too often, try again".to_string()))
    }

    /// Adds a new active snapshot or view, if `key` is still free and `parent` unchanged.
    /// The parent's record is rewritten as it was, so that a concurrent Remove of the parent
    /// (which compares its revision) notices the new child.
    pub async fn create(
        &self,
        namespace: &str,
        key: &str,
        record: &Record,
        parent: Option<(&str, &Stored)>,
    ) -> Result<bool> {
        let store_key = self.record_key(namespace, key);
        let mut txn = Txn::new().when(Compare::Absent(store_key.clone())).put(store_key, encode(record)?);
        if let Some((name, stored)) = parent {
            let parent_key = self.record_key(namespace, name);
            txn = txn
                .when(Compare::Revision(parent_key.clone(), stored.revision))
                .put(parent_key, stored.raw.clone())
                .put(self.child_key(namespace, name, key), Vec::new());
        }
        committed(self.store.commit(txn).await)
    }

    /// Turns the active snapshot `key` into the committed snapshot `name` (same id).
    pub async fn commit(
        &self,
        namespace: &str,
        key: &str,
        active: &Stored,
        name: &str,
        record: &Record,
    ) -> Result<bool> {
        let key_key = self.record_key(namespace, key);
        let name_key = self.record_key(namespace, name);
        let mut txn = Txn::new()
            .when(Compare::Revision(key_key.clone(), active.revision))
            .when(Compare::Absent(name_key.clone()))
            .delete(key_key)
            .put(name_key, encode(record)?);
        if !record.parent.is_empty() {
            txn = txn
                .delete(self.child_key(namespace, &record.parent, key))
                .put(self.child_key(namespace, &record.parent, name), Vec::new());
        }
        committed(self.store.commit(txn).await)
    }

    /// Deletes `key`'s record if it is unchanged since read.
    pub async fn remove(&self, namespace: &str, key: &str, stored: &Stored) -> Result<bool> {
        let store_key = self.record_key(namespace, key);
        let mut txn = Txn::new().when(Compare::Revision(store_key.clone(), stored.revision)).delete(store_key);
        if !stored.record.parent.is_empty() {
            txn = txn.delete(self.child_key(namespace, &stored.record.parent, key));
        }
        committed(self.store.commit(txn).await)
    }

    /// Replaces `key`'s record if it is unchanged since read.
    pub async fn replace(&self, namespace: &str, key: &str, stored: &Stored, record: &Record) -> Result<bool> {
        let store_key = self.record_key(namespace, key);
        let txn =
            Txn::new().when(Compare::Revision(store_key.clone(), stored.revision)).put(store_key, encode(record)?);
        committed(self.store.commit(txn).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> (tempfile::TempDir, Records) {
        let dir = tempfile::tempdir().unwrap();
        let store = berth_store::Embedded::open(&dir.path().join("snapshot.redb")).unwrap();
        (dir, Records::new(Arc::new(store), "overlayfs"))
    }

    fn record(id: u64, kind: Kind, parent: &str) -> Record {
        Record {
            id,
            kind,
            parent: parent.to_string(),
            parent_ids: Vec::new(),
            created_at: 1,
            updated_at: 1,
            labels: HashMap::new(),
            usage: Usage::default(),
        }
    }

    #[test]
    fn escaping_round_trips_and_keeps_prefixes_apart() {
        for key in ["plain", "a/b", "50%/x", "%2F", "extract-1 sha256:abc", ""] {
            let escaped = escape(key);
            assert!(!escaped.contains('/'), "{escaped}");
            assert_eq!(unescape(&escaped).as_deref(), Some(key));
        }
        assert_eq!(unescape("%zz"), None);
        assert_eq!(unescape("a/b"), None);
        assert_ne!(escape("a/b"), escape("a%2Fb"));
    }

    #[tokio::test]
    async fn ids_are_never_handed_out_twice() {
        let (_dir, records) = records();
        assert_eq!(records.next_id().await.unwrap(), 1);
        assert_eq!(records.allocate_id().await.unwrap(), 1);
        assert_eq!(records.allocate_id().await.unwrap(), 2);
        assert_eq!(records.next_id().await.unwrap(), 3);
    }

    #[tokio::test]
    async fn create_commit_remove_keep_the_children_index() {
        let (_dir, records) = records();
        assert!(records.create("ns", "a/1", &record(1, Kind::Active, ""), None).await.unwrap());
        assert!(!records.create("ns", "a/1", &record(2, Kind::Active, ""), None).await.unwrap(), "key taken");
        let active = records.get("ns", "a/1").await.unwrap().unwrap();
        assert!(records.commit("ns", "a/1", &active, "base", &record(1, Kind::Committed, "")).await.unwrap());
        assert!(records.get("ns", "a/1").await.unwrap().is_none());

        let base = records.get("ns", "base").await.unwrap().unwrap();
        assert!(records.create("ns", "child", &record(3, Kind::Active, "base"), Some(("base", &base))).await.unwrap());
        // The parent was rewritten: a remove that read it before the child appeared fails.
        assert!(!records.remove("ns", "base", &base).await.unwrap());
        assert!(records.has_children("ns", "base").await.unwrap());
        // A namespace or parent whose name is a prefix of another's sees nothing of it.
        assert!(!records.has_children("n", "base").await.unwrap());
        assert!(!records.has_children("ns", "bas").await.unwrap());

        let child = records.get("ns", "child").await.unwrap().unwrap();
        assert!(records.commit("ns", "child", &child, "top", &record(3, Kind::Committed, "base")).await.unwrap());
        assert!(records.has_children("ns", "base").await.unwrap(), "the committed child still counts");
        let top = records.get("ns", "top").await.unwrap().unwrap();
        assert!(records.remove("ns", "top", &top).await.unwrap());
        assert!(!records.has_children("ns", "base").await.unwrap());

        let listed: Vec<String> = records.list("ns").await.unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(listed, ["base"]);
        let all = records.all().await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].namespace.as_str(), all[0].key.as_str(), all[0].record.id), ("ns", "base", 1));
    }
}
