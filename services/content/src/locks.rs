//! Locks: one writer per ingest ref, and one blob-lifecycle change (commit, delete) per digest,
//! within this process and across the replicas sharing its blob directory.
//!
//! Each lock is taken twice: first in this process ([`RefLocks`], [`DigestLocks`]: cheap, and
//! a second local writer is refused without a round trip), then in the metadata store
//! ([`berth_store::Store::try_lock`]: in-process with the embedded backend, an etcd lease
//! shared by every replica with etcd). The shared lock is the one that matters across
//! replicas; it can be *lost* (its lease not renewed in time), so a writer checks it before
//! each step that changes the ingest or the blobs ([`RefLock::check`], [`DigestLock::check`])
//! and stops with Unavailable once it is gone. Release is shared first, then local, so a
//! local contender never sees the local lock free while the shared one is still held.
//!
//! Keys: `content/v1/locks/ingests/<ingest id>` (the hash that names the ingest directory,
//! see [`crate::ingest::ingest_id`]) and `content/v1/locks/digests/<digest>`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use berth_store::{LockGuard, Store, StoreError};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::time::rfc3339;

/// How long a commit or delete waits for another one of the same digest (they are short; a
/// dead holder's lock goes with its lease TTL).
const DIGEST_LOCK_WAIT: Duration = Duration::from_secs(30);

/// The message containerd gives a second writer: `ref <ref> locked for <duration> (since <time>)`.
fn ref_locked(reference: &str, since: SystemTime, by: &str) -> Error {
    let held = SystemTime::now().duration_since(since).unwrap_or_default();
    Error::Unavailable(format!(
        "ref {reference} locked for {:.3}s (since {}) by {by}",
        held.as_secs_f64(),
        rfc3339(since)
    ))
}

/// What this process calls itself in the locks it holds.
fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("berth-content pid {} on {}", std::process::id(), host.trim())
}

/// Every lock the content store takes.
pub struct Locks {
    refs: Arc<RefLocks>,
    digests: DigestLocks,
    shared: Arc<dyn Store>,
    owner: String,
}

impl Locks {
    pub fn new(shared: Arc<dyn Store>) -> Locks {
        Locks { refs: Arc::default(), digests: DigestLocks::default(), shared, owner: owner() }
    }

