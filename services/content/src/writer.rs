//! One Write session on one ref: containerd's STAT / WRITE / COMMIT rules.
//!
//! - The ref is locked for the writer's life, across replicas too; a second writer gets
//!   Unavailable. A writer whose lock was lost (see [`crate::locks`]) stops with Unavailable
//!   before its next change; the client resumes from the offset Status reports.
//! - `total` and `expected` may come with any message and update the ingest.
//! - An `expected` digest the namespace already has is AlreadyExists (clients treat that as
//!   success) and the ingest is dropped.
//! - An `expected` digest on disk for another namespace needs no upload: the writer reports
//!   offset = total = its size, and COMMIT only adds this namespace's record.
//! - WRITE at offset 0 restarts a partial ingest; any other offset than the current one is
//!   OutOfRange. (COMMIT at offset 0 without data commits what is there: clients that leave
//!   the offset unset on COMMIT mean that, not "throw everything away".)
//! - COMMIT checks size and digest (FailedPrecondition, ingest kept), then, under the
//!   digest's lock, fsyncs the data, renames it into the blobs, fsyncs the directory, and adds
//!   the record with its labels. Two replicas committing the same digest (from two refs)
//!   cannot corrupt the blob even without that lock: each renames a file it verified to hash
//!   to the digest, and rename(2) replaces the target atomically, so readers see one complete
//!   copy or the other. The lock is what keeps a Delete on another replica from removing the
//!   blob between a commit finding it present and adding its record; the record create is a
//!   compare-and-swap, so of two commits into one namespace the second gets AlreadyExists.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::ingest::Ingest;
use crate::locks::{DigestLock, RefLock};
use crate::records::Record;
use crate::store::{ContentStore, blocking};
use crate::time::{from_nanos, now_nanos};

/// Where a session stands, as each Write response reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub offset: i64,
    pub total: i64,
    /// Digest of the bytes so far (of the blob, once committed or shared).
    pub digest: Digest,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

enum State {
    /// Bytes go to an ingest on disk. `None` only while it is away in a blocking task (or
    /// after that task panicked).
    Ingest(Option<Box<Ingest>>),
    /// The expected blob is already on disk for another namespace: nothing to upload.
    Shared { digest: Digest, size: u64, started_at: SystemTime },
    /// Committed, or dropped because the namespace already had the content.
    Done { digest: Digest, size: u64, started_at: SystemTime, updated_at: SystemTime },
}

