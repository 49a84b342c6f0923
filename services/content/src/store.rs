//! The content store: blobs on disk, their per-namespace records, and ingests, with
//! containerd's semantics. No gRPC types here; `service` adapts this to the wire.
//!
//! Sharing: one blob file serves every namespace that has a record of its digest (containerd's
//! "shared" policy). A namespace gets a record by committing the bytes, or, when the blob is
//! already on disk, by a Write naming it as `expected` and committing without uploading.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use berth_core::filters::AnyOf;
use berth_store::Store;

use crate::blobs::Blobs;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::filters::{InfoFields, StatusFields};
use crate::ingest::{self, Ingests, Status};
use crate::locks::{DigestLock, Locks};
use crate::records::{self, Record, Records};
use crate::time::{from_nanos, now_nanos};
use crate::writer::Writer;

/// Size of the chunks Read streams (containerd uses 1 MiB too).
pub const READ_CHUNK: usize = 1 << 20;

/// What Info, List and Update report about a blob in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub digest: Digest,
    pub size: i64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: HashMap<String, String>,
}

impl Info {
    fn new(digest: Digest, record: Record) -> Info {
        Info {
            digest,
            size: record.size,
            created_at: from_nanos(record.created_at),
            updated_at: from_nanos(record.updated_at),
            labels: record.labels,
        }
    }
}

/// Cheap to clone; every clone is the same store.
#[derive(Clone)]
pub struct ContentStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub blobs: Blobs,
    pub ingests: Ingests,
    pub records: Records,
    pub locks: Locks,
}

/// Runs blocking file work off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

impl ContentStore {
    /// Opens the store rooted at `root` (blobs/ and ingest/ below it) with its records in
    /// `metadata`. Cleans up after an interrupted run: temp files, half-created or
    /// half-committed ingests. Existing ingests are kept and can be resumed.
    pub fn open(root: &Path, metadata: Arc<dyn Store>) -> Result<ContentStore> {
        let blobs = Blobs::open(root)?;
        let ingests = Ingests::open(root)?;
        Ok(ContentStore {
            inner: Arc::new(Inner {
                blobs,
                ingests,
                locks: Locks::new(metadata.clone()),
                records: Records::new(metadata),
            }),
        })
    }

    pub async fn info(&self, namespace: &str, digest: &Digest) -> Result<Info> {
        match self.inner.records.get(namespace, digest).await? {
            Some(record) => Ok(Info::new(digest.clone(), record)),
            None => Err(records::not_found(digest)),
        }
    }

