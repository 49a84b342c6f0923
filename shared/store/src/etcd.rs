//! The etcd backend: records shared by every host pointed at one cluster.
//!
//! Keys live under a root prefix (so several stacks can share a cluster) followed by the
//! service's own prefix. A transaction becomes one etcd Txn whose compares check each key's
//! mod revision (or that it does not exist), so concurrent writers never lose an update:
//! the loser gets `Conflict` and retries with fresh data.
//!
//! Locks are keys attached to leases, under `<prefix>__locks/` (see [`lock`]).

mod lock;

/// Where locks live, under the store's prefix.
const LOCKS: &str = "__locks/";

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, TxnOp};

use crate::{Compare, Entry, LockGuard, Op, SCHEMA_VERSION, Store, StoreError, Txn};

/// How long one etcd call may take before the caller sees Unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a lock outlives a holder that stopped renewing it (died, lost etcd).
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(10);

/// A store on an etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    lock_ttl: Duration,
}

fn unavailable(err: etcd_client::Error) -> StoreError {
    match &err {
        // Connection failures surface as Unavailable, DeadlineExceeded, Cancelled or (for a
        // refused connection) Unknown "transport error"; anything else is etcd's own answer.
        etcd_client::Error::GRpcStatus(status)
            if !matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ) =>
        {
            StoreError::Backend(format!("etcd: {}", status.message()))
        }
        _ => StoreError::Unavailable(format!("etcd: {err}")),
    }
}

/// Keys per page when listing.
const LIST_PAGE: i64 = 512;

/// The end of the key range holding every key that starts with `prefix` (etcd's prefix end).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

impl Etcd {
    /// Connects to `endpoints` (host:port each) and scopes every key under `prefix`.
    ///
    /// The connection is made lazily and re-made after failures, so a service can start
    /// while etcd is down and recovers without a restart once it is back.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        let urls: Vec<String> =
            endpoints.iter().map(|e| if e.contains("://") { e.clone() } else { format!("http://{e}") }).collect();
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(CALL_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(2));
        let client = Client::connect(&urls, Some(options)).await.map_err(unavailable)?;
        let store = Etcd { client, prefix: prefix.to_string(), lock_ttl: DEFAULT_LOCK_TTL };
        store.record_schema().await?;
        Ok(store)
    }

    async fn record_schema(&self) -> Result<(), StoreError> {
        let key = format!("{}__schema", self.prefix);
        let mut kv = self.client.kv_client();
        let current = kv.get(key.as_str(), None).await.map_err(unavailable)?;
        if let Some(kv_pair) = current.kvs().first() {
            let version: u64 = std::str::from_utf8(kv_pair.value()).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            if version > SCHEMA_VERSION {
                return Err(StoreError::Backend(format!(
                    "etcd prefix {} has schema version {version}, newer than this build understands ({SCHEMA_VERSION})",
                    self.prefix
                )));
            }
            return Ok(());
        }
        kv.put(key, SCHEMA_VERSION.to_string(), None).await.map_err(unavailable)?;
        Ok(())
    }

    /// Sets how long a lock outlives a holder that stopped renewing it (whole seconds, rounded
    /// up; etcd raises TTLs below its minimum, about 2 s by default).
    pub fn with_lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl Store for Etcd {
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let response = self.client.kv_client().get(self.full(key), None).await.map_err(unavailable)?;
        Ok(response.kvs().first().map(|kv| Entry {
            key: key.to_string(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision() as u64,
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let full = self.full(prefix);
        let end = range_end(full.as_bytes());
        let locks = format!("{}{LOCKS}", self.prefix);
        let mut kv = self.client.kv_client();
        let mut entries = Vec::new();
        let mut start = full.into_bytes();
        // Pages at one revision: one consistent view however large, and no response past
        // the client's message size limit.
        let mut revision = 0;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = kv.get(start.clone(), Some(options)).await.map_err(unavailable)?;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                // Locks are not records.
                if kv.key().starts_with(locks.as_bytes()) {
                    continue;
                }
                let key = std::str::from_utf8(kv.key())
                    .map_err(|e| StoreError::Backend(format!("etcd key is not UTF-8: {e}")))?;
                entries.push(Entry {
                    key: key[self.prefix.len()..].to_string(),
                    value: kv.value().to_vec(),
                    revision: kv.mod_revision() as u64,
                });
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(entries),
            }
        }
    }

    async fn commit(&self, txn: Txn) -> Result<(), StoreError> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|compare| match compare {
                Compare::Absent(key) => EtcdCompare::version(self.full(key), CompareOp::Equal, 0),
                Compare::Revision(key, revision) => {
                    EtcdCompare::mod_revision(self.full(key), CompareOp::Equal, *revision as i64)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(key, value) => TxnOp::put(self.full(key), value.clone(), None),
                Op::Delete(key) => TxnOp::delete(self.full(key), None),
            })
            .collect();
        let response = self
            .client
            .kv_client()
            .txn(etcd_client::Txn::new().when(compares).and_then(ops))
            .await
            .map_err(unavailable)?;
        if response.succeeded() {
            Ok(())
        } else {
            let keys: Vec<&str> = txn
                .compares
                .iter()
                .map(|c| match c {
                    Compare::Absent(k) | Compare::Revision(k, _) => k.as_str(),
                })
                .collect();
            Err(StoreError::Conflict(format!("{} changed concurrently", keys.join(", "))))
        }
    }

    async fn try_lock(&self, key: &str, owner: &str) -> Result<LockGuard, StoreError> {
        lock::try_lock(self, key, owner).await
    }
}
