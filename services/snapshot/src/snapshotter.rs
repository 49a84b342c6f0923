//! One snapshotter (`overlayfs` or `native`): containerd's snapshot rules over records in the
//! metadata store and directories under `<root>/<snapshotter>/snapshots/<id>`.
//!
//! Crash safety: a snapshot's directory is built under `new-<id>` and renamed to `<id>`
//! before its record is written; a removed snapshot loses its record first and its directory
//! after (renamed to `rm-<id>`, then deleted). So a record always has its directory, and what
//! a crash leaves behind is a directory without a record, which [`Snapshotter::cleanup`]
//! removes (and which opening the snapshotter cleans up too).
//!
//! Concurrency: every change is a compare-and-swap on the records, retried on conflict, so
//! that racing calls (or a second process on etcd) cannot break the rules: a key is created
//! once, a parent with children is never removed.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use berth_core::filters::AnyOf;
use berth_store::Store;
use tokio::sync::RwLock;

use crate::disk::disk_usage;
use crate::driver::{Driver, Layers};
use crate::error::{Error, Result};
use crate::filters::InfoFields;
use crate::info::{Info, Kind, Usage};
use crate::mount::Mount;
use crate::records::{Record, Records, Stored};
use crate::time::{from_nanos, now_nanos};

/// How often a read-modify-write is retried when someone else changed a record first.
pub const ATTEMPTS: usize = 16;

/// Prefix of a directory being built (not yet a snapshot).
const NEW: &str = "new-";
/// Prefix of a directory being deleted (no longer a snapshot).
const REMOVING: &str = "rm-";

pub struct Snapshotter {
    driver: Arc<dyn Driver>,
    /// `<root>/<name>/snapshots`: one directory per snapshot id.
    dir: PathBuf,
    records: Records,
    /// Held shared while a directory may exist before its record (Prepare, View) and
    /// exclusively by Cleanup, which would otherwise take such a directory for garbage.
    creating: RwLock<()>,
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(work).await.map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    Ok(())
}

fn check_labels(labels: &HashMap<String, String>) -> Result<()> {
    berth_core::labels::validate(labels).map_err(Error::from_status)
}

/// Labels as stored: containerd does not keep labels with empty values.
fn without_empty(mut labels: HashMap<String, String>) -> HashMap<String, String> {
    labels.retain(|_, value| !value.is_empty());
    labels
}

fn not_found(key: &str) -> Error {
    Error::NotFound(format!("snapshot {key:?} does not exist"))
}

fn already_exists(key: &str) -> Error {
    Error::AlreadyExists(format!("snapshot {key:?} already exists"))
}

fn info(name: String, record: Record) -> Info {
    Info {
        name,
        parent: record.parent,
        kind: record.kind,
        created_at: from_nanos(record.created_at),
        updated_at: from_nanos(record.updated_at),
        labels: record.labels,
    }
}

