//! Checkpoint and restore, as containerd's tasks service does them.
//!
//! Checkpoint: the task is paused (unless the caller paused it already), its shim has the
//! runtime dump it with CRIU into a directory in the bundle, and the CRIU image (as a tar)
//! and the container's spec (its `Any`, protobuf-encoded) go into content under containerd's
//! checkpoint media types; the descriptors are returned, and a client builds its checkpoint
//! index around them with the container's read-write layer and image (as ctr does, and
//! `berth tasks checkpoint`). The task is resumed afterwards — also when CRIU failed, whose
//! error then carries the end of CRIU's log — unless it was asked to exit.
//!
//! Restore: a Create whose `checkpoint` is the CRIU tar (containerd's clients send that) or
//! a checkpoint index (berth's: it also holds the read-write layer, applied to the rootfs
//! here) unpacks the CRIU image into the bundle; the shim restores from it at Start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_api::containerd::events::TaskCheckpointed;
use berth_api::containerd::runc::v1::CheckpointOptions;
use berth_api::containerd::services::diff::v1::ApplyRequest;
use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
use berth_api::containerd::services::tasks::v1 as api;
use berth_api::containerd::types::{Descriptor, Mount};
use berth_api::containerd::v1::types::Status as ProcessStatus;
use prost::Message;
use serde::Deserialize;
use tonic::Status;
use tonic::metadata::MetadataValue;

use super::Tasks;
use super::blobs::Blobs;
use crate::protocol::v2;

/// The CRIU image of a checkpoint, as a tar.
pub const CRIU_MEDIA_TYPE: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
/// The container's runtime spec at the checkpoint (a protobuf-encoded `Any`).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.containerd.container.checkpoint.config.v1+proto";
/// The container's read-write layer as an uncompressed tar.
pub const RW_MEDIA_TYPE: &str = "application/vnd.containerd.container.rw.tar";
/// The index a checkpoint image points at.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Layer media types start so (`+gzip`, `+zstd`).
const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// Largest checkpoint index read.
const MAX_INDEX: usize = 4 << 20;
/// The directory in the bundle a restored task's CRIU image is unpacked into.
const RESTORE_DIR: &str = "checkpoint";

/// The parts of an OCI index a restore reads.
#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
struct IndexEntry {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: i64,
}

/// The checkpoint options in a request: containerd.runc.v1.CheckpointOptions or none.
pub fn options(any: Option<&prost_types::Any>) -> Result<CheckpointOptions, Status> {
    match any {
        Some(any) if any.type_url.ends_with("containerd.runc.v1.CheckpointOptions") => {
            CheckpointOptions::decode(any.value.as_slice())
                .map_err(|e| Status::invalid_argument(format!("checkpoint options: {e}")))
        }
        Some(any) if !any.type_url.is_empty() => Err(Status::invalid_argument(format!(
            "checkpoint options of type {} are not understood (containerd.runc.v1.CheckpointOptions are)",
            any.type_url
        ))),
        _ => Ok(CheckpointOptions::default()),
    }
}

fn valid_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn request<T>(namespace: &str, lease: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = berth_peers::request(namespace, message);
    if let Some(value) = lease.and_then(|lease| MetadataValue::try_from(lease).ok()) {
        request.metadata_mut().insert(berth_peers::leases::METADATA_KEY, value);
    }
    request
}

impl Tasks {
    fn blobs(&self, namespace: &str, lease: Option<String>) -> Result<Blobs, Status> {
        let content = self.peers.channel("content").ok_or_else(|| {
            Status::failed_precondition("berth-execution runs without a content service (--peer content=ADDR)")
        })?;
        Ok(Blobs { content, namespace: namespace.to_string(), lease })
    }

