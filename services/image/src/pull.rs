//! Pulls run by the image service: resolve a reference at its registry, fetch what the
//! content store lacks (concurrently, resuming cut downloads from the ingest offset), label
//! blobs the way containerd does, and write the image record last.
//!
//! Everything is written under a lease so the garbage collector leaves a pull's blobs alone
//! until the image record holds them. The lease expires on its own ([`LEASE_TTL`]) when the
//! service dies mid-pull; a pull that fails keeps it until then, so that trying again finds
//! the blobs (and partial ingests) already fetched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_api::berth::image::v1::{BlobState, PullRequest};
use berth_api::containerd::services::images::v1::Image;
use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_api::containerd::services::leases::v1::{CreateRequest, DeleteRequest};
use berth_api::containerd::types;
use berth_peers::{LeaseResources, PeerChannel, Peers, request};
use tokio::sync::Semaphore;
use tonic::Status;

use crate::arrivals::Arrivals;
use crate::content::{Content, WRITE_CHUNK};
use crate::images::ImageStore;
use crate::manifest::{self, Descriptor, Parsed, Wanted};
use crate::progress::{self, Progress};
use crate::reference::Reference;
use crate::registry::{self, MAX_MANIFEST_SIZE, Registry, RegistryError};
use crate::source_label;
use crate::unpack::Unpacker;

/// How long a pull's lease outlives a pull that never finished (the service was killed).
pub const LEASE_TTL: Duration = Duration::from_secs(3600);
/// Downloads at once when the request does not say (containerd's default).
const DEFAULT_CONCURRENCY: usize = 3;
const MAX_CONCURRENCY: usize = 32;
/// Tries per blob for failures that may pass (a cut connection, a busy registry), counted
/// since the last try that got further.
const ATTEMPTS: u32 = 6;
/// Wait before the first retry; doubled for each further one up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// Tries per blob when the bytes do not match the digest.
const DIGEST_ATTEMPTS: u32 = 2;
const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

/// What to pull, checked.
#[derive(Debug, Clone)]
pub struct PullSpec {
    pub reference: Reference,
    pub platforms: Vec<Wanted>,
    pub all_platforms: bool,
    pub registry: registry::Options,
    pub unpack: bool,
    pub snapshotter: String,
    pub labels: HashMap<String, String>,
    pub concurrency: usize,
}

