//! Imports of image archives: an OCI image layout in a tar (`oci-archive`), or a `docker
//! save` tar (`docker-archive`, converted to a Docker schema 2 manifest as containerd's
//! import does). Blobs go to the content service under a lease with the labels a pull would
//! give them, images named in the archive get records (written last), and the host's
//! manifest of each can be unpacked.

use std::collections::HashMap;
use std::sync::Arc;

use berth_api::berth::image::v1::{BlobState, ImportOptions};
use berth_api::containerd::services::images::v1::Image;
use berth_peers::LeaseResources;
use serde::Deserialize;
use tonic::Status;

use crate::archive::Archive;
use crate::arrivals::Arrivals;
use crate::content::{Content, WRITE_CHUNK};
use crate::manifest::{self, Descriptor, Parsed, Wanted};
use crate::progress::Progress;
use crate::pull::{PullLease, Puller, to_api};
use crate::reference::Reference;
use crate::registry::MAX_MANIFEST_SIZE;
use crate::unpack::Unpacker;

/// containerd's annotation with an image's full name (the OCI one holds only the tag).
pub const IMAGE_NAME: &str = "io.containerd.image.name";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Largest image config read from a docker archive.
const MAX_CONFIG_SIZE: u64 = 16 << 20;
const MAX_DEPTH: usize = manifest::MAX_INDEX_DEPTH;

/// What to import, checked.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    pub base_name: Option<String>,
    pub index_name: Option<String>,
    pub unpack: bool,
    pub snapshotter: String,
    pub labels: HashMap<String, String>,
    /// Platforms whose manifests are imported from an index; empty: all.
    pub platforms: Vec<Wanted>,
}

impl ImportSpec {
    pub fn from_api(options: ImportOptions) -> Result<ImportSpec, Status> {
        berth_core::labels::validate(&options.labels)
            .map_err(|s| Status::invalid_argument(format!("image labels: {}", s.message())))?;
        let base_name = Some(options.base_name).filter(|b| !b.is_empty());
        if let Some(base) = &base_name
            && (base.contains('@') || Reference::parse(&format!("{base}:x")).is_err())
        {
            return Err(Status::invalid_argument(format!(
                "base name {base:?} is not an image name without tag (like example.com/app)"
            )));
        }
        let platforms = options
            .platforms
            .iter()
            .map(|p| Wanted::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        Ok(ImportSpec {
            platforms,
            base_name,
            index_name: Some(options.index_name).filter(|n| !n.is_empty()),
            unpack: options.unpack,
            snapshotter: if options.snapshotter.is_empty() { "overlayfs".into() } else { options.snapshotter },
            labels: options.labels,
        })
    }

    /// The record name for an image the archive calls `name` (a full name or a bare tag);
    /// None when `--base-name` filters it out.
    fn name_for(&self, name: &str) -> Result<Option<String>, Status> {
        let bare_tag = !name.contains('/') && !name.contains(':') && !name.contains('@');
        match (&self.base_name, bare_tag) {
            (Some(base), true) => Ok(Some(format!("{base}:{name}"))),
            (Some(base), false) => {
                let rest = name.strip_prefix(base.as_str());
                Ok(rest.filter(|r| r.starts_with(':') || r.starts_with('@')).map(|_| name.to_string()))
            }
            (None, true) => Err(Status::invalid_argument(format!(
                "the archive names an image only by its tag {name:?}: give a name to prefix it with (--base-name)"
            ))),
            (None, false) => Ok(Some(name.to_string())),
        }
    }
}

/// An entry of a docker archive's manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// One import's state.
struct Job<'a> {
    archive: Arc<Archive>,
    content: Content,
    lease_resources: LeaseResources,
    lease: Option<String>,
    namespace: String,
    progress: &'a Progress,
    /// Manifests stored, by digest, for unpacking.
    manifests: HashMap<String, Parsed>,
    /// Only these platforms' manifests of an index (empty: all).
    platforms: Vec<Wanted>,
}

