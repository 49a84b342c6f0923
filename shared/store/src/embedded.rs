//! The embedded backend: one crash-safe redb file under the service's --root.
//!
//! Commits are grouped: concurrent transactions are applied in order inside one redb write
//! transaction, so they share one fsync; each still gets its own compare outcome.
//!
//! Locks are in-process: redb lets one process open the file, so nobody else can be
//! competing for them, and a lock in the file would outlive a crash of its holder.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::lock::{Holder, LockGuard, LockState};
use crate::{Compare, Entry, Op, SCHEMA_VERSION, Store, StoreError, Txn};

/// key -> revision (8 bytes, big endian) followed by the value.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
/// "revision" -> last revision handed out; "schema" -> layout version.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A store in one redb file; cheap to clone.
#[derive(Clone)]
pub struct Embedded {
    db: Arc<Database>,
    locks: Arc<Mutex<HashMap<String, Holder>>>,
    queue: Arc<Mutex<Queue>>,
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
        Ok(Embedded { db: Arc::new(db), locks: Arc::default(), queue: Arc::default() })
    }

    fn held(locks: &Mutex<HashMap<String, Holder>>) -> MutexGuard<'_, HashMap<String, Holder>> {
        // Inserts and removals are single operations: a panic cannot leave the map half-changed.
        locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

    /// Applies a batch of transactions in one redb write transaction (one fsync), in order:
    /// each sees the changes of those before it and gets its own revision and outcome.
    fn commit_batch_blocking(&self, txns: &[Txn]) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let write = self.db.begin_write().map_err(backend)?;
        let mut outcomes = Vec::with_capacity(txns.len());
        {
            let mut table = write.open_table(RECORDS).map_err(backend)?;
            let mut meta = write.open_table(META).map_err(backend)?;
            let mut revision = meta.get("revision").map_err(backend)?.map_or(0, |v| v.value());
            for txn in txns {
                if let Some(key) = Self::failed_compare(&table, txn)? {
                    outcomes.push(Err(StoreError::Conflict(format!("{key} was changed concurrently"))));
                    continue;
                }
                revision += 1;
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
                outcomes.push(Ok(()));
            }
            meta.insert("revision", revision).map_err(backend)?;
        }
        write.commit().map_err(backend)?;
        Ok(outcomes)
    }

    /// The key of the first compare of `txn` that does not hold, if any.
    fn failed_compare<'t>(
        table: &impl ReadableTable<&'static str, &'static [u8]>,
        txn: &'t Txn,
    ) -> Result<Option<&'t str>, StoreError> {
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
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    /// Commits whatever is queued, batch after batch, until the queue is empty. Runs on one
    /// blocking thread at a time: callers that arrive meanwhile join the next batch, so many
    /// concurrent commits share one fsync (group commit).
    fn drain_blocking(self) {
        /// Should a batch panic, the next commit starts a new drain instead of waiting forever.
        struct Reset(Arc<Mutex<Queue>>);
        impl Drop for Reset {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.lock().unwrap_or_else(|p| p.into_inner()).draining = false;
                }
            }
        }
        let queue = self.queue.clone();
        let _reset = Reset(queue.clone());
        let mut this = Some(self);
        while let Some(store) = &this {
            let batch = std::mem::take(&mut queue.lock().unwrap_or_else(|p| p.into_inner()).pending);
            let (txns, replies): (Vec<Txn>, Vec<_>) = batch.into_iter().unzip();
            let outcomes = match store.commit_batch_blocking(&txns) {
                Ok(outcomes) => outcomes,
                // Nothing of the batch was committed (redb aborts the write transaction).
                Err(err) => txns.iter().map(|_| Err(StoreError::Backend(err.to_string()))).collect(),
            };
            {
                let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
                if queue.pending.is_empty() {
                    queue.draining = false;
                    // Let go of the database before the last replies: a caller that drops the
                    // store once its commit returned may reopen the file at once.
                    this = None;
                }
            }
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Transactions waiting for the next group commit.
#[derive(Default)]
struct Queue {
    pending: Vec<(Txn, tokio::sync::oneshot::Sender<Result<(), StoreError>>)>,
    /// Whether a blocking thread is committing (and will pick up what is queued).
    draining: bool,
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
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let start_draining = {
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.pending.push((txn, reply));
            !std::mem::replace(&mut queue.draining, true)
        };
        if start_draining {
            let this = self.clone();
            tokio::task::spawn_blocking(move || this.drain_blocking());
        }
        outcome.await.map_err(|_| StoreError::Backend("the commit thread stopped".into()))?
    }

    async fn try_lock(&self, key: &str, owner: &str) -> Result<LockGuard, StoreError> {
        let mut held = Self::held(&self.locks);
        if let Some(holder) = held.get(key) {
            return Err(StoreError::Locked { key: key.to_string(), holder: holder.clone() });
        }
        held.insert(key.to_string(), Holder::new(owner));
        let (locks, owned) = (self.locks.clone(), key.to_string());
        // Freed at once (not in the returned future), so a dropped guard frees it synchronously.
        let release = Box::new(move || {
            Self::held(&locks).remove(&owned);
            Box::pin(async {}) as crate::lock::BoxFuture
        });
        Ok(LockGuard::new(key, LockState::unexpiring(), release))
    }
}