impl PullSpec {
    pub fn from_api(request: PullRequest) -> Result<PullSpec, Status> {
        let reference = Reference::parse(&request.reference).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut platforms = request
            .platforms
            .iter()
            .map(|p| Wanted::parse(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        if platforms.is_empty() {
            platforms.push(Wanted::host());
        }
        berth_core::labels::validate(&request.labels)
            .map_err(|s| Status::invalid_argument(format!("image labels: {}", s.message())))?;
        let credentials = request.credentials.map(|c| (c.username, c.secret));
        let concurrency = match request.max_concurrent_downloads {
            0 => DEFAULT_CONCURRENCY,
            n => usize::try_from(n).unwrap_or(MAX_CONCURRENCY).min(MAX_CONCURRENCY),
        };
        Ok(PullSpec {
            reference,
            platforms,
            all_platforms: request.all_platforms,
            registry: registry::Options {
                plain_http: request.plain_http,
                skip_verify: request.skip_verify,
                credentials,
                hosts: None,
            },
            unpack: request.unpack,
            snapshotter: if request.snapshotter.is_empty() { "overlayfs".into() } else { request.snapshotter },
            labels: request.labels,
            concurrency,
        })
    }
}

/// Runs pulls; one per service, shared by every call.
#[derive(Clone)]
pub struct Puller {
    pub(crate) images: ImageStore,
    pub(crate) content: Option<PeerChannel>,
    pub(crate) metadata: Option<PeerChannel>,
    pub(crate) snapshot: Option<PeerChannel>,
    /// Per-registry settings (hosts.toml), see [`Puller::with_hosts`].
    pub(crate) hosts: Arc<crate::hosts::HostsDir>,
}

pub(crate) fn to_api(descriptor: &Descriptor) -> types::Descriptor {
    types::Descriptor {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.clone(),
        size: descriptor.size,
        annotations: descriptor.annotations.clone(),
    }
}

impl Puller {
    pub fn new(images: ImageStore, peers: &Peers) -> Puller {
        Puller {
            images,
            content: peers.channel("content"),
            metadata: peers.channel("metadata"),
            snapshot: peers.channel("snapshot"),
            hosts: Arc::default(),
        }
    }

    /// Pulls `spec` into `namespace` and returns the image record.
    pub async fn pull(&self, namespace: &str, spec: PullSpec, progress: Progress) -> Result<Image, Status> {
        let content = self.content.clone().ok_or_else(|| {
            Status::failed_precondition("berth-image runs without a content service (--peer content=...)")
        })?;
        let name = spec.reference.to_string();
        let options = registry::Options { hosts: Some(self.hosts.clone()), ..spec.registry.clone() };
        let registry = Registry::new(&spec.reference, &options)?;
        let root = registry.manifest(spec.reference.object()).await?;
        let (media_type, parsed) = manifest::parse(&root.media_type, &root.bytes)
            .map_err(|problem| Status::failed_precondition(format!("{name}: {problem}")))?;
        let root_descriptor = Descriptor {
            media_type,
            digest: root.digest.clone(),
            size: i64::try_from(root.bytes.len()).unwrap_or(i64::MAX),
            urls: Vec::new(),
            annotations: HashMap::new(),
            platform: None,
        };
        progress.resolved(&name, &root_descriptor);
        tracing::info!(namespace, name, digest = root_descriptor.digest, "pulling");

        let lease = PullLease::create(self.metadata.clone(), namespace).await?;
        let job = Job {
            name: name.clone(),
            registry,
            content: Content::new(content, namespace, lease.id.clone()),
            lease_resources: LeaseResources::new(self.metadata.clone()),
            lease: lease.id.clone(),
            namespace: namespace.to_string(),
            source: (source_label::key(&spec.reference), spec.reference.repository.clone()),
            progress: progress.clone(),
            slots: Arc::new(Semaphore::new(spec.concurrency)),
        };
        let mut found = Vec::new();
        job.store_manifest(&root_descriptor, &root.bytes, &parsed).await?;
        job.walk(&root_descriptor, &parsed, &spec, 0, &mut found).await?;
        let mut blobs: Vec<Descriptor> = Vec::new();
        for blob in found.iter().flat_map(|m| std::iter::once(&m.config).chain(&m.layers)) {
            if !blobs.iter().any(|b| b.digest == blob.digest) {
                blobs.push(blob.clone());
            }
        }
        if spec.unpack {
            let snapshot = self.snapshot.clone().ok_or_else(|| {
                Status::failed_precondition(
                    "berth-image runs without a snapshot service (--peer snapshot=...) to unpack into",
                )
            })?;
            let manifest = for_unpack(&name, &found, &spec.platforms)?;
            let resources = LeaseResources::new(self.metadata.clone());
            let unpacker = Unpacker::new(snapshot, resources, namespace, lease.id.clone(), &spec.snapshotter);
            // Each layer is unpacked as soon as it and those below it are stored.
            let arrivals = Arrivals::new(blobs.iter().map(|b| b.digest.as_str()));
            let unpack = unpacker.unpack(&job.content, &manifest.config, &manifest.layers, &arrivals, &progress);
            tokio::try_join!(job.fetch_all(&blobs, Some(&arrivals)), unpack)?;
        } else {
            job.fetch_all(&blobs, None).await?;
        }

        let image = Image {
            name,
            labels: spec.labels.clone(),
            target: Some(to_api(&root_descriptor)),
            created_at: None,
            updated_at: None,
        };
        let image = self.images.put(namespace, image).await?;
        lease.release().await;
        progress.image(&image);
        tracing::info!(namespace, name = image.name, "pulled");
        Ok(image)
    }
}

/// A manifest a pull reached: the platform its index gave it, its config and layers.
#[derive(Debug, Clone)]
struct Found {
    platform: Option<manifest::Platform>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The manifest to unpack: the only one, or the first for the first wanted platform.
fn for_unpack<'a>(name: &str, found: &'a [Found], wanted: &[Wanted]) -> Result<&'a Found, Status> {
    if let [only] = found {
        return Ok(only);
    }
    wanted.iter().find_map(|w| found.iter().find(|m| m.platform.as_ref().is_some_and(|p| w.matches(p)))).ok_or_else(
        || {
            let wanted: Vec<String> = wanted.iter().map(ToString::to_string).collect();
            Status::failed_precondition(format!("{name}: no manifest for {} to unpack", wanted.join(", ")))
        },
    )
}

/// The lease a pull works under (none when there is no metadata service to hold one).
pub(crate) struct PullLease {
    metadata: Option<PeerChannel>,
    namespace: String,
    pub(crate) id: Option<String>,
}

impl PullLease {
    pub(crate) async fn create(metadata: Option<PeerChannel>, namespace: &str) -> Result<PullLease, Status> {
        let Some(channel) = &metadata else {
            return Ok(PullLease { metadata, namespace: namespace.to_string(), id: None });
        };
        let id = format!("berth-pull-{:016x}", rand::random::<u64>());
        let expires = humantime::format_rfc3339_seconds(SystemTime::now() + LEASE_TTL).to_string();
        let create = CreateRequest { id: id.clone(), labels: [(EXPIRE_LABEL.to_string(), expires)].into() };
        LeasesClient::new(channel.clone())
            .create(request(namespace, create))
            .await
            .map_err(|s| Status::unavailable(format!("taking a lease for the pull: {}", s.message())))?;
        Ok(PullLease { metadata, namespace: namespace.to_string(), id: Some(id) })
    }