impl Puller {
    /// Imports the archive into `namespace`; returns the records written.
    pub async fn import(
        &self,
        namespace: &str,
        spec: ImportSpec,
        archive: Arc<Archive>,
        progress: Progress,
    ) -> Result<Vec<Image>, Status> {
        let content = self.content.clone().ok_or_else(|| {
            Status::failed_precondition("berth-image runs without a content service (--peer content=...)")
        })?;
        let lease = PullLease::create(self.metadata.clone(), namespace).await?;
        let mut job = Job {
            archive: archive.clone(),
            content: Content::new(content, namespace, lease.id.clone()),
            lease_resources: LeaseResources::new(self.metadata.clone()),
            lease: lease.id.clone(),
            namespace: namespace.to_string(),
            progress: &progress,
            manifests: HashMap::new(),
            platforms: spec.platforms.clone(),
        };
        let named = if archive.has("index.json") {
            job.oci(&spec).await?
        } else if archive.has("manifest.json") {
            job.docker(&spec).await?
        } else {
            return Err(Status::invalid_argument(
                "the archive is neither an OCI image layout (no index.json) nor a docker archive (no manifest.json)",
            ));
        };
        if named.is_empty() {
            return Err(Status::invalid_argument(match &spec.base_name {
                Some(base) => format!("the archive holds no image named {base}:... (check --base-name)"),
                None => "the archive names no image (give one with --base-name, or keep the index with --index-name)"
                    .to_string(),
            }));
        }
        if spec.unpack {
            let snapshot = self.snapshot.clone().ok_or_else(|| {
                Status::failed_precondition(
                    "berth-image runs without a snapshot service (--peer snapshot=...) to unpack into",
                )
            })?;
            let mut unpacked: Vec<&str> = Vec::new();
            for (_, root) in &named {
                if unpacked.contains(&root.digest.as_str()) {
                    continue;
                }
                unpacked.push(&root.digest);
                let Some((config, layers)) = job.for_host(root) else { continue };
                let resources = LeaseResources::new(self.metadata.clone());
                let unpacker =
                    Unpacker::new(snapshot.clone(), resources, namespace, lease.id.clone(), &spec.snapshotter);
                unpacker.unpack(&job.content, &config, &layers, &Arrivals::default(), &progress).await?;
            }
        }
        let mut images = Vec::new();
        for (name, root) in named {
            let image = Image {
                name,
                labels: spec.labels.clone(),
                target: Some(to_api(&root)),
                created_at: None,
                updated_at: None,
            };
            let image = self.images.put(namespace, image).await?;
            progress.image(&image);
            images.push(image);
        }
        lease.release().await;
        tracing::info!(namespace, images = images.len(), "imported");
        Ok(images)
    }
}

/// A descriptor without what only the index entry needs.
fn plain(descriptor: &Descriptor) -> Descriptor {
    Descriptor { urls: Vec::new(), annotations: HashMap::new(), platform: None, ..descriptor.clone() }
}

fn blob_path(digest: &str) -> Result<String, Status> {
    crate::digest::validate(digest).map_err(|p| Status::invalid_argument(format!("digest {digest:?}: {p}")))?;
    Ok(format!("blobs/{}", digest.replacen(':', "/", 1)))
}