    /// Changes a blob's labels as containerd does: no paths or `labels` replaces them all,
    /// `labels.<key>` sets (or, given no value, removes) one key. Anything else is refused.
    pub async fn update(
        &self,
        namespace: &str,
        digest: &Digest,
        labels: HashMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        for path in paths {
            if path != "labels" && !path.starts_with("labels.") {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {path:?} field on content info {digest}: only labels and labels.<key> can change"
                )));
            }
        }
        let record = self
            .inner
            .records
            .update(namespace, digest, |record| {
                let mut updated = record.labels.clone();
                if paths.is_empty() {
                    updated = labels.clone();
                }
                for path in paths {
                    if path == "labels" {
                        updated = labels.clone();
                    } else if let Some(key) = path.strip_prefix("labels.") {
                        match labels.get(key) {
                            Some(value) => updated.insert(key.to_string(), value.clone()),
                            None => updated.remove(key),
                        };
                    }
                }
                // An empty value removes the label (containerd does not store empty labels).
                updated.retain(|_, value| !value.is_empty());
                berth_core::labels::validate(&updated).map_err(Error::from_status)?;
                record.labels = updated;
                record.updated_at = now_nanos();
                Ok(())
            })
            .await?;
        Ok(Info::new(digest.clone(), record))
    }

    /// The namespace's blobs matching `filters`, in digest order.
    pub async fn list(&self, namespace: &str, filters: &AnyOf) -> Result<Vec<Info>> {
        let records = self.inner.records.list(namespace).await?;
        Ok(records
            .into_iter()
            .map(|(digest, record)| Info::new(digest, record))
            .filter(|info| filters.matches(&InfoFields(info)))
            .collect())
    }

    /// Removes the namespace's record, and the blob file once no namespace references it.
    ///
    /// Under the digest's lock (shared by the replicas), so no commit of the same digest can
    /// add a record relying on the blob between the check and the removal.
    pub async fn delete(&self, namespace: &str, digest: &Digest) -> Result<()> {
        let lock = self.inner.locks.lock_digest(digest).await?;
        let result = self.delete_locked(namespace, digest, &lock).await;
        lock.release().await;
        result
    }

    async fn delete_locked(&self, namespace: &str, digest: &Digest, lock: &DigestLock) -> Result<()> {
        self.inner.records.delete(namespace, digest).await?;
        if !self.inner.records.referenced(digest).await? {
            // A lost lock leaves the blob behind (harmless) rather than racing a commit.
            lock.check()?;
            let inner = self.inner.clone();
            let digest = digest.clone();
            blocking(move || inner.blobs.remove(&digest)).await?;
        }
        Ok(())
    }

    /// Opens `size` bytes (0: to the end) of a blob from `offset` for reading.
    pub async fn reader(&self, namespace: &str, digest: &Digest, offset: i64, size: i64) -> Result<BlobReader> {
        if offset < 0 {
            return Err(Error::InvalidArgument(format!("read offset must not be negative, got {offset}")));
        }
        if size < 0 {
            return Err(Error::InvalidArgument(format!("read size must not be negative, got {size}")));
        }
        self.info(namespace, digest).await?;
        let inner = self.inner.clone();
        let owned = digest.clone();
        let Some(file) = blocking(move || inner.blobs.open_file(&owned)).await? else {
            return Err(Error::NotFound(format!("content digest {digest}: blob is missing from the blob directory")));
        };
        let length = file.metadata().map_err(|e| Error::io(format!("stat blob {digest}"), e))?.len();
        let offset = offset.unsigned_abs();
        if offset > length {
            return Err(Error::OutOfRange(format!(
                "read offset {offset} is past the end of {digest} ({length} bytes)"
            )));
        }
        let end = if size == 0 { length } else { length.min(offset.saturating_add(size.unsigned_abs())) };
        Ok(BlobReader { file: Arc::new(file), offset, end })
    }

    pub async fn status(&self, namespace: &str, reference: &str) -> Result<Status> {
        ingest::validate_ref(reference)?;
        let (inner, ns, r) = (self.inner.clone(), namespace.to_string(), reference.to_string());
        match blocking(move || inner.ingests.status(&ns, &r)).await? {
            Some(status) => Ok(status),
            None => Err(no_ingest(namespace, reference)),
        }
    }

    /// The namespace's ingests matching `filters` (field `ref`), ordered by ref.
    pub async fn list_statuses(&self, namespace: &str, filters: &AnyOf) -> Result<Vec<Status>> {
        let (inner, ns) = (self.inner.clone(), namespace.to_string());
        let mut statuses = blocking(move || inner.ingests.list(&ns)).await?;
        statuses.retain(|status| filters.matches(&StatusFields(status)));
        statuses.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(statuses)
    }

    /// Drops an ingest. A writer still holding the ref fails on its next step.
    pub async fn abort(&self, namespace: &str, reference: &str) -> Result<()> {
        ingest::validate_ref(reference)?;
        self.inner.locks.mark_aborted(namespace, reference);
        let (inner, ns, r) = (self.inner.clone(), namespace.to_string(), reference.to_string());
        if blocking(move || inner.ingests.remove(&ns, &r)).await? {
            Ok(())
        } else {
            Err(no_ingest(namespace, reference))
        }
    }

    /// Starts or resumes the ingest `reference`; see [`Writer`].
    pub async fn writer(
        &self,
        namespace: &str,
        reference: &str,
        total: i64,
        expected: Option<Digest>,
    ) -> Result<Writer> {
        Writer::open(self.clone(), namespace, reference, total, expected).await
    }
}

pub(crate) fn no_ingest(namespace: &str, reference: &str) -> Error {
    Error::NotFound(format!("ref {reference}: no such ingest in namespace {namespace}"))
}

/// A range of one blob, read in [`READ_CHUNK`] pieces.
pub struct BlobReader {
    file: Arc<File>,
    offset: u64,
    end: u64,
}

impl BlobReader {
    /// The next chunk and its offset in the blob; `None` at the end of the range.
    pub async fn next_chunk(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        if self.offset >= self.end {
            return Ok(None);
        }
        let want = usize::try_from(self.end - self.offset).unwrap_or(usize::MAX).min(READ_CHUNK);
        let (file, offset) = (self.file.clone(), self.offset);
        let data = blocking(move || {
            let mut data = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                match file.read_at(&mut data[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("read blob", e)),
                }
            }
            data.truncate(filled);
            Ok(data)
        })
        .await?;
        if data.is_empty() {
            return Err(Error::Internal(format!("blob ended at {offset}, before the {} bytes it had", self.end)));
        }
        self.offset += data.len() as u64;
        Ok(Some((offset, data)))
    }
}