    /// Ends the lease: the image record holds what the pull fetched now.
    pub(crate) async fn release(self) {
        let (Some(channel), Some(id)) = (self.metadata, self.id) else { return };
        let delete = DeleteRequest { id: id.clone(), sync: false };
        if let Err(status) = LeasesClient::new(channel).delete(request(&self.namespace, delete)).await {
            tracing::warn!(lease = id, "could not end the pull's lease (it expires on its own): {status}");
        }
    }
}

/// One pull's shared state.
struct Job {
    name: String,
    registry: Registry,
    content: Content,
    lease_resources: LeaseResources,
    lease: Option<String>,
    namespace: String,
    /// `containerd.io/distribution.source.<registry host, no port>` and the repository.
    source: (String, String),
    progress: Progress,
    slots: Arc<Semaphore>,
}

/// A blob fetch that failed: some failures are worth another try.
enum Failure {
    /// Might pass: a cut connection, a busy registry, a ref another pull is writing.
    Retry(Status),
    /// The bytes did not match the digest.
    WrongDigest(Status),
    Fatal(Status),
}

impl From<RegistryError> for Failure {
    fn from(err: RegistryError) -> Failure {
        match err {
            RegistryError::Unavailable(_) => Failure::Retry(err.into()),
            err => Failure::Fatal(err.into()),
        }
    }
}

/// Content service answers, classified.
fn content_failure(status: Status) -> Failure {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::Aborted => Failure::Retry(status),
        tonic::Code::FailedPrecondition => Failure::WrongDigest(status),
        _ => Failure::Fatal(status),
    }
}

/// The ingest ref of a blob, as containerd's fetcher names them.
fn ingest_ref(descriptor: &Descriptor) -> String {
    let kind = if manifest::is_index(&descriptor.media_type) {
        "index"
    } else if manifest::is_manifest(&descriptor.media_type) {
        "manifest"
    } else if manifest::is_config(&descriptor.media_type) {
        "config"
    } else {
        "layer"
    };
    format!("{kind}-{}", descriptor.digest)
}

impl Job {
    fn source_label(&self, existing: &HashMap<String, String>) -> (String, String) {
        let (key, repository) = &self.source;
        (key.clone(), source_label::with_repository(existing.get(key), repository))
    }

    /// Labels `descriptor`'s blob, present already, as this pull would have, and adds it to
    /// the lease (a blob found, unlike one written, is not added by the content service).
    async fn found(
        &self,
        descriptor: &Descriptor,
        existing: &HashMap<String, String>,
        mut labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let (key, value) = self.source_label(existing);
        labels.insert(key, value);
        labels.retain(|k, v| existing.get(k) != Some(v));
        self.content.set_labels(&descriptor.digest, labels).await?;
        if let Some(lease) = &self.lease {
            self.lease_resources.add(&self.namespace, lease, "content", &descriptor.digest).await?;
        }
        Ok(())
    }

