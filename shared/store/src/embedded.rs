//! The embedded backend: one crash-safe redb file under the service's --root.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{Compare, Entry, Op, SCHEMA_VERSION, Store, StoreError, Txn};

/// key -> revision (8 bytes, big endian) followed by the value.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// "revision" -> last revision handed out; "schema" -> layout version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A store in one redb file; cheap to clone.
#[derive(Clone)]
pub struct Embedded {
    db: Arc<Database>,
}

fn backend(err: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(err.to_string())
}

impl Embedded {
    /// Opens (creating when missing) the database file at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| StoreError::Backend(format!("open {}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(backend)?;
        {
            txn.open_table(RECORDS).map_err(backend)?;
            let mut meta = txn.open_table(META).map_err(backend)?;
            let schema = meta.get("schema").map_err(backend)?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert("schema", SCHEMA_VERSION).map_err(backend)?;
                }
                Some(version) if version > SCHEMA_VERSION => {
                    return Err(StoreError::Backend(format!(
                        "{} has schema version {version}, newer than this build understands ({SCHEMA_VERSION})",
                        path.display()
                    )));
                }
                Some(_) => {}
            }
        }
        txn.commit().map_err(backend)?;
        Ok(Embedded { db: Arc::new(db) })
    }

    fn decode(key: &str, raw: &[u8]) -> Result<Entry, StoreError> {
        if raw.len() < 8 {
            return Err(StoreError::Backend(format!("record {key:?} is truncated")));
        }
        let (revision, value) = raw.split_at(8);
        Ok(Entry {
            key: key.to_string(),
            value: value.to_vec(),
            revision: u64::from_be_bytes(revision.try_into().expect("split at 8")),
        })
    }

    fn get_blocking(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(RECORDS).map_err(backend)?;
        let value = table.get(key).map_err(backend)?;
        value.map(|v| Self::decode(key, v.value())).transpose()
    }

    fn list_blocking(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(RECORDS).map_err(backend)?;
        let mut entries = Vec::new();
        for item in table.range(prefix..).map_err(backend)? {
            let (key, value) = item.map_err(backend)?;
            if !key.value().starts_with(prefix) {
                break;
            }
            entries.push(Self::decode(key.value(), value.value())?);
        }
        Ok(entries)
    }

    fn commit_blocking(&self, txn: Txn) -> Result<(), StoreError> {
        let write = self.db.begin_write().map_err(backend)?;
        {
            let mut table = write.open_table(RECORDS).map_err(backend)?;
            for compare in &txn.compares {
                let (key, holds) = match compare {
                    Compare::Absent(key) => (key, table.get(key.as_str()).map_err(backend)?.is_none()),
                    Compare::Revision(key, want) => {
                        let current = table.get(key.as_str()).map_err(backend)?;
                        let current = current.map(|v| Self::decode(key, v.value())).transpose()?;
                        (key, current.is_some_and(|e| e.revision == *want))
                    }
                };
                if !holds {
                    return Err(StoreError::Conflict(format!("{key} was changed concurrently")));
                }
            }
            let mut meta = write.open_table(META).map_err(backend)?;
            let revision = meta.get("revision").map_err(backend)?.map_or(0, |v| v.value()) + 1;
            meta.insert("revision", revision).map_err(backend)?;
            for op in &txn.ops {
                match op {
                    Op::Put(key, value) => {
                        let mut raw = Vec::with_capacity(8 + value.len());
                        raw.extend_from_slice(&revision.to_be_bytes());
                        raw.extend_from_slice(value);
                        table.insert(key.as_str(), raw.as_slice()).map_err(backend)?;
                    }
                    Op::Delete(key) => {
                        table.remove(key.as_str()).map_err(backend)?;
                    }
                }
            }
        }
        write.commit().map_err(backend)
    }
}

#[async_trait]
impl Store for Embedded {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let (this, key) = (self.clone(), key.to_string());
        tokio::task::spawn_blocking(move || this.get_blocking(&key)).await.map_err(backend)?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let (this, prefix) = (self.clone(), prefix.to_string());
        tokio::task::spawn_blocking(move || this.list_blocking(&prefix)).await.map_err(backend)?
    }

    async fn commit(&self, txn: Txn) -> Result<(), StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.commit_blocking(txn)).await.map_err(backend)?
    }
}