/// Removes a directory, renaming it out of the way first so that a crash midway leaves
/// something clearly dead. A directory that is already gone is fine.
fn delete_dir(snapshots: &Path, name: &str) -> std::io::Result<()> {
    let path = snapshots.join(name);
    let doomed = if name.starts_with(REMOVING) || name.starts_with(NEW) {
        path
    } else {
        let doomed = snapshots.join(format!("{REMOVING}{name}"));
        match std::fs::rename(&path, &doomed) {
            Ok(()) => doomed,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    };
    match std::fs::remove_dir_all(&doomed) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Snapshotter {
    /// Opens the snapshotter of `driver` under `root`, with its records in `store`, and
    /// removes what an interrupted run left behind.
    pub async fn open(root: &Path, driver: Arc<dyn Driver>, store: Arc<dyn Store>) -> Result<Snapshotter> {
        let dir = root.join(driver.name()).join("snapshots");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let records = Records::new(store, driver.name());
        let snapshotter = Snapshotter { driver, dir, records, creating: RwLock::new(()) };
        let removed = snapshotter.cleanup().await?;
        if removed > 0 {
            tracing::info!(snapshotter = snapshotter.name(), removed, "removed directories left by an interrupted run");
        }
        Ok(snapshotter)
    }

    pub fn name(&self) -> &'static str {
        self.driver.name()
    }

    /// Where snapshot `id` lives.
    pub fn dir_of(&self, id: u64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    async fn get(&self, namespace: &str, key: &str) -> Result<Stored> {
        self.records.get(namespace, key).await?.ok_or_else(|| not_found(key))
    }

    /// A new writable snapshot on `parent` (a committed snapshot, or none).
    pub async fn prepare(
        &self,
        namespace: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(namespace, Kind::Active, key, parent, labels).await
    }

    /// A new read-only snapshot of `parent` (a committed snapshot, or none).
    pub async fn view(
        &self,
        namespace: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(namespace, Kind::View, key, parent, labels).await
    }

    async fn committed_parent(&self, namespace: &str, parent: &str) -> Result<Option<Stored>> {
        if parent.is_empty() {
            return Ok(None);
        }
        let Some(stored) = self.records.get(namespace, parent).await? else {
            return Err(Error::NotFound(format!("parent snapshot {parent:?} does not exist")));
        };
        if stored.record.kind != Kind::Committed {
            return Err(Error::InvalidArgument(format!(
                "parent {parent:?} is not a committed snapshot (it is {}); commit it first",
                stored.record.kind
            )));
        }
        Ok(Some(stored))
    }

    async fn create(
        &self,
        namespace: &str,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        check_key("snapshot key", key)?;
        check_labels(&labels)?;
        let _creating = self.creating.read().await;
        if self.records.get(namespace, key).await?.is_some() {
            return Err(already_exists(key));
        }
        let parent_stored = self.committed_parent(namespace, parent).await?;
        let id = self.records.allocate_id().await?;
        let parent_ids: Vec<u64> = match &parent_stored {
            Some(stored) => std::iter::once(stored.record.id).chain(stored.record.parent_ids.iter().copied()).collect(),
            None => Vec::new(),
        };
        if let Err(e) = self.build_dir(id, kind, parent_ids.first().copied()).await {
            // A parent removed meanwhile takes its directory with it: report that, not the
            // I/O error it caused.
            self.committed_parent(namespace, parent).await?;
            return Err(e);
        }
        let now = now_nanos();
        let record = Record {
            id,
            kind,
            parent: parent.to_string(),
            parent_ids,
            created_at: now,
            updated_at: now,
            labels: without_empty(labels),
            usage: Usage::default(),
        };
        match self.insert(namespace, key, parent, &record, parent_stored).await {
            Ok(()) => Ok(self.mounts_of(&record)),
            Err(e) => {
                self.discard(id).await;
                Err(e)
            }
        }
    }

    /// Writes the record of a new snapshot whose directory is in place, retrying while only
    /// the parent's record changed (its labels, say).
    async fn insert(
        &self,
        namespace: &str,
        key: &str,
        parent: &str,
        record: &Record,
        mut parent_stored: Option<Stored>,
    ) -> Result<()> {
        for _ in 0..ATTEMPTS {
            let with_parent = parent_stored.as_ref().map(|stored| (parent, stored));
            if self.records.create(namespace, key, record, with_parent).await? {
                return Ok(());
            }
            // Someone was faster: with the same key, or with a change to the parent.
            if self.records.get(namespace, key).await?.is_some() {
                return Err(already_exists(key));
            }
            match self.committed_parent(namespace, parent).await? {
                Some(stored) if Some(&stored.record.id) != record.parent_ids.first() => {
                    return Err(Error::Unavailable(format!(
                        "parent snapshot {parent:?} was replaced while {key:?} was prepared; try again"
                    )));
                }
                stored => parent_stored = stored,
            }
        }
        Err(Error::Unavailable(format!("snapshot {key:?}: records changed concurrently too often, try again")))
    }

    /// Builds snapshot `id`'s directory under a temporary name, then renames it into place.
    async fn build_dir(&self, id: u64, kind: Kind, parent: Option<u64>) -> Result<()> {
        let snapshots = self.dir.clone();
        let temp = snapshots.join(format!("{NEW}{id}"));
        let target = self.dir_of(id);
        let parent = parent.map(|id| self.dir_of(id));
        let driver = Arc::clone(&self.driver);
        blocking(move || {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&temp)
                .map_err(|e| Error::io(format!("create {}", temp.display()), e))?;
            let built = driver.populate(&temp, kind, parent.as_deref()).and_then(|()| {
                std::fs::rename(&temp, &target)
                    .map_err(|e| Error::io(format!("rename {} to {}", temp.display(), target.display()), e))
            });
            if let Err(e) = built {
                if let Err(remove) = std::fs::remove_dir_all(&temp) {
                    tracing::warn!(error = %remove, dir = %temp.display(), "could not remove a half-built snapshot");
                }
                return Err(e);
            }
            // Make the rename durable before a record can point at it.
            if let Err(e) = std::fs::File::open(&snapshots).and_then(|dir| dir.sync_all()) {
                tracing::warn!(error = %e, dir = %snapshots.display(), "could not sync the snapshots directory");
            }
            Ok(())
        })
        .await
    }

    /// Removes snapshot `id`'s directory; a failure is logged and left to Cleanup.
    async fn discard(&self, id: u64) {
        let snapshots = self.dir.clone();
        let result = tokio::task::spawn_blocking(move || delete_dir(&snapshots, &id.to_string())).await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, id, "could not remove a snapshot directory; Cleanup will"),
            Err(e) => tracing::warn!(error = %e, id, "removing a snapshot directory failed"),
        }
    }

    fn mounts_of(&self, record: &Record) -> Vec<Mount> {
        let dir = self.dir_of(record.id);
        let parents: Vec<PathBuf> = record.parent_ids.iter().map(|id| self.dir_of(*id)).collect();
        self.driver.mounts(&Layers { kind: record.kind, dir: &dir, parents: &parents })
    }

    /// The mounts of an active snapshot or a view.
    pub async fn mounts(&self, namespace: &str, key: &str) -> Result<Vec<Mount>> {
        check_key("snapshot key", key)?;
        let stored = self.get(namespace, key).await?;
        if stored.record.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed: only active snapshots and views have mounts"
            )));
        }
        Ok(self.mounts_of(&stored.record))
    }

    /// Turns the active snapshot `key` into the committed snapshot `name`, with `labels` as
    /// its labels (replacing the active snapshot's, as containerd does).
    pub async fn commit(&self, namespace: &str, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        check_key("committed snapshot name", name)?;
        check_key("snapshot key", key)?;
        check_labels(&labels)?;
        let labels = without_empty(labels);
        for _ in 0..ATTEMPTS {
            if self.records.get(namespace, name).await?.is_some() {
                return Err(Error::AlreadyExists(format!("committed snapshot {name:?} already exists")));
            }
            let active = self
                .records
                .get(namespace, key)
                .await?
                .ok_or_else(|| Error::NotFound(format!("active snapshot {key:?} does not exist")))?;
            if active.record.kind != Kind::Active {
                return Err(Error::FailedPrecondition(format!(
                    "snapshot {key:?} is not active (it is {}); only active snapshots can be committed",
                    active.record.kind
                )));
            }
            let files = self.driver.files(&self.dir_of(active.record.id));
            let usage =
                blocking(move || disk_usage(&files).map_err(|e| Error::io(format!("measure {}", files.display()), e)))
                    .await?;
            let now = now_nanos();
            let record = Record {
                kind: Kind::Committed,
                created_at: now,
                updated_at: now,
                labels: labels.clone(),
                usage,
                ..active.record.clone()
            };
            if self.records.commit(namespace, key, &active, name, &record).await? {
                return Ok(());
            }
        }
        Err(Error::Unavailable(format!("snapshot {key:?}: records changed concurrently too often, try again")))
    }

    /// Removes a snapshot that no other snapshot has as its parent; returns its kind.
    pub async fn remove(&self, namespace: &str, key: &str) -> Result<Kind> {
        check_key("snapshot key", key)?;
        for _ in 0..ATTEMPTS {
            let stored = self.get(namespace, key).await?;
            if self.records.has_children(namespace, key).await? {
                return Err(Error::FailedPrecondition(format!(
                    "cannot remove snapshot {key:?}: other snapshots have it as their parent; remove them first"
                )));
            }
            if self.records.remove(namespace, key, &stored).await? {
                self.discard(stored.record.id).await;
                return Ok(stored.record.kind);
            }
        }
        Err(Error::Unavailable(format!("snapshot {key:?}: records changed concurrently too often, try again")))
    }

    pub async fn stat(&self, namespace: &str, key: &str) -> Result<Info> {
        check_key("snapshot key", key)?;
        let stored = self.get(namespace, key).await?;
        Ok(info(key.to_string(), stored.record))
    }

    /// Changes labels as containerd does: no paths or `labels` replaces them all,
    /// `labels.<key>` sets (or, given no value, removes) one. Nothing else can change.
    pub async fn update(
        &self,
        namespace: &str,
        name: &str,
        labels: HashMap<String, String>,
        paths: &[String],
    ) -> Result<Info> {
        check_key("snapshot name", name)?;
        for path in paths {
            if path != "labels" && !path.starts_with("labels.") {
                return Err(Error::InvalidArgument(format!(
                    "cannot update {path:?} field on snapshot {name:?}: only labels and labels.<key> can change"
                )));
            }
        }
        for _ in 0..ATTEMPTS {
            let stored = self.get(namespace, name).await?;
            let mut updated = stored.record.labels.clone();
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
            let updated = without_empty(updated);
            check_labels(&updated)?;
            let record = Record { labels: updated, updated_at: now_nanos(), ..stored.record.clone() };
            if self.records.replace(namespace, name, &stored, &record).await? {
                return Ok(info(name.to_string(), record));
            }
        }
        Err(Error::Unavailable(format!("snapshot {name:?}: changed concurrently too often, try again")))
    }

    /// The namespace's snapshots matching `filters`, by key.
    pub async fn list(&self, namespace: &str, filters: &AnyOf) -> Result<Vec<Info>> {
        let records = self.records.list(namespace).await?;
        Ok(records
            .into_iter()
            .map(|(key, record)| info(key, record))
            .filter(|info| filters.matches(&InfoFields(info)))
            .collect())
    }

    /// Disk used by the snapshot itself: measured now for an active snapshot, as measured
    /// at commit for a committed one, nothing for a view (as containerd).
    pub async fn usage(&self, namespace: &str, key: &str) -> Result<Usage> {
        check_key("snapshot key", key)?;
        let stored = self.get(namespace, key).await?;
        if stored.record.kind != Kind::Active {
            return Ok(stored.record.usage);
        }
        let files = self.driver.files(&self.dir_of(stored.record.id));
        blocking(move || match disk_usage(&files) {
            Ok(usage) => Ok(usage),
            // Removed meanwhile.
            Err(e) if e.kind() == ErrorKind::NotFound => Err(not_found_dir(&files)),
            Err(e) => Err(Error::io(format!("measure {}", files.display()), e)),
        })
        .await
    }

    /// Removes every directory that is no snapshot: leftovers of interrupted builds and
    /// removals, and directories whose record is gone. A directory with an id this
    /// metadata store never handed out is left alone (it belongs to other records, e.g.
    /// after switching `--metadata`). Returns how many were removed.
    pub async fn cleanup(&self) -> Result<usize> {
        let _exclusive = self.creating.write().await;
        let live: HashSet<u64> = self.records.all().await?.into_iter().map(|l| l.record.id).collect();
        let next_id = self.records.next_id().await?;
        let snapshots = self.dir.clone();
        let name = self.name();
        blocking(move || {
            let mut removed = 0;
            let entries =
                std::fs::read_dir(&snapshots).map_err(|e| Error::io(format!("read {}", snapshots.display()), e))?;
            for entry in entries {
                let entry = entry.map_err(|e| Error::io(format!("read {}", snapshots.display()), e))?;
                let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
                let garbage = if file_name.starts_with(NEW) || file_name.starts_with(REMOVING) {
                    true
                } else if let Ok(id) = file_name.parse::<u64>() {
                    if id >= next_id {
                        tracing::warn!(
                            snapshotter = name,
                            id,
                            "directory with an id these records never handed out; leaving it"
                        );
                    }
                    id < next_id && !live.contains(&id)
                } else {
                    false
                };
                if !garbage {
                    continue;
                }
                match delete_dir(&snapshots, &file_name) {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(error = %e, dir = %entry.path().display(), "could not remove"),
                }
            }
            Ok(removed)
        })
        .await
    }
}

fn not_found_dir(path: &Path) -> Error {
    Error::NotFound(format!("snapshot directory {} is gone", path.display()))
}