    /// Stores a manifest or index (already fetched) with gc.ref labels for its children.
    async fn store_manifest(&self, descriptor: &Descriptor, bytes: &[u8], parsed: &Parsed) -> Result<(), Status> {
        let labels = parsed.gc_labels();
        if let Some(existing) = self.content.info(&descriptor.digest).await? {
            self.found(descriptor, &existing, labels).await?;
            self.progress.blob(descriptor, BlobState::Skipped, descriptor.size, 0);
            return Ok(());
        }
        let mut labels = labels;
        let (key, value) = self.source_label(&HashMap::new());
        labels.insert(key, value);
        self.content.write_all(&ingest_ref(descriptor), &descriptor.digest, bytes, labels).await?;
        self.progress.blob(descriptor, BlobState::Done, descriptor.size, 0);
        Ok(())
    }

    /// A child manifest or index: from the content store when there, else from the registry.
    async fn manifest_bytes(&self, descriptor: &Descriptor) -> Result<Vec<u8>, Status> {
        if descriptor.size > MAX_MANIFEST_SIZE as i64 {
            return Err(Status::failed_precondition(format!(
                "{}: manifest {} is {} bytes, more than {MAX_MANIFEST_SIZE}",
                self.name, descriptor.digest, descriptor.size
            )));
        }
        if self.content.info(&descriptor.digest).await?.is_some() {
            return self.content.read_all(&descriptor.digest, MAX_MANIFEST_SIZE).await;
        }
        let fetched = self.registry.manifest(&descriptor.digest).await?;
        if fetched.bytes.len() as i64 != descriptor.size {
            return Err(Status::failed_precondition(format!(
                "{}: manifest {} is {} bytes, its descriptor says {}",
                self.name,
                descriptor.digest,
                fetched.bytes.len(),
                descriptor.size
            )));
        }
        Ok(fetched.bytes)
    }

    /// Follows an index to the manifests wanted (storing each) and collects the blobs of
    /// every manifest reached.
    async fn walk(
        &self,
        descriptor: &Descriptor,
        parsed: &Parsed,
        spec: &PullSpec,
        depth: usize,
        found: &mut Vec<Found>,
    ) -> Result<(), Status> {
        match parsed {
            Parsed::Manifest { config, layers } => {
                if !manifest::is_config(&config.media_type) {
                    return Err(Status::failed_precondition(format!(
                        "{}: manifest {} has a config of unsupported media type {:?}",
                        self.name, descriptor.digest, config.media_type
                    )));
                }
                if let Some(layer) = layers.iter().find(|l| !manifest::is_layer(&l.media_type)) {
                    return Err(Status::failed_precondition(format!(
                        "{}: manifest {} has a layer {} of unsupported media type {:?}",
                        self.name, descriptor.digest, layer.digest, layer.media_type
                    )));
                }
                found.push(Found {
                    platform: descriptor.platform.clone(),
                    config: config.clone(),
                    layers: layers.clone(),
                });
                Ok(())
            }
            Parsed::Index { manifests } => {
                if depth >= manifest::MAX_INDEX_DEPTH {
                    return Err(Status::failed_precondition(format!(
                        "{}: indexes nested more than {} deep at {}",
                        self.name,
                        manifest::MAX_INDEX_DEPTH,
                        descriptor.digest
                    )));
                }
                let chosen = self.choose(descriptor, manifests, spec)?;
                for child in chosen {
                    let bytes = Box::pin(self.manifest_bytes(child)).await?;
                    let (media_type, child_parsed) = manifest::parse(&child.media_type, &bytes)
                        .map_err(|p| Status::failed_precondition(format!("{}: {}: {p}", self.name, child.digest)))?;
                    let child = Descriptor { media_type, ..child.clone() };
                    self.store_manifest(&child, &bytes, &child_parsed).await?;
                    Box::pin(self.walk(&child, &child_parsed, spec, depth + 1, found)).await?;
                }
                Ok(())
            }
        }
    }