impl Job<'_> {
    /// Runs blocking archive reads off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Archive) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let archive = self.archive.clone();
        tokio::task::spawn_blocking(move || work(&archive))
            .await
            .map_err(|e| Status::internal(format!("archive reader failed: {e}")))?
    }

    /// Copies the archive's file `path` into the content store as `descriptor`, labelled.
    async fn store(&self, descriptor: &Descriptor, path: &str, labels: HashMap<String, String>) -> Result<(), Status> {
        let size = self.archive.size(path).ok_or_else(|| {
            Status::invalid_argument(format!("the archive lacks blob {} ({path})", descriptor.digest))
        })?;
        if size != u64::try_from(descriptor.size).unwrap_or(u64::MAX) {
            return Err(Status::invalid_argument(format!(
                "blob {} is {size} bytes in the archive, its descriptor says {}",
                descriptor.digest, descriptor.size
            )));
        }
        if let Some(existing) = self.content.info(&descriptor.digest).await? {
            let mut labels = labels;
            labels.retain(|k, v| existing.get(k) != Some(v));
            self.content.set_labels(&descriptor.digest, labels).await?;
            if let Some(lease) = &self.lease {
                self.lease_resources.add(&self.namespace, lease, "content", &descriptor.digest).await?;
            }
            self.progress.blob(descriptor, BlobState::Skipped, descriptor.size, 0);
            return Ok(());
        }
        let reference = format!("import-{}", descriptor.digest);
        let mut ingest = match self.content.ingest(&reference, descriptor.size, &descriptor.digest).await {
            Ok(ingest) => ingest,
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                self.progress.blob(descriptor, BlobState::Skipped, descriptor.size, 0);
                return Ok(());
            }
            Err(status) => return Err(status),
        };
        let mut bytes = crate::progress::Bytes::start(self.progress, descriptor, 0);
        let mut offset = 0u64;
        while offset < size {
            let len = (size - offset).min(WRITE_CHUNK as u64) as usize;
            let name = path.to_string();
            let data = self.blocking(move |archive| archive.read_at(&name, offset, len)).await?;
            ingest.write_from(offset as i64, data).await?;
            offset += len as u64;
            bytes.at(offset);
        }
        self.progress.blob(descriptor, BlobState::Verifying, descriptor.size, 0);
        match ingest.commit(labels).await {
            Ok(()) => {}
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(Status::invalid_argument(format!(
                    "blob {} in the archive does not match its digest: {}",
                    descriptor.digest,
                    status.message()
                )));
            }
            Err(status) => return Err(status),
        }
        self.progress.blob(descriptor, BlobState::Done, descriptor.size, 0);
        Ok(())
    }

    /// Stores a manifest or index from bytes already read, with gc.ref labels.
    async fn store_document(&mut self, descriptor: &Descriptor, path: &str, bytes: &[u8]) -> Result<Parsed, Status> {
        if crate::digest::sha256(bytes) != descriptor.digest {
            return Err(Status::invalid_argument(format!("{path} in the archive does not match its digest")));
        }
        let (_, parsed) = manifest::parse(&descriptor.media_type, bytes)
            .map_err(|p| Status::invalid_argument(format!("{} in the archive: {p}", descriptor.digest)))?;
        self.store(descriptor, path, parsed.gc_labels()).await?;
        Ok(parsed)
    }

    /// An OCI layout: every image of index.json, named from its annotations.
    async fn oci(&mut self, spec: &ImportSpec) -> Result<Vec<(String, Descriptor)>, Status> {
        let index = self.blocking(|a| a.read("index.json", MAX_MANIFEST_SIZE as u64)).await?;
        let (_, parsed) = manifest::parse(manifest::OCI_INDEX, &index)
            .map_err(|p| Status::invalid_argument(format!("index.json in the archive: {p}")))?;
        let Parsed::Index { manifests: entries } = parsed else {
            return Err(Status::invalid_argument("index.json in the archive is not an index"));
        };
        let mut named = Vec::new();
        for entry in &entries {
            if !manifest::is_manifest(&entry.media_type) && !manifest::is_index(&entry.media_type) {
                continue;
            }
            if !self.wanted(entry) {
                continue;
            }
            let root = plain(entry);
            if Box::pin(self.walk(&root, 0)).await? == 0 && !self.platforms.is_empty() {
                let wanted: Vec<String> = self.platforms.iter().map(ToString::to_string).collect();
                return Err(Status::not_found(format!(
                    "image {} in the archive has no manifest for {}",
                    entry
                        .annotations
                        .get(IMAGE_NAME)
                        .or_else(|| entry.annotations.get(REF_NAME))
                        .unwrap_or(&root.digest),
                    wanted.join(", ")
                )));
            }
            let name = entry.annotations.get(IMAGE_NAME).or_else(|| entry.annotations.get(REF_NAME));
            if let Some(name) = name
                && let Some(name) = spec.name_for(name)?
            {
                named.push((name, root));
            }
        }
        if let Some(index_name) = &spec.index_name {
            let descriptor = Descriptor {
                media_type: manifest::OCI_INDEX.to_string(),
                digest: crate::digest::sha256(&index),
                size: index.len() as i64,
                urls: Vec::new(),
                annotations: HashMap::new(),
                platform: None,
            };
            let (_, parsed) = manifest::parse(manifest::OCI_INDEX, &index)
                .map_err(|p| Status::invalid_argument(format!("index.json in the archive: {p}")))?;
            self.content
                .write_all(&format!("import-{}", descriptor.digest), &descriptor.digest, &index, parsed.gc_labels())
                .await?;
            self.progress.blob(&descriptor, BlobState::Done, descriptor.size, 0);
            named.push((index_name.clone(), descriptor));
        }
        Ok(named)
    }

    /// Whether an index entry is for a platform asked for (entries without one pass, as in
    /// containerd's platform filter).
    fn wanted(&self, entry: &Descriptor) -> bool {
        self.platforms.is_empty() || entry.platform.as_ref().is_none_or(|p| self.platforms.iter().any(|w| w.matches(p)))
    }

    /// Stores `descriptor` and everything below it that the archive holds (of the platforms
    /// asked for); returns how many image manifests that made.
    async fn walk(&mut self, descriptor: &Descriptor, depth: usize) -> Result<usize, Status> {
        let path = blob_path(&descriptor.digest)?;
        if depth > MAX_DEPTH {
            return Err(Status::invalid_argument(format!(
                "indexes nested more than {MAX_DEPTH} deep at {}",
                descriptor.digest
            )));
        }
        let read_path = path.clone();
        let bytes = self.blocking(move |a| a.read(&read_path, MAX_MANIFEST_SIZE as u64)).await?;
        let parsed = self.store_document(descriptor, &path, &bytes).await?;
        let mut stored = 0;
        match &parsed {
            Parsed::Index { manifests } => {
                for child in manifests {
                    // An archive of some platforms of an index lacks the others' manifests.
                    if !self.archive.has(&blob_path(&child.digest)?) || !self.wanted(child) {
                        continue;
                    }
                    let child_descriptor = plain(child);
                    stored += Box::pin(self.walk(&child_descriptor, depth + 1)).await?;
                }
            }
            Parsed::Manifest { config, layers } => {
                for blob in std::iter::once(config).chain(layers) {
                    self.store(blob, &blob_path(&blob.digest)?, HashMap::new()).await?;
                }
                stored = 1;
            }
        }
        self.manifests.insert(descriptor.digest.clone(), parsed);
        Ok(stored)
    }

    /// A docker archive: each manifest.json entry becomes a config, layers and a Docker
    /// schema 2 manifest written here.
    async fn docker(&mut self, spec: &ImportSpec) -> Result<Vec<(String, Descriptor)>, Status> {
        let text = self.blocking(|a| a.read("manifest.json", MAX_MANIFEST_SIZE as u64)).await?;
        let entries: Vec<DockerEntry> = serde_json::from_slice(&text)
            .map_err(|e| Status::invalid_argument(format!("manifest.json in the archive: {e}")))?;
        let mut named = Vec::new();
        for entry in entries {
            let config_path = normalize_name(&entry.config);
            let config_bytes = {
                let path = config_path.clone();
                self.blocking(move |a| a.read(&path, MAX_CONFIG_SIZE)).await?
            };
            let config = Descriptor {
                media_type: manifest::DOCKER_CONFIG.to_string(),
                digest: crate::digest::sha256(&config_bytes),
                size: config_bytes.len() as i64,
                urls: Vec::new(),
                annotations: HashMap::new(),
                platform: None,
            };
            self.store(&config, &config_path, HashMap::new()).await?;
            let mut layers = Vec::new();
            for layer in &entry.layers {
                let path = normalize_name(layer);
                let (digest, size, gzip) = {
                    let path = path.clone();
                    self.blocking(move |a| {
                        let (digest, size) = a.digest(&path)?;
                        let gzip = size >= 2 && a.read_at(&path, 0, 2)? == [0x1f, 0x8b];
                        Ok((digest, size, gzip))
                    })
                    .await?
                };
                let layer = Descriptor {
                    media_type: if gzip { DOCKER_LAYER_GZIP } else { DOCKER_LAYER }.to_string(),
                    digest,
                    size: size as i64,
                    urls: Vec::new(),
                    annotations: HashMap::new(),
                    platform: None,
                };
                self.store(&layer, &path, HashMap::new()).await?;
                layers.push(layer);
            }
            let json_descriptor =
                |d: &Descriptor| serde_json::json!({"mediaType": d.media_type, "size": d.size, "digest": d.digest});
            let document = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::DOCKER_MANIFEST,
                "config": json_descriptor(&config),
                "layers": layers.iter().map(json_descriptor).collect::<Vec<_>>(),
            });
            let bytes = serde_json::to_vec_pretty(&document).map_err(|e| Status::internal(e.to_string()))?;
            let descriptor = Descriptor {
                media_type: manifest::DOCKER_MANIFEST.to_string(),
                digest: crate::digest::sha256(&bytes),
                size: bytes.len() as i64,
                urls: Vec::new(),
                annotations: HashMap::new(),
                platform: None,
            };
            let parsed = Parsed::Manifest { config: config.clone(), layers: layers.clone() };
            self.content
                .write_all(&format!("import-{}", descriptor.digest), &descriptor.digest, &bytes, parsed.gc_labels())
                .await?;
            if let Some(lease) = &self.lease {
                self.lease_resources.add(&self.namespace, lease, "content", &descriptor.digest).await?;
            }
            self.progress.blob(&descriptor, BlobState::Done, descriptor.size, 0);
            self.manifests.insert(descriptor.digest.clone(), parsed);
            for tag in entry.repo_tags.unwrap_or_default() {
                // `docker save` writes short names (busybox:1); containerd stores them normalized.
                let full = Reference::parse(&tag).map(|r| r.to_string()).unwrap_or(tag);
                if let Some(name) = spec.name_for(&full)? {
                    named.push((name, descriptor.clone()));
                }
            }
        }
        Ok(named)
    }

    /// The config and layers of `root`'s manifest for this host.
    fn for_host(&self, root: &Descriptor) -> Option<(Descriptor, Vec<Descriptor>)> {
        let host = Wanted::host();
        let mut current = self.manifests.get(&root.digest)?;
        for _ in 0..=MAX_DEPTH {
            match current {
                Parsed::Manifest { config, layers } => return Some((config.clone(), layers.clone())),
                Parsed::Index { manifests } => {
                    let child = manifests
                        .iter()
                        .filter(|m| self.manifests.contains_key(&m.digest))
                        .find(|m| m.platform.as_ref().is_some_and(|p| host.matches(p)))?;
                    current = self.manifests.get(&child.digest)?;
                }
            }
        }
        None
    }
}

/// A file name from a docker archive's manifest.json, as the archive scan names files.
fn normalize_name(name: &str) -> String {
    name.split('/').filter(|p| !p.is_empty() && *p != ".").collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(base: &str) -> ImportSpec {
        ImportSpec::from_api(ImportOptions { base_name: base.into(), ..Default::default() }).unwrap()
    }

    #[test]
    fn names_like_ctr_import() {
        assert_eq!(spec("").name_for("example.com/app:1").unwrap().as_deref(), Some("example.com/app:1"));
        assert_eq!(spec("").name_for("1").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(spec("example.com/app").name_for("1").unwrap().as_deref(), Some("example.com/app:1"));
        assert_eq!(
            spec("example.com/app").name_for("example.com/app:2").unwrap().as_deref(),
            Some("example.com/app:2")
        );
        assert_eq!(spec("example.com/app").name_for("example.com/other:2").unwrap(), None);
        assert_eq!(spec("example.com/app").name_for("example.com/application:2").unwrap(), None);
        let bad = ImportOptions { base_name: "Bad Name".into(), ..Default::default() };
        assert_eq!(ImportSpec::from_api(bad).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