    pub async fn checkpoint(
        self: &Arc<Self>,
        namespace: &str,
        lease: Option<String>,
        req: api::CheckpointTaskRequest,
    ) -> Result<api::CheckpointTaskResponse, Status> {
        let task = self.task(namespace, &req.container_id)?;
        if !req.parent_checkpoint.is_empty() {
            return Err(Status::invalid_argument(format!(
                "checkpoint of task {}: incremental checkpoints (parent {}) are not supported",
                task.id(),
                req.parent_checkpoint
            )));
        }
        let mut options = options(req.options.as_ref())?;
        let keep_in_place = !options.image_path.is_empty();
        // Everything the dump's results need, before the task is touched.
        let blobs = if keep_in_place { None } else { Some(self.blobs(namespace, lease)?) };
        let spec = if keep_in_place { None } else { Some(self.container(namespace, task.id()).await?.spec) };
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        let state = shim.state(task.id(), "").await?;
        let paused_here = match ProcessStatus::try_from(state.status) {
            Ok(ProcessStatus::Running) => {
                shim.pause(task.id()).await?;
                true
            }
            Ok(ProcessStatus::Paused) => false,
            _ => {
                return Err(Status::failed_precondition(format!(
                    "checkpoint of task {}: it is not running",
                    task.id()
                )));
            }
        };

        let dir = task.bundle.join(format!("checkpoint-{}", now_nanos()));
        let image = if keep_in_place { PathBuf::from(&options.image_path) } else { dir.join("image") };
        if options.work_path.is_empty() {
            options.work_path = dir.join("work").display().to_string();
        }
        let dump = v2::CheckpointTaskRequest {
            id: task.id().to_string(),
            path: image.display().to_string(),
            options: Some(berth_peers::events::any_of(&options)),
        };
        let work = PathBuf::from(&options.work_path);
        let dumped = shim.checkpoint(dump).await.map_err(|status| {
            let mut message = format!("checkpoint of task {}: {}", task.id(), status.message());
            // berth-shim adds CRIU's log itself; containerd's shims only name it.
            let log = work.join("dump.log");
            if !message.contains("CRIU's dump log")
                && let Some(tail) = crate::shim::runtime::criu_log_tail(&log)
            {
                message.push_str(&format!("\nCRIU's dump log ({}) ends:\n{tail}", log.display()));
            }
            Status::new(status.code(), message)
        });
        let result = match (dumped, &blobs, spec) {
            (Ok(()), Some(blobs), Some(spec)) => store(blobs, task.id(), &image, &dir, spec).await,
            // Left at the image path asked for, as containerd does.
            (Ok(()), _, _) => Ok(Vec::new()),
            (Err(status), _, _) => Err(status),
        };
        let descriptors = match result {
            Ok(descriptors) => descriptors,
            Err(status) => {
                // The dump may still be needed to understand what went wrong: keep its log.
                let _ = std::fs::remove_dir_all(dir.join("image"));
                let _ = std::fs::remove_file(dir.join("criu.tar"));
                if paused_here && let Err(resumed) = shim.resume(task.id()).await {
                    tracing::warn!(task = task.id(), "resuming after a failed checkpoint: {resumed}");
                }
                return Err(status);
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        if paused_here && !options.exit {
            shim.resume(task.id()).await.map_err(|status| {
                Status::new(
                    status.code(),
                    format!("task {} was checkpointed but stays paused: resume: {}", task.id(), status.message()),
                )
            })?;
        }
        let checkpoint = descriptors.first().map(|d| d.digest.clone()).unwrap_or_else(|| image.display().to_string());
        tracing::info!(namespace, task = task.id(), checkpoint, exit = options.exit, "task checkpointed");
        let event = TaskCheckpointed { container_id: task.id().to_string(), checkpoint };
        self.events.publish(namespace, "/tasks/checkpointed", &event);
        Ok(api::CheckpointTaskResponse { descriptors })
    }

    /// Makes the checkpoint `descriptor` (a CRIU tar, or a checkpoint index) ready for the
    /// shim: the CRIU image unpacked in `bundle`, the index's read-write layer applied to
    /// `rootfs`. Returns the CRIU image directory.
    pub(super) async fn prepare_restore(
        &self,
        namespace: &str,
        lease: Option<&str>,
        descriptor: &Descriptor,
        bundle: &Path,
        rootfs: &[Mount],
    ) -> Result<PathBuf, Status> {
        if !valid_digest(&descriptor.digest) {
            return Err(Status::invalid_argument(format!(
                "checkpoint digest {:?} is not a sha256 digest",
                descriptor.digest
            )));
        }
        let blobs = self.blobs(namespace, lease.map(str::to_string))?;
        let (criu, layers) = match descriptor.media_type.as_str() {
            CRIU_MEDIA_TYPE => (descriptor.clone(), Vec::new()),
            INDEX_MEDIA_TYPE => {
                let data = blobs.read_bytes("checkpoint", &descriptor.digest, MAX_INDEX).await?;
                let index: Index = serde_json::from_slice(&data).map_err(|e| {
                    Status::invalid_argument(format!("checkpoint {} is not an OCI index: {e}", descriptor.digest))
                })?;
                let descriptor_of = |entry: &IndexEntry| Descriptor {
                    media_type: entry.media_type.clone(),
                    digest: entry.digest.clone(),
                    size: entry.size,
                    annotations: Default::default(),
                };
                let criu = index.manifests.iter().find(|m| m.media_type == CRIU_MEDIA_TYPE).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "checkpoint {} holds no CRIU image ({CRIU_MEDIA_TYPE})",
                        descriptor.digest
                    ))
                })?;
                let layers: Vec<Descriptor> = index
                    .manifests
                    .iter()
                    .filter(|m| m.media_type.starts_with(LAYER_MEDIA_TYPE) || m.media_type == RW_MEDIA_TYPE)
                    .map(descriptor_of)
                    .collect();
                (descriptor_of(criu), layers)
            }
            "" => return Err(Status::invalid_argument("the checkpoint descriptor has no media type")),
            other => {
                return Err(Status::invalid_argument(format!(
                    "checkpoint {}: media type {other} is not a checkpoint ({CRIU_MEDIA_TYPE} or {INDEX_MEDIA_TYPE})",
                    descriptor.digest
                )));
            }
        };
        if !valid_digest(&criu.digest) {
            return Err(Status::invalid_argument(format!(
                "CRIU image digest {:?} is not a sha256 digest",
                criu.digest
            )));
        }
        let tar = bundle.join("checkpoint.tar");
        blobs.read_to_file("checkpoint CRIU image", &criu, &tar).await?;
        let dir = bundle.join(RESTORE_DIR);
        let unpacked = {
            let (tar, dir) = (tar.clone(), dir.clone());
            tokio::task::spawn_blocking(move || unpack_flat(&tar, &dir)).await
        };
        let _ = std::fs::remove_file(&tar);
        unpacked
            .map_err(|e| Status::internal(format!("unpack the CRIU image: {e}")))?
            .map_err(|e| Status::invalid_argument(format!("CRIU image {}: {e}", criu.digest)))?;

        if !layers.is_empty() {
            if rootfs.is_empty() {
                return Err(Status::failed_precondition(
                    "the checkpoint holds a read-write layer but the container has no rootfs snapshot",
                ));
            }
            let diff = self.peers.channel("snapshot").ok_or_else(|| {
                Status::failed_precondition("berth-execution runs without a snapshot service (--peer snapshot=ADDR)")
            })?;
            for mut layer in layers {
                if layer.media_type == RW_MEDIA_TYPE {
                    // The same bytes as an uncompressed layer, which the diff service applies.
                    layer.media_type = LAYER_MEDIA_TYPE.to_string();
                }
                let digest = layer.digest.clone();
                let apply = ApplyRequest { diff: Some(layer), mounts: rootfs.to_vec(), payloads: Default::default() };
                DiffClient::new(diff.clone()).apply(request(namespace, lease, apply)).await.map_err(|status| {
                    Status::new(
                        status.code(),
                        format!("apply the checkpoint's read-write layer {digest}: {}", status.message()),
                    )
                })?;
            }
        }
        Ok(dir)
    }
}