    /// The children of an index to pull: all of them, or for each wanted platform the first
    /// manifest for it; nested indexes without a platform are followed.
    fn choose<'a>(
        &self,
        index: &Descriptor,
        manifests: &'a [Descriptor],
        spec: &PullSpec,
    ) -> Result<Vec<&'a Descriptor>, Status> {
        let usable = |d: &&Descriptor| manifest::is_manifest(&d.media_type) || manifest::is_index(&d.media_type);
        if spec.all_platforms {
            return Ok(manifests.iter().filter(usable).collect());
        }
        let mut chosen: Vec<&Descriptor> = Vec::new();
        for wanted in &spec.platforms {
            if let Some(found) = manifests.iter().filter(usable).find(|d| {
                manifest::is_manifest(&d.media_type) && d.platform.as_ref().is_some_and(|p| wanted.matches(p))
            }) && !chosen.iter().any(|c| c.digest == found.digest)
            {
                chosen.push(found);
            }
        }
        chosen.extend(manifests.iter().filter(|d| manifest::is_index(&d.media_type) && d.platform.is_none()));
        if chosen.is_empty() {
            let wanted: Vec<String> = spec.platforms.iter().map(ToString::to_string).collect();
            return Err(Status::not_found(format!(
                "{}: no manifest for platform {} in index {}",
                self.name,
                wanted.join(", "),
                index.digest
            )));
        }
        Ok(chosen)
    }

    /// Fetches every blob, a few at a time; the first failure ends the pull.
    /// Raises each blob's flag in `arrivals` once it is stored.
    async fn fetch_all(&self, blobs: &[Descriptor], arrivals: Option<&Arrivals>) -> Result<(), Status> {
        for blob in blobs {
            self.progress.blob(blob, BlobState::Waiting, 0, 0);
        }
        let fetches = blobs.iter().map(|blob| async move {
            self.fetch(blob).await?;
            if let Some(arrivals) = arrivals {
                arrivals.arrived(&blob.digest);
            }
            Ok::<_, Status>(())
        });
        futures::future::try_join_all(fetches).await?;
        Ok(())
    }

    /// One blob into the content store, retried when that may help.
    async fn fetch(&self, descriptor: &Descriptor) -> Result<(), Status> {
        let mut attempts = 0;
        let mut digest_attempts = 0;
        loop {
            let mut advanced = false;
            let failure = match self.fetch_once(descriptor, &mut advanced).await {
                Ok(()) => return Ok(()),
                Err(failure) => failure,
            };
            // A download that got further before it was cut starts the count again: a
            // connection that keeps dropping still completes the blob.
            if advanced {
                attempts = 0;
            }
            match failure {
                Failure::Retry(status) if attempts + 1 < ATTEMPTS => {
                    attempts += 1;
                    let backoff = BACKOFF.saturating_mul(2u32.pow(attempts)).min(MAX_BACKOFF);
                    tracing::info!(
                        digest = descriptor.digest,
                        attempt = attempts,
                        "blob fetch interrupted, resuming: {}",
                        status.message()
                    );
                    tokio::time::sleep(backoff).await;
                }
                Failure::WrongDigest(status) if digest_attempts + 1 < DIGEST_ATTEMPTS => {
                    digest_attempts += 1;
                    tracing::warn!(digest = descriptor.digest, "blob refused, fetching it again: {}", status.message());
                    self.content.abort(&ingest_ref(descriptor)).await?;
                }
                Failure::WrongDigest(status) => {
                    let _ = self.content.abort(&ingest_ref(descriptor)).await;
                    return Err(Status::failed_precondition(format!(
                        "{}: the registry served blob {} with other content ({} tries): {}",
                        self.name,
                        descriptor.digest,
                        DIGEST_ATTEMPTS,
                        status.message()
                    )));
                }
                Failure::Retry(status) | Failure::Fatal(status) => {
                    return Err(Status::new(
                        status.code(),
                        format!("{}: blob {}: {}", self.name, descriptor.digest, status.message()),
                    ));
                }
            }
        }
    }

    /// One try at a blob; sets `advanced` when it added bytes to the ingest.
    async fn fetch_once(&self, descriptor: &Descriptor, advanced: &mut bool) -> Result<(), Failure> {
        // A slot is a download at once: held while bytes come from the registry, not while
        // the content service makes the blob durable (an fsync), nor between tries.
        let slot = self.slots.acquire().await.map_err(|_| Failure::Fatal(Status::cancelled("the pull was stopped")))?;
        if let Some(existing) = self.content.info(&descriptor.digest).await.map_err(content_failure)? {
            self.found(descriptor, &existing, HashMap::new()).await.map_err(content_failure)?;
            self.progress.blob(descriptor, BlobState::Skipped, descriptor.size, 0);
            return Ok(());
        }
        let reference = ingest_ref(descriptor);
        let mut ingest = match self.content.ingest(&reference, descriptor.size, &descriptor.digest).await {
            Ok(ingest) => ingest,
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                self.progress.blob(descriptor, BlobState::Skipped, descriptor.size, 0);
                return Ok(());
            }
            Err(status) => return Err(content_failure(status)),
        };
        let total = u64::try_from(descriptor.size).unwrap_or(0);
        let mut position = u64::try_from(ingest.offset).unwrap_or(0);
        if position > total {
            position = 0;
        }
        if position < total {
            let mut body = match self.registry.blob(&descriptor.digest, position).await {
                Ok(body) => body,
                Err(err) => {
                    ingest.close().await;
                    return Err(err.into());
                }
            };
            // A registry that ignores ranges sends it all: start over (a write at 0 truncates).
            position = body.start;
            let mut bytes = progress::Bytes::start(&self.progress, descriptor, position);
            let mut buffer: Vec<u8> = Vec::with_capacity(WRITE_CHUNK);
            let mut buffer_start = position;
            let cut = loop {
                match body.chunk().await {
                    Ok(Some(chunk)) => {
                        position += chunk.len() as u64;
                        if position > total {
                            ingest.close().await;
                            return Err(Failure::WrongDigest(Status::failed_precondition(format!(
                                "the registry sent more than the {total} bytes of the blob"
                            ))));
                        }
                        buffer.extend_from_slice(&chunk);
                        if buffer.len() >= WRITE_CHUNK {
                            let data = std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_CHUNK));
                            ingest.write_from(buffer_start as i64, data).await.map_err(content_failure)?;
                            *advanced = true;
                            buffer_start = position;
                            bytes.at(position);
                        }
                    }
                    Ok(None) => break None,
                    Err(err) => break Some(err),
                }
            };
            // What arrived is kept in the ingest, also when the download was cut.
            if !buffer.is_empty() {
                ingest.write_from(buffer_start as i64, buffer).await.map_err(content_failure)?;
                *advanced = true;
            }
            if let Some(err) = cut {
                ingest.close().await;
                return Err(err.into());
            }
            if position < total {
                ingest.close().await;
                return Err(Failure::Retry(Status::unavailable(format!(
                    "the registry ended the blob after {position} of {total} bytes"
                ))));
            }
        }
        drop(slot);
        self.progress.blob(descriptor, BlobState::Verifying, descriptor.size, 0);
        let (key, value) = self.source_label(&HashMap::new());
        match ingest.commit([(key, value)].into()).await {
            Ok(()) => {}
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) => return Err(content_failure(status)),
        }
        self.progress.blob(descriptor, BlobState::Done, descriptor.size, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let spec = PullSpec::from_api(PullRequest { reference: "busybox".into(), ..Default::default() }).unwrap();
        assert_eq!(spec.reference.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(
            (spec.platforms, spec.concurrency, spec.snapshotter.as_str()),
            (vec![Wanted::host()], 3, "overlayfs")
        );
        for bad in [
            PullRequest { reference: "".into(), ..Default::default() },
            PullRequest { reference: "Bad/Name".into(), ..Default::default() },
            PullRequest { reference: "busybox".into(), platforms: vec!["a/b/c/d".into()], ..Default::default() },
        ] {
            assert_eq!(PullSpec::from_api(bad).unwrap_err().code(), tonic::Code::InvalidArgument);
        }
    }
}
