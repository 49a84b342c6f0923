//! Locks held in the metadata store: what lets several processes share one resource (the
//! content replicas' ingests over one blob directory) without two of them writing it at once.
//!
//! [`Store::try_lock`] takes a lock or fails at once with
//! [`StoreError::Locked`]; [`lock_waiting`] retries until a deadline. The [`LockGuard`] holds
//! the lock until it is dropped or [`released`](LockGuard::release). A lock can be *lost*
//! while held (on etcd: the lease could not be renewed in time), so whoever does work under a
//! lock calls [`LockGuard::check`] before each step that must not happen unlocked, or selects
//! on [`LockGuard::lost`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::{Store, StoreError};

pub(crate) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
/// Frees the lock; the future does the (possibly remote) work.
pub(crate) type Release = Box<dyn FnOnce() -> BoxFuture + Send + Sync>;

/// Longest pause between two attempts of [`lock_waiting`].
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the holder of a lock recorded about itself; reported to whoever is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Who holds it, as the holder described itself (e.g. `content pid 42 on host-a`).
    pub owner: String,
    /// When the holder took it (by the holder's clock).
    pub since: SystemTime,
}

impl Holder {
    pub(crate) fn new(owner: &str) -> Holder {
        Holder { owner: owner.to_string(), since: SystemTime::now() }
    }

    /// `<nanoseconds since the epoch> <owner>`: the value stored under a lock key.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let nanos = self.since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("{nanos} {}", self.owner).into_bytes()
    }

    /// Reads back [`Holder::encode`]; something unreadable is reported as it is.
    pub(crate) fn decode(raw: &[u8]) -> Holder {
        let text = String::from_utf8_lossy(raw);
        match text.split_once(' ').and_then(|(nanos, owner)| Some((nanos.parse::<u64>().ok()?, owner))) {
            Some((nanos, owner)) => {
                Holder { owner: owner.to_string(), since: UNIX_EPOCH + Duration::from_nanos(nanos) }
            }
            None => Holder { owner: text.into_owned(), since: UNIX_EPOCH },
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = SystemTime::now().duration_since(self.since).unwrap_or_default();
        write!(f, "{} for {:.3}s", self.owner, held.as_secs_f64())
    }
}

/// Shared by a guard and whatever keeps its lock alive.
pub(crate) struct LockState {
    /// Why the lock was lost; `None` while it is held.
    lost: watch::Sender<Option<String>>,
    epoch: Instant,
    /// Milliseconds after `epoch` until which the lock is certainly still ours;
    /// `u64::MAX` when it cannot expire.
    valid_until: AtomicU64,
}

impl LockState {
    /// A lock that stays held until released (the embedded backend's).
    pub(crate) fn unexpiring() -> Arc<LockState> {
        Self::until(None)
    }

    /// A lock that is only ours until `valid_until` unless extended.
    pub(crate) fn expiring(valid_until: Instant) -> Arc<LockState> {
        Self::until(Some(valid_until))
    }

    fn until(valid_until: Option<Instant>) -> Arc<LockState> {
        let epoch = Instant::now();
        let millis = valid_until.map_or(u64::MAX, |until| millis_after(epoch, until));
        Arc::new(LockState { lost: watch::Sender::new(None), epoch, valid_until: AtomicU64::new(millis) })
    }

    /// Moves the validity of an expiring lock to `until` (never backwards).
    pub(crate) fn extend(&self, until: Instant) {
        self.valid_until.fetch_max(millis_after(self.epoch, until), Ordering::SeqCst);
    }

    /// When the lock stops being certainly ours, `None` when it cannot expire.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.valid_until.load(Ordering::SeqCst) {
            u64::MAX => None,
            millis => Some(self.epoch + Duration::from_millis(millis)),
        }
    }

    /// Marks the lock lost (the first reason sticks).
    pub(crate) fn lose(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.lost.send_if_modified(|lost| {
            if lost.is_none() {
                *lost = Some(reason);
                true
            } else {
                false
            }
        });
    }

    fn lost_reason(&self) -> Option<String> {
        if let Some(reason) = self.lost.borrow().clone() {
            return Some(reason);
        }
        let deadline = self.deadline()?;
        (Instant::now() >= deadline).then(|| "its lease was not renewed in time".to_string())
    }
}