    /// Takes `reference` for one writer, or fails with Unavailable when another writer (here
    /// or on another replica) has it: like containerd, a second writer is refused, not queued.
    pub async fn lock_ref(&self, namespace: &str, ingest_id: &str, reference: &str) -> Result<RefLock> {
        let local = self.refs.try_lock(namespace, reference)?;
        let key = format!("content/v1/locks/ingests/{ingest_id}");
        match self.shared.try_lock(&key, &self.owner).await {
            Ok(shared) => {
                Ok(RefLock { local, shared, namespace: namespace.to_string(), reference: reference.to_string() })
            }
            Err(StoreError::Locked { holder, .. }) => Err(ref_locked(reference, holder.since, &holder.owner)),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes `digest` for a commit or delete, waiting for one in progress (here or on
    /// another replica) to finish.
    pub async fn lock_digest(&self, digest: &Digest) -> Result<DigestLock> {
        let local = self.digests.lock(digest.as_str()).await;
        let key = format!("content/v1/locks/digests/{digest}");
        match berth_store::lock_waiting(self.shared.as_ref(), &key, &self.owner, DIGEST_LOCK_WAIT).await {
            Ok(shared) => Ok(DigestLock { _local: local, shared, digest: digest.clone() }),
            Err(StoreError::Locked { holder, .. }) => Err(Error::Unavailable(format!(
                "content {digest}: a commit or delete of it by {holder} is still in progress; try again"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Tells this process's writer of the ref (if any) that its ingest was aborted under it.
    /// A writer on another replica finds out at its commit (see `Ingest::finish`).
    pub fn mark_aborted(&self, namespace: &str, reference: &str) {
        self.refs.mark_aborted(namespace, reference);
    }
}

/// One writer's hold on its ref, for the life of its Write stream.
pub struct RefLock {
    local: RefGuard,
    shared: LockGuard,
    namespace: String,
    reference: String,
}

impl RefLock {
    /// `Ok` while the writer may change its ingest: NotFound once an Abort removed it,
    /// Unavailable once the shared lock may have passed to another replica.
    pub fn check(&self) -> Result<()> {
        if self.local.aborted() {
            return Err(Error::NotFound(format!(
                "ref {}: ingest was aborted in namespace {}",
                self.reference, self.namespace
            )));
        }
        self.shared.check().map_err(|e| {
            Error::Unavailable(format!(
                "ref {}: {e}; stopped writing, resume from the offset Status reports",
                self.reference
            ))
        })
    }

    /// Frees the ref for the next writer, here or on another replica, before returning.
    pub async fn release(self) {
        self.shared.release().await;
        drop(self.local);
    }
}

/// A commit's or delete's hold on a digest.
pub struct DigestLock {
    _local: DigestGuard,
    shared: LockGuard,
    digest: Digest,
}

impl DigestLock {
    /// `Ok` while no other replica can be changing this digest's blob.
    pub fn check(&self) -> Result<()> {
        self.shared.check().map_err(|e| Error::Unavailable(format!("content {}: {e}; try again", self.digest)))
    }

    /// Frees the digest for the next commit or delete before returning.
    pub async fn release(self) {
        self.shared.release().await;
    }
}

struct Held {
    since: SystemTime,
    aborted: AtomicBool,
}

/// Who is writing which `(namespace, ref)` in this process.
#[derive(Default)]
pub struct RefLocks {
    held: Mutex<HashMap<(String, String), Arc<Held>>>,
}

impl RefLocks {
    fn map(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<Held>>> {
        // A panic elsewhere while holding this map cannot leave it inconsistent.
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the ref, or fails with Unavailable when another writer of this process has it.
    pub fn try_lock(self: &Arc<Self>, namespace: &str, reference: &str) -> Result<RefGuard> {
        let key = (namespace.to_string(), reference.to_string());
        let mut map = self.map();
        if let Some(held) = map.get(&key) {
            return Err(ref_locked(reference, held.since, "another writer"));
        }
        let held = Arc::new(Held { since: SystemTime::now(), aborted: AtomicBool::new(false) });
        map.insert(key.clone(), held.clone());
        Ok(RefGuard { locks: self.clone(), key, held })
    }

    /// Tells the current writer of the ref (if any) that its ingest was aborted under it.
    pub fn mark_aborted(&self, namespace: &str, reference: &str) {
        if let Some(held) = self.map().get(&(namespace.to_string(), reference.to_string())) {
            held.aborted.store(true, Ordering::SeqCst);
        }
    }
}

/// Holds a ref in this process until dropped.
pub struct RefGuard {
    locks: Arc<RefLocks>,
    key: (String, String),
    held: Arc<Held>,
}

impl RefGuard {
    /// True once an Abort removed this writer's ingest.
    pub fn aborted(&self) -> bool {
        self.held.aborted.load(Ordering::SeqCst)
    }
}

impl Drop for RefGuard {
    fn drop(&mut self) {
        let mut map = self.locks.map();
        if map.get(&self.key).is_some_and(|held| Arc::ptr_eq(held, &self.held)) {
            map.remove(&self.key);
        }
    }
}

type DigestMap = HashMap<String, Arc<tokio::sync::Mutex<()>>>;

/// Serializes, in this process, what creates or removes a blob or its records for one digest
/// (commit, delete), so a delete deciding the blob is unreferenced cannot race a commit that
/// relies on it. Waiters queue fairly here before they poll the shared lock.
#[derive(Default)]
pub struct DigestLocks {
    held: Arc<Mutex<DigestMap>>,
}

impl DigestLocks {
    pub async fn lock(&self, digest: &str) -> DigestGuard {
        let mutex = {
            let mut map = self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            map.entry(digest.to_string()).or_default().clone()
        };
        let guard = mutex.clone().lock_owned().await;
        DigestGuard { map: self.held.clone(), digest: digest.to_string(), mutex, guard: Some(guard) }
    }
}

/// Holds a digest until dropped; the map entry goes with its last user.
pub struct DigestGuard {
    map: Arc<Mutex<DigestMap>>,
    digest: String,
    mutex: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for DigestGuard {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.guard.take();
        // Every clone is taken under the map lock: map + this guard's own `mutex` = 2 + the
        // `guard`'s clone, now dropped. Nobody else waiting means the entry can go.
        if Arc::strong_count(&self.mutex) == 2 {
            map.remove(&self.digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_unavailable_until_the_first_drops() {
        let locks = Arc::new(RefLocks::default());
        let first = locks.try_lock("ns", "ref").unwrap();
        let err = locks.try_lock("ns", "ref").err().unwrap();
        assert!(matches!(&err, Error::Unavailable(m) if m.starts_with("ref ref locked for 0.")), "{err}");
        assert!(err.to_string().contains("(since 20"), "{err}");
        assert!(locks.try_lock("other", "ref").is_ok(), "refs are per namespace");
        assert!(!first.aborted());
        locks.mark_aborted("ns", "ref");
        assert!(first.aborted());
        drop(first);
        assert!(locks.try_lock("ns", "ref").is_ok());
        assert!(locks.map().is_empty());
    }

    #[tokio::test]
    async fn digest_locks_serialize_and_clean_up() {
        let locks = Arc::new(DigestLocks::default());
        let first = locks.lock("d").await;
        let other = locks.clone();
        let waiter = tokio::spawn(async move {
            let _second = other.lock("d").await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the second holder waits");
        let _unrelated = locks.lock("e").await;
        drop(first);
        waiter.await.unwrap();
        drop(_unrelated);
        assert!(locks.held.lock().unwrap().is_empty());
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    fn locks() -> (tempfile::TempDir, Locks) {
        let dir = tempfile::tempdir().unwrap();
        let store = berth_store::Embedded::open(&dir.path().join("content.redb")).unwrap();
        (dir, Locks::new(Arc::new(store)))
    }

    #[tokio::test]
    async fn ref_locks_refuse_a_second_writer_until_released() {
        let (_dir, locks) = locks();
        let first = locks.lock_ref("ns", "id-1", "r").await.unwrap();
        assert!(first.check().is_ok());
        let err = locks.lock_ref("ns", "id-1", "r").await.err().unwrap();
        assert!(matches!(&err, Error::Unavailable(m) if m.starts_with("ref r locked for")), "{err}");
        locks.mark_aborted("ns", "r");
        assert!(matches!(first.check(), Err(Error::NotFound(_))));
        first.release().await;
        assert!(locks.lock_ref("ns", "id-1", "r").await.is_ok());
    }

    #[tokio::test]
    async fn a_ref_held_on_another_replica_is_unavailable() {
        let (_dir, locks) = locks();
        // Another replica holds the shared lock; this process has no local writer.
        let _elsewhere = locks.shared.try_lock("content/v1/locks/ingests/id-2", "replica b").await.unwrap();
        let err = locks.lock_ref("ns", "id-2", "r").await.err().unwrap();
        assert!(
            matches!(&err, Error::Unavailable(m) if m.starts_with("ref r locked for") && m.ends_with("by replica b")),
            "{err}"
        );
        // The refused attempt did not keep the local lock.
        assert!(locks.refs.map().is_empty());
    }

    #[tokio::test]
    async fn digest_locks_wait_for_each_other() {
        let (_dir, locks) = locks();
        let locks = Arc::new(locks);
        let digest = Digest::of(b"d");
        let first = locks.lock_digest(&digest).await.unwrap();
        assert!(first.check().is_ok());
        let (other, waiting_for) = (locks.clone(), digest.clone());
        let waiter = tokio::spawn(async move { other.lock_digest(&waiting_for).await.map(drop) });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished(), "the second holder waits");
        drop(first);
        waiter.await.unwrap().unwrap();
    }
}
