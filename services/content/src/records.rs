//! Blob records: which namespace holds which digest, with its size, labels and timestamps.
//!
//! Kept in the metadata store (`berth_store::Store`: redb locally, etcd later) under
//!
//! ```text
//! content/v1/namespaces/<ns>/blobs/<digest>   JSON record (size, labels, created/updated at)
//! content/v1/digests/<digest>/<ns>            empty; which namespaces reference a blob
//! ```
//!
//! Both keys change in one transaction, so the second layout answers "is this blob still
//! referenced anywhere?" without scanning every namespace.

use std::collections::HashMap;
use std::sync::Arc;

use berth_store::{Compare, Store, StoreError, Txn};
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::{Error, Result};

const PREFIX: &str = "content/v1";
/// How often a read-modify-write is retried when someone else changed the record first.
const UPDATE_ATTEMPTS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub size: i64,
    /// Nanoseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub labels: HashMap<String, String>,
}

pub struct Records {
    store: Arc<dyn Store>,
}

fn record_key(namespace: &str, digest: &Digest) -> String {
    format!("{PREFIX}/namespaces/{namespace}/blobs/{digest}")
}

fn namespace_prefix(namespace: &str) -> String {
    format!("{PREFIX}/namespaces/{namespace}/blobs/")
}

fn reference_key(digest: &Digest, namespace: &str) -> String {
    format!("{PREFIX}/digests/{digest}/{namespace}")
}

fn reference_prefix(digest: &Digest) -> String {
    format!("{PREFIX}/digests/{digest}/")
}

fn decode(key: &str, raw: &[u8]) -> Result<Record> {
    serde_json::from_slice(raw).map_err(|e| Error::Internal(format!("record {key}: {e}")))
}

fn encode(record: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| Error::Internal(format!("encode record: {e}")))
}

impl Records {
    pub fn new(store: Arc<dyn Store>) -> Records {
        Records { store }
    }

    pub async fn get(&self, namespace: &str, digest: &Digest) -> Result<Option<Record>> {
        let key = record_key(namespace, digest);
        match self.store.get(&key).await? {
            Some(entry) => Ok(Some(decode(&key, &entry.value)?)),
            None => Ok(None),
        }
    }

    /// Every record of `namespace`, in digest order. Entries whose key is not a valid digest
    /// (written by something else) are skipped.
    pub async fn list(&self, namespace: &str) -> Result<Vec<(Digest, Record)>> {
        let prefix = namespace_prefix(namespace);
        let mut records = Vec::new();
        for entry in self.store.list(&prefix).await? {
            let Ok(digest) = Digest::parse(&entry.key[prefix.len()..]) else {
                tracing::warn!(key = %entry.key, "skipping a record whose key is not a digest");
                continue;
            };
            records.push((digest, decode(&entry.key, &entry.value)?));
        }
        Ok(records)
    }

    /// Adds the record; AlreadyExists when the namespace has it already.
    pub async fn create(&self, namespace: &str, digest: &Digest, record: &Record) -> Result<()> {
        let key = record_key(namespace, digest);
        let txn = Txn::new()
            .when(Compare::Absent(key.clone()))
            .put(key, encode(record)?)
            .put(reference_key(digest, namespace), Vec::new());
        match self.store.commit(txn).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(_)) => Err(Error::AlreadyExists(format!("content {digest}: already exists"))),
            Err(e) => Err(e.into()),
        }
    }

    /// Read-modify-write of one record with compare-and-swap; NotFound when absent.
    pub async fn update(
        &self,
        namespace: &str,
        digest: &Digest,
        mut change: impl FnMut(&mut Record) -> Result<()>,
    ) -> Result<Record> {
        let key = record_key(namespace, digest);
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(entry) = self.store.get(&key).await? else {
                return Err(not_found(digest));
            };
            let mut record = decode(&key, &entry.value)?;
            change(&mut record)?;
            let txn =
                Txn::new().when(Compare::Revision(key.clone(), entry.revision)).put(key.clone(), encode(&record)?);
            match self.store.commit(txn).await {
                Ok(()) => return Ok(record),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable(format!("content {digest}: changed concurrently too often, try again")))
    }

    /// Removes the namespace's record; NotFound when it has none.
    pub async fn delete(&self, namespace: &str, digest: &Digest) -> Result<()> {
        let key = record_key(namespace, digest);
        for _ in 0..UPDATE_ATTEMPTS {
            let Some(entry) = self.store.get(&key).await? else {
                return Err(not_found(digest));
            };
            let txn = Txn::new()
                .when(Compare::Revision(key.clone(), entry.revision))
                .delete(key.clone())
                .delete(reference_key(digest, namespace));
            match self.store.commit(txn).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Unavailable(format!("content {digest}: changed concurrently too often, try again")))
    }

    /// Whether any namespace still has a record of `digest`.
    pub async fn referenced(&self, digest: &Digest) -> Result<bool> {
        Ok(!self.store.list(&reference_prefix(digest)).await?.is_empty())
    }
}

pub fn not_found(digest: &Digest) -> Error {
    Error::NotFound(format!("content digest {digest}: not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> (tempfile::TempDir, Records) {
        let dir = tempfile::tempdir().unwrap();
        let store = berth_store::Embedded::open(&dir.path().join("content.redb")).unwrap();
        (dir, Records::new(Arc::new(store)))
    }

    fn record(size: i64) -> Record {
        Record { size, created_at: 1, updated_at: 2, labels: [("k".to_string(), "v".to_string())].into() }
    }

    #[tokio::test]
    async fn create_get_list_per_namespace() {
        let (_dir, records) = records();
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        records.create("ns", &a, &record(1)).await.unwrap();
        records.create("ns", &b, &record(1)).await.unwrap();
        records.create("other", &a, &record(1)).await.unwrap();
        let err = records.create("ns", &a, &record(1)).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");

        assert_eq!(records.get("ns", &a).await.unwrap(), Some(record(1)));
        assert_eq!(records.get("third", &a).await.unwrap(), None);
        let mut expected = vec![a.clone(), b.clone()];
        expected.sort();
        let listed: Vec<_> = records.list("ns").await.unwrap().into_iter().map(|(d, _)| d).collect();
        assert_eq!(listed, expected);
        assert_eq!(records.list("other").await.unwrap().len(), 1);
        // A namespace whose name is a prefix of another sees only its own records.
        assert!(records.list("n").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn update_and_delete_track_references() {
        let (_dir, records) = records();
        let digest = Digest::of(b"shared");
        records.create("a", &digest, &record(6)).await.unwrap();
        records.create("b", &digest, &record(6)).await.unwrap();

        let updated = records
            .update("a", &digest, |r| {
                r.labels.clear();
                Ok(())
            })
            .await
            .unwrap();
        assert!(updated.labels.is_empty());
        assert_eq!(records.get("a", &digest).await.unwrap().unwrap().labels.len(), 0);
        assert_eq!(records.get("b", &digest).await.unwrap().unwrap().labels.len(), 1);
        let missing = records.update("c", &digest, |_| Ok(())).await.unwrap_err();
        assert!(matches!(missing, Error::NotFound(_)));

        records.delete("a", &digest).await.unwrap();
        assert!(records.referenced(&digest).await.unwrap(), "b still has it");
        assert!(matches!(records.delete("a", &digest).await.unwrap_err(), Error::NotFound(_)));
        records.delete("b", &digest).await.unwrap();
        assert!(!records.referenced(&digest).await.unwrap());
    }
}