/// Holds a lock until dropped; see the module documentation.
///
/// Dropping releases in the background (on etcd: the lease is revoked by a spawned task, and
/// outside a tokio runtime it simply expires); [`LockGuard::release`] releases and waits.
pub struct LockGuard {
    key: String,
    state: Arc<LockState>,
    release: Option<Release>,
}

impl LockGuard {
    pub(crate) fn new(key: &str, state: Arc<LockState>, release: Release) -> LockGuard {
        LockGuard { key: key.to_string(), state, release: Some(release) }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// `Ok` while the lock is certainly still held; [`StoreError::LockLost`] once it may not be.
    /// Lost is final: a holder that lost its lock must stop and take it again.
    pub fn check(&self) -> Result<(), StoreError> {
        match self.state.lost_reason() {
            None => Ok(()),
            Some(reason) => Err(StoreError::LockLost { key: self.key.clone(), reason }),
        }
    }

    /// Resolves once the lock is lost (never, for a lock that cannot expire), with the reason.
    pub async fn lost(&self) -> String {
        let mut lost = self.state.lost.subscribe();
        loop {
            if let Some(reason) = self.state.lost_reason() {
                return reason;
            }
            // The sender lives in `state`, which this guard keeps: `changed` cannot fail.
            tokio::select! {
                _ = lost.changed() => {}
                () = sleep_until(self.state.deadline()) => {}
            }
        }
    }

    /// Releases the lock and waits until others can take it.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            release().await;
        }
    }
}

/// Milliseconds from `epoch` to `until`, kept below the "cannot expire" marker.
fn millis_after(epoch: Instant, until: Instant) -> u64 {
    u64::try_from(until.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX - 1).min(u64::MAX - 1)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").field("key", &self.key).field("lost", &self.state.lost_reason()).finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(release) = self.release.take() else { return };
        let releasing = release();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(releasing);
        }
    }
}

/// [`Store::try_lock`] until it succeeds or `wait` has passed; then the last `Locked` error.
/// For short critical sections (a commit), where waiting beats refusing.
pub async fn lock_waiting(store: &dyn Store, key: &str, owner: &str, wait: Duration) -> Result<LockGuard, StoreError> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(5);
    loop {
        match store.try_lock(key, owner).await {
            Err(StoreError::Locked { .. }) if Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_round_trip() {
        let holder = Holder::new("content pid 7 on host a");
        assert_eq!(Holder::decode(&holder.encode()).owner, holder.owner);
        let since = Holder::decode(&holder.encode()).since;
        assert!(holder.since.duration_since(since).unwrap_or_default() < Duration::from_micros(1));
        assert_eq!(Holder::decode(b"garbage").owner, "garbage");
        assert!(holder.to_string().starts_with("content pid 7 on host a for 0.0"), "{holder}");
    }

    #[tokio::test]
    async fn expiring_state_is_lost_at_its_deadline_and_can_be_extended() {
        let state = LockState::expiring(Instant::now() + Duration::from_millis(50));
        let guard = LockGuard::new("k", state.clone(), Box::new(|| Box::pin(async {})));
        assert!(guard.check().is_ok());
        state.extend(Instant::now() + Duration::from_millis(150));
        state.extend(Instant::now());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(guard.check().is_ok(), "extended, and never moved back");
        let reason = tokio::time::timeout(Duration::from_secs(2), guard.lost()).await.expect("lost at the deadline");
        assert!(reason.contains("not renewed"), "{reason}");
        assert!(matches!(guard.check(), Err(StoreError::LockLost { .. })));
    }

    #[tokio::test]
    async fn a_reported_loss_wakes_the_holder_and_sticks() {
        let state = LockState::unexpiring();
        let guard = LockGuard::new("k", state.clone(), Box::new(|| Box::pin(async {})));
        assert!(guard.check().is_ok());
        let waiting = tokio::time::timeout(Duration::from_millis(30), guard.lost()).await;
        assert!(waiting.is_err(), "an unexpiring lock is not lost by itself");
        state.lose("lease revoked");
        state.lose("second reason");
        assert_eq!(guard.lost().await, "lease revoked");
        let err = guard.check().unwrap_err();
        assert_eq!(err.to_string(), "lost the lock k: lease revoked");
    }
}