/// Puts the dump in `image` into content: the CRIU image as a tar (made in `scratch`), and the
/// container's spec. Returns their descriptors, as containerd's Checkpoint does.
async fn store(
    blobs: &Blobs,
    id: &str,
    image: &Path,
    scratch: &Path,
    spec: Option<prost_types::Any>,
) -> Result<Vec<Descriptor>, Status> {
    let tar = scratch.join("criu.tar");
    let made = {
        let (image, tar) = (image.to_path_buf(), tar.clone());
        tokio::task::spawn_blocking(move || tar_flat(&image, &tar)).await
    };
    made.map_err(|e| Status::internal(format!("tar the CRIU image: {e}")))?
        .map_err(|e| Status::internal(format!("tar the CRIU image {}: {e}", image.display())))?;
    let stamp = now_nanos();
    let criu = blobs.write_file(&format!("checkpoint-{id}-{stamp}-criu"), CRIU_MEDIA_TYPE, &tar).await?;
    let spec = spec.unwrap_or_default().encode_to_vec();
    let config = blobs.write_bytes(&format!("checkpoint-{id}-{stamp}-spec"), CONFIG_MEDIA_TYPE, spec).await?;
    Ok(vec![criu, config])
}

/// Tars the files and directories in `dir` (a CRIU image) into `out`, names relative to it.
fn tar_flat(dir: &Path, out: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(out)?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            builder.append_dir_all(entry.file_name(), &path)?;
        } else {
            builder.append_path_with_name(&path, entry.file_name())?;
        }
    }
    builder.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Unpacks a CRIU image tar into `dir` (made new): only regular files and directories, named
