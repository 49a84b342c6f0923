//! In-process locks: one writer per ingest ref, and one blob-lifecycle change per digest.
//!
//! Replicas sharing a blob directory need cross-process ref locks too; those come with the
//! etcd backend (see DESIGN.md), which is why the binary only accepts `--metadata local`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::error::{Error, Result};

struct Held {
    since: Instant,
    aborted: AtomicBool,
}

/// Who is writing which `(namespace, ref)`.
#[derive(Default)]
pub struct RefLocks {
    held: Mutex<HashMap<(String, String), Arc<Held>>>,
}

impl RefLocks {
    fn map(&self) -> MutexGuard<'_, HashMap<(String, String), Arc<Held>>> {
        // A panic elsewhere while holding this map cannot leave it inconsistent.
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes the ref, or fails with Unavailable when another writer has it (like containerd,
    /// the second writer is refused rather than queued).
    pub fn try_lock(self: &Arc<Self>, namespace: &str, reference: &str) -> Result<RefGuard> {
        let key = (namespace.to_string(), reference.to_string());
        let mut map = self.map();
        if let Some(held) = map.get(&key) {
            return Err(Error::Unavailable(format!(
                "ref {reference} locked (held for {:.3}s by another writer)",
                held.since.elapsed().as_secs_f64()
            )));
        }
        let held = Arc::new(Held { since: Instant::now(), aborted: AtomicBool::new(false) });
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

/// Holds a ref until dropped.
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

/// Serializes what creates or removes a blob or its records for one digest (commit, delete),
/// so a delete deciding the blob is unreferenced cannot race a commit that relies on it.
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
    use std::time::Duration;

    #[test]
    fn second_writer_is_unavailable_until_the_first_drops() {
        let locks = Arc::new(RefLocks::default());
        let first = locks.try_lock("ns", "ref").unwrap();
        let err = locks.try_lock("ns", "ref").err().unwrap();
        assert!(matches!(&err, Error::Unavailable(m) if m.starts_with("ref ref locked")), "{err}");
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