pub struct Writer {
    store: ContentStore,
    namespace: String,
    reference: String,
    guard: RefLock,
    state: State,
    total: i64,
    expected: Option<Digest>,
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn already_exists(digest: &Digest) -> Error {
    Error::AlreadyExists(format!("content {digest}: already exists"))
}

impl Writer {
    pub(crate) async fn open(
        store: ContentStore,
        namespace: &str,
        reference: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Writer> {
        crate::ingest::validate_ref(reference)?;
        if total < 0 {
            return Err(Error::InvalidArgument(format!("total must not be negative, got {total}")));
        }
        let id = crate::ingest::ingest_id(namespace, reference);
        let guard = store.inner.locks.lock_ref(namespace, &id, reference).await?;
        match Self::open_locked(store, namespace, reference, total, expected, guard).await {
            Ok(writer) => Ok(writer),
            Err((error, guard)) => {
                // Free the ref before the caller hears of the failure and tries again.
                guard.release().await;
                Err(error)
            }
        }
    }

    async fn open_locked(
        store: ContentStore,
        namespace: &str,
        reference: &str,
        total: i64,
        expected: Option<Digest>,
        guard: RefLock,
    ) -> Result<Writer, (Error, RefLock)> {
        if let Some(expected) = &expected {
            match store.inner.records.get(namespace, expected).await {
                Ok(None) => {}
                Ok(Some(_)) => return Err((already_exists(expected), guard)),
                Err(e) => return Err((e, guard)),
            }
            let (inner, digest) = (store.inner.clone(), expected.clone());
            let on_disk = match blocking(move || inner.blobs.size(&digest)).await {
                Ok(on_disk) => on_disk,
                Err(e) => return Err((e, guard)),
            };
            // Like containerd: a different announced size means the caller must upload.
            if let Some(size) = on_disk.filter(|size| total == 0 || total.unsigned_abs() == *size) {
                return Ok(Writer {
                    store,
                    namespace: namespace.to_string(),
                    reference: reference.to_string(),
                    guard,
                    state: State::Shared { digest: expected.clone(), size, started_at: SystemTime::now() },
                    total: as_i64(size),
                    expected: Some(expected.clone()),
                });
            }
        }
        let (inner, ns, r) = (store.inner.clone(), namespace.to_string(), reference.to_string());
        let ingest = match blocking(move || inner.ingests.open_ingest(&ns, &r)).await {
            Ok(ingest) => ingest,
            Err(e) => return Err((e, guard)),
        };
        let mut writer = Writer {
            total: ingest.total(),
            expected: ingest.expected().and_then(|e| Digest::parse(e).ok()),
            store,
            namespace: namespace.to_string(),
            reference: reference.to_string(),
            guard,
            state: State::Ingest(Some(Box::new(ingest))),
        };
        match writer.remember(total, expected).await {
            Ok(()) => Ok(writer),
            Err(e) => Err((e, writer.guard)),
        }
    }

    /// Ends the session: frees the ref (here and for the other replicas) before returning,
    /// so a client that hears back and carries on with the ref is not refused.
    pub async fn release(self) {
        self.guard.release().await;
    }

    /// Takes in the `total` and `expected` a message carries (0 and `None`: not given).
    pub async fn update(&mut self, total: i64, expected: Option<Digest>) -> Result<()> {
        self.check_aborted()?;
        if total < 0 {
            return Err(Error::InvalidArgument(format!("total must not be negative, got {total}")));
        }
        if let Some(expected) = &expected
            && self.store.inner.records.get(&self.namespace, expected).await?.is_some()
        {
            // The content is already here: the ingest is of no use any more.
            self.discard().await?;
            return Err(already_exists(expected));
        }
        self.remember(total, expected).await
    }

    async fn remember(&mut self, total: i64, expected: Option<Digest>) -> Result<()> {
        let total = (total > 0 && total != self.total).then_some(total);
        let expected = expected.filter(|e| self.expected.as_ref() != Some(e));
        if total.is_none() && expected.is_none() {
            return Ok(());
        }
        if let Some(total) = total {
            self.total = total;
        }
        if let Some(expected) = &expected {
            self.expected = Some(expected.clone());
        }
        if matches!(self.state, State::Ingest(_)) {
            self.with_ingest(move |ingest| {
                if let Some(total) = total {
                    ingest.set_total(total)?;
                }
                if let Some(expected) = &expected {
                    ingest.set_expected(expected)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// What STAT answers.
    pub fn progress(&self) -> Result<Progress> {
        Ok(match &self.state {
            State::Ingest(Some(ingest)) => Progress {
                offset: as_i64(ingest.offset()),
                total: self.total,
                digest: ingest.digest(),
                started_at: ingest.started_at(),
                updated_at: ingest.updated_at(),
            },
            State::Ingest(None) => return Err(broken()),
            State::Shared { digest, size, started_at } => Progress {
                offset: as_i64(*size),
                total: as_i64(*size),
                digest: digest.clone(),
                started_at: *started_at,
                updated_at: *started_at,
            },
            State::Done { digest, size, started_at, updated_at } => Progress {
                offset: as_i64(*size),
                total: as_i64(*size),
                digest: digest.clone(),
                started_at: *started_at,
                updated_at: *updated_at,
            },
        })
    }

    /// WRITE: `data` at `offset`.
    pub async fn write(&mut self, offset: i64, data: Vec<u8>) -> Result<Progress> {
        self.write_at(offset, data, false).await?;
        self.progress()
    }

    /// COMMIT: optionally a last piece of data, then the blob and its record with `labels`.
    pub async fn commit(
        &mut self,
        offset: i64,
        data: Vec<u8>,
        mut labels: HashMap<String, String>,
    ) -> Result<Progress> {
        // Checked before anything changes: a refused commit leaves the ingest as it was.
        berth_core::labels::validate(&labels).map_err(Error::from_status)?;
        // containerd stores no empty label values.
        labels.retain(|_, value| !value.is_empty());
        self.write_at(offset, data, true).await?;
        match &self.state {
            State::Ingest(_) => self.commit_ingest(labels).await?,
            State::Shared { .. } => self.commit_shared(labels).await?,
            State::Done { .. } => return Err(self.finished()),
        }
        self.progress()
    }

    async fn write_at(&mut self, offset: i64, data: Vec<u8>, committing: bool) -> Result<()> {
        self.check_aborted()?;
        if offset < 0 {
            return Err(Error::InvalidArgument(format!("write offset must not be negative, got {offset}")));
        }
        // An offset of 0 restarts the ingest, except on a COMMIT carrying no data.
        let restart = offset == 0 && !(committing && data.is_empty());
        if let State::Shared { digest, size, .. } = &self.state {
            let (digest, size) = (digest.clone(), *size);
            if offset > 0 && offset.unsigned_abs() != size {
                return Err(out_of_range(offset, size));
            }
            if !restart && data.is_empty() {
                return Ok(());
            }
            // The client sends bytes after all: become an ordinary ingest, seeded with the
            // blob when it appends to it (containerd copies it too).
            self.unshare(if restart { None } else { Some(digest) }).await?;
        }
        let current = match &self.state {
            State::Ingest(Some(ingest)) => ingest.offset(),
            State::Ingest(None) => return Err(broken()),
            State::Done { .. } => return Err(self.finished()),
            State::Shared { .. } => return Err(Error::Internal("writer still shared after unsharing".into())),
        };
        if offset > 0 && offset.unsigned_abs() != current {
            return Err(out_of_range(offset, current));
        }
        let truncate = restart && current > 0;
        if truncate || !data.is_empty() {
            self.with_ingest(move |ingest| {
                if truncate {
                    ingest.truncate()?;
                }
                if !data.is_empty() {
                    ingest.write(&data)?;
                }
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// Turns a shared writer into one with an ingest: empty, or holding a copy of `seed`.
    async fn unshare(&mut self, seed: Option<Digest>) -> Result<()> {
        let (inner, ns, r) = (self.store.inner.clone(), self.namespace.clone(), self.reference.clone());
        let (total, expected) = (self.total, self.expected.clone());
        let ingest = blocking(move || {
            let mut ingest = inner.ingests.open_ingest(&ns, &r)?;
            ingest.truncate()?;
            if let Some(seed) = seed {
                let Some(blob) = inner.blobs.open_file(&seed)? else {
                    return Err(Error::NotFound(format!("content digest {seed}: blob was removed while shared")));
                };
                copy_into(&blob, &mut ingest)?;
            }
            ingest.set_total(total)?;
            if let Some(expected) = &expected {
                ingest.set_expected(expected)?;
            }
            Ok(ingest)
        })
        .await?;
        self.state = State::Ingest(Some(Box::new(ingest)));
        Ok(())
    }

    async fn commit_ingest(&mut self, labels: HashMap<String, String>) -> Result<()> {
        let (data, digest, size) = self.with_ingest(|ingest| ingest.finish()).await?;
        if self.total > 0 && self.total.unsigned_abs() != size {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit size {size}, expected {} (ref {})",
                self.total, self.reference
            )));
        }
        if let Some(expected) = self.expected.as_ref().filter(|e| **e != digest) {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit digest {digest}, expected {expected} (ref {})",
                self.reference
            )));
        }
        let lock = self.store.inner.locks.lock_digest(&digest).await?;
        let result = self.commit_ingest_locked(&lock, data, digest, size, labels).await;
        lock.release().await;
        result
    }

    async fn commit_ingest_locked(
        &mut self,
        lock: &DigestLock,
        data: std::path::PathBuf,
        digest: Digest,
        size: u64,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        // The last moment to find out that another replica may have taken the ref or the
        // digest: after this, the data moves.
        self.guard.check()?;
        lock.check()?;
        let State::Ingest(slot) = &mut self.state else {
            return Err(Error::Internal("commit of a writer without ingest".into()));
        };
        let ingest = slot.take().ok_or_else(broken)?;
        let started_at = ingest.started_at();
        let (inner, owned) = (self.store.inner.clone(), digest.clone());
        blocking(move || {
            // Already there (committed meanwhile by another ref, namespace or replica): the
            // same bytes, so this copy is not needed.
            if inner.blobs.size(&owned)?.is_none() {
                inner.blobs.commit(&data, &owned)?;
            }
            ingest.remove()
        })
        .await?;
        let now = now_nanos();
        self.state = State::Done { digest: digest.clone(), size, started_at, updated_at: from_nanos(now) };
        let record = Record { size: as_i64(size), created_at: now, updated_at: now, labels };
        self.store.inner.records.create(&self.namespace, &digest, &record).await
    }

    async fn commit_shared(&mut self, labels: HashMap<String, String>) -> Result<()> {
        let State::Shared { digest, size, started_at } = &self.state else {
            return Err(Error::Internal("shared commit of a writer that is not shared".into()));
        };
        let (digest, size, started_at) = (digest.clone(), *size, *started_at);
        if self.total > 0 && self.total.unsigned_abs() != size {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit size {size}, expected {} (ref {})",
                self.total, self.reference
            )));
        }
        if let Some(expected) = self.expected.as_ref().filter(|e| **e != digest) {
            return Err(Error::FailedPrecondition(format!(
                "unexpected commit digest {digest}, expected {expected} (ref {})",
                self.reference
            )));
        }
        let lock = self.store.inner.locks.lock_digest(&digest).await?;
        let result = self.commit_shared_locked(&lock, digest, size, started_at, labels).await;
        lock.release().await;
        result
    }

    async fn commit_shared_locked(
        &mut self,
        lock: &DigestLock,
        digest: Digest,
        size: u64,
        started_at: SystemTime,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.guard.check()?;
        lock.check()?;
        let (inner, owned, ns, r) =
            (self.store.inner.clone(), digest.clone(), self.namespace.clone(), self.reference.clone());
        let present = blocking(move || {
            // An ingest left from an earlier attempt at this ref is of no use now.
            inner.ingests.remove(&ns, &r)?;
            inner.blobs.size(&owned)
        })
        .await?;
        if present.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "content {digest} was deleted before ref {} could commit it; write it again",
                self.reference
            )));
        }
        let now = now_nanos();
        self.state = State::Done { digest: digest.clone(), size, started_at, updated_at: from_nanos(now) };
        let record = Record { size: as_i64(size), created_at: now, updated_at: now, labels };
        self.store.inner.records.create(&self.namespace, &digest, &record).await
    }

    /// Drops the ingest (the namespace already has the content).
    async fn discard(&mut self) -> Result<()> {
        let digest = self.progress().map(|p| p.digest).unwrap_or_else(|_| Digest::of(b""));
        let previous = std::mem::replace(
            &mut self.state,
            State::Done { digest, size: 0, started_at: SystemTime::now(), updated_at: SystemTime::now() },
        );
        if let State::Ingest(Some(ingest)) = previous {
            blocking(move || ingest.remove()).await?;
        }
        Ok(())
    }

    /// Runs file work on the ingest in a blocking task, taking it out of and back into `state`.
    async fn with_ingest<T: Send + 'static>(
        &mut self,
        work: impl FnOnce(&mut Ingest) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let State::Ingest(slot) = &mut self.state else {
            return Err(Error::Internal("writer has no ingest".into()));
        };
        let mut ingest = slot.take().ok_or_else(broken)?;
        let (ingest, result) = tokio::task::spawn_blocking(move || {
            let result = work(&mut ingest);
            (ingest, result)
        })
        .await
        .map_err(|e| Error::Internal(format!("ingest task failed: {e}")))?;
        if let State::Ingest(slot) = &mut self.state {
            *slot = Some(ingest);
        }
        result
    }

    /// `Ok` while this writer may still change its ingest (see [`RefLock::check`]).
    fn check_aborted(&self) -> Result<()> {
        self.guard.check()
    }

    fn finished(&self) -> Error {
        Error::FailedPrecondition(format!("ref {}: already committed", self.reference))
    }
}

fn out_of_range(offset: i64, current: u64) -> Error {
    Error::OutOfRange(format!("write @{offset} must occur at current offset {current}"))
}

fn broken() -> Error {
    Error::Internal("writer unusable after an earlier failure".into())
}

/// Copies a whole blob into an (empty) ingest, hashing as it goes.
fn copy_into(blob: &std::fs::File, ingest: &mut Ingest) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; crate::store::READ_CHUNK];
    let mut offset = 0u64;
    loop {
        let n = blob.read_at(&mut buffer, offset).map_err(|e| Error::io("read shared blob", e))?;
        if n == 0 {
            return Ok(());
        }
        ingest.write(&buffer[..n])?;
        offset += n as u64;
    }
}