/// inside it; anything else (links, devices, `..`) is refused.
fn unpack_flat(tar: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(std::fs::File::open(tar)?));
    archive.set_preserve_permissions(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let inside =
            path.components().all(|c| matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir));
        let kind = entry.header().entry_type();
        if !inside || !(kind.is_file() || kind.is_dir()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("entry {} ({kind:?}) has no place in a CRIU image", path.display()),
            ));
        }
        if !entry.unpack_in(dir)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("entry {} points outside the image", path.display()),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_images_round_trip_through_a_tar() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::create_dir_all(image.join("sub")).unwrap();
        std::fs::write(image.join("core-1.img"), b"core").unwrap();
        std::fs::write(image.join("descriptors.json"), b"[]").unwrap();
        std::fs::write(image.join("sub/pages-1.img"), b"pages").unwrap();
        let tar = dir.path().join("criu.tar");
        tar_flat(&image, &tar).unwrap();
        let back = dir.path().join("back");
        unpack_flat(&tar, &back).unwrap();
        assert_eq!(std::fs::read(back.join("core-1.img")).unwrap(), b"core");
        assert_eq!(std::fs::read(back.join("descriptors.json")).unwrap(), b"[]");
        assert_eq!(std::fs::read(back.join("sub/pages-1.img")).unwrap(), b"pages");
    }

    #[test]
    fn links_and_escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("bad.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&tar).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        builder.append_link(&mut header, "core-1.img", "/etc/passwd").unwrap();
        builder.finish().unwrap();
        drop(builder);
        let err = unpack_flat(&tar, &dir.path().join("out")).unwrap_err();
        assert!(err.to_string().contains("no place in a CRIU image"), "{err}");
    }

    #[test]
    fn options_and_digests() {
        assert!(!options(None).unwrap().exit);
        let any = berth_peers::events::any_of(&CheckpointOptions { exit: true, ..Default::default() });
        assert!(options(Some(&any)).unwrap().exit);
        let other = prost_types::Any { type_url: "x.y.Z".into(), value: vec![] };
        assert_eq!(options(Some(&other)).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert!(valid_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!valid_digest("sha256:zz") && !valid_digest(""));
    }
}
