//! The image a container runs from, and the container's root filesystem on top of it.
//!
//! As containerd's client does it: find the image record (or have the image service pull it),
//! read the manifest for this platform and the config from the content store, and prepare the
//! container's snapshot on the chain ID of the image's layers. When that chain is not in the
//! snapshotter yet, the layers are applied one by one through the Diff service first.

use anyhow::Context as _;
use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_api::berth::image::v1::{PullRequest, pull_progress};
use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{Info, ReadContentRequest, UpdateRequest};
use berth_api::containerd::services::diff::v1::ApplyRequest;
use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
use berth_api::containerd::services::images::v1::images_client::ImagesClient;
use berth_api::containerd::services::images::v1::{GetImageRequest, Image};
use berth_api::containerd::services::leases::v1::{
    CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest,
};
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use berth_api::containerd::types::{Descriptor, Mount};
use berth_api::prost_types::FieldMask;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;

use crate::client::{Client, Transport};
use crate::errors::Subject;
use crate::image_spec::ImageConfig;

const INDEX_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
/// Largest manifest, index or config read into memory.
const MAX_JSON: usize = 16 << 20;

/// How long a lease taken for setting a container up lives if this client dies mid-way.
const LEASE_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Adds `containerd-lease` to every request, so that what they create (snapshots being
/// unpacked, the container's snapshot before its record exists) is safe from garbage collection.
#[derive(Clone, Debug)]
pub struct Leased {
    value: AsciiMetadataValue,
}

impl Interceptor for Leased {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("containerd-lease", self.value.clone());
        Ok(request)
    }
}

/// The transport of calls made under a lease.
pub type LeasedTransport = InterceptedService<Transport, Leased>;

/// A short-lived lease (expiring on its own after an hour) and clients that work under it,
/// as containerd's client takes one around unpacking and container creation.
pub struct Lease<'a> {
    client: &'a Client,
    id: String,
    leased: Leased,
}

impl<'a> Lease<'a> {
    pub async fn create(client: &'a Client) -> anyhow::Result<Lease<'a>> {
        let now = std::time::SystemTime::now();
        let id = crate::commands::leases::random_id(now);
        let labels =
            [(crate::commands::leases::EXPIRE_LABEL.to_string(), crate::commands::leases::expiry(now, LEASE_EXPIRY)?)]
                .into();
        client
            .leases()
            .create(CreateLeaseRequest { id: id.clone(), labels })
            .await
            .map_err(|status| client.explain(status, Subject::Lease(&id)))?;
        let value = AsciiMetadataValue::try_from(id.as_str())
            .map_err(|_| anyhow::anyhow!("lease id {id:?} cannot be sent in gRPC metadata"))?;
        Ok(Lease { client, id, leased: Leased { value } })
    }

    pub fn transport(&self) -> LeasedTransport {
        InterceptedService::new(self.client.transport(), self.leased.clone())
    }

    pub fn snapshots(&self) -> SnapshotsClient<LeasedTransport> {
        SnapshotsClient::new(self.transport())
    }

    pub fn diff(&self) -> DiffClient<LeasedTransport> {
        DiffClient::new(self.transport())
    }

    pub fn content(&self) -> ContentClient<LeasedTransport> {
        ContentClient::new(self.transport())
    }

    pub fn containers(&self) -> ContainersClient<LeasedTransport> {
        ContainersClient::new(self.transport())
            .max_encoding_message_size(crate::client::MAX_MESSAGE_SIZE)
            .max_decoding_message_size(crate::client::MAX_MESSAGE_SIZE)
    }

    /// Ends the lease; what it protected is then kept only by what references it.
    pub async fn release(self) {
        let request = DeleteLeaseRequest { id: self.id.clone(), sync: false };
        if let Err(status) = self.client.leases().delete(request).await {
            eprintln!("berth: {:#}", self.client.explain(status, Subject::Lease(&self.id)));
        }
    }
}

/// An image ready to run: its stored name, its config, and its layers.
#[derive(Debug, Clone)]
pub struct RunImage {
    pub name: String,
    pub config_digest: String,
    pub config: ImageConfig,
    pub layers: Vec<Descriptor>,
}

impl RunImage {
    /// The chain ID of all layers: the snapshot a container's rootfs is prepared on.
    pub fn chain_id(&self) -> String {
        chain_ids(&self.config.diff_ids).pop().unwrap_or_default()
    }
}

/// Chain IDs as the OCI image spec defines them: the first is the first diff ID, each next one
/// `sha256(previous + " " + diff ID)`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chains: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chains.last() {
            None => diff_id.clone(),
            Some(parent) => format!("sha256:{}", hex::encode(Sha256::digest(format!("{parent} {diff_id}")))),
        };
        chains.push(next);
    }
    chains
}

/// The name containerd stores for `reference`: `busybox` → `docker.io/library/busybox:latest`.
pub fn normalize(reference: &str) -> String {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    let (name, tag) = match rest.rfind(':') {
        Some(colon) if !rest[colon..].contains('/') => (&rest[..colon], Some(&rest[colon + 1..])),
        _ => (rest, None),
    };
    let name = match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => name.to_string(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    };
    let name = name.replacen("docker.io/library/library/", "docker.io/library/", 1);
    let mut out = name;
    match (tag, digest) {
        (None, None) => out.push_str(":latest"),
        (tag, digest) => {
            if let Some(tag) = tag {
                out.push(':');
                out.push_str(tag);
            }
            if let Some(digest) = digest {
                out.push('@');
                out.push_str(digest);
            }
        }
    }
    out
}

/// Whether `reference` names a registry on this machine, which is spoken to in plain HTTP.
pub fn is_local_registry(reference: &str) -> bool {
    let host = reference.split('/').next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    reference.contains('/') && (host == "localhost" || host.starts_with("127.") || host == "[::1]")
}

/// The image record for `reference` (as given, then normalized), if berth has one.
pub async fn find(client: &Client, reference: &str) -> anyhow::Result<Option<Image>> {
    let mut images = ImagesClient::new(client.transport());
    let normalized = normalize(reference);
    let mut names = vec![reference.to_string()];
    if normalized != reference {
        names.push(normalized);
    }
    for name in names {
        match images.get(GetImageRequest { name: name.clone() }).await {
            Ok(response) => return Ok(response.into_inner().image),
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                return Err(client.explain(status, Subject::Server).context(format!("look up image {name}")));
            }
        }
    }
    Ok(None)
}

/// Has the image service pull `reference` (and unpack it into `snapshotter`); returns the
/// image record it wrote. `report` gets a line now and then for the user.
pub async fn pull(
    client: &Client,
    reference: &str,
    snapshotter: &str,
    plain_http: bool,
    mut report: impl FnMut(&str),
) -> anyhow::Result<Image> {
    let request = PullRequest {
        reference: reference.to_string(),
        plain_http,
        unpack: true,
        snapshotter: snapshotter.to_string(),
        ..Default::default()
    };
    let explain = |status: tonic::Status| client.explain(status, Subject::Server).context(format!("pull {reference}"));
    let mut stream = TransferClient::new(client.transport()).pull(request).await.map_err(explain)?.into_inner();
    let mut image = None;
    while let Some(progress) = stream.message().await.map_err(explain)? {
        match progress.event {
            Some(pull_progress::Event::Resolved(resolved)) => {
                report(&format!("pulling {} ({})", resolved.name, resolved.digest));
            }
            Some(pull_progress::Event::Image(record)) => image = Some(record),
            _ => {}
        }
    }
    image.with_context(|| format!("pull {reference}: the image service ended without the image record"))
}

/// Reads a blob whole (manifests, configs), checking its digest.
pub async fn read_blob(client: &Client, digest: &str) -> anyhow::Result<Vec<u8>> {
    let request = ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 };
    let explain = |status| client.explain(status, Subject::Content(digest));
    let mut stream = client.content().read(request).await.map_err(explain)?.into_inner();
    let mut data = Vec::new();
    while let Some(message) = stream.message().await.map_err(explain)? {
        data.extend_from_slice(&message.data);
        if data.len() > MAX_JSON {
            anyhow::bail!("blob {digest} is larger than {MAX_JSON} bytes: not a manifest or config");
        }
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
    if digest.starts_with("sha256:") && actual != digest {
        anyhow::bail!("blob {digest} read back as {actual}: the content store returned other bytes");
    }
    Ok(data)
}

/// The OCI architecture name of this machine.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn json(bytes: &[u8], what: &str) -> anyhow::Result<Value> {
    serde_json::from_slice(bytes).map_err(|err| anyhow::anyhow!("{what} is not valid JSON: {err}"))
}

fn descriptor(value: &Value) -> Option<Descriptor> {
    Some(Descriptor {
        media_type: value["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: value["digest"].as_str()?.to_string(),
        size: value["size"].as_i64().unwrap_or_default(),
        annotations: Default::default(),
    })
}

/// Reads the manifest of `image` for this platform and its config.
pub async fn load(client: &Client, image: &Image) -> anyhow::Result<RunImage> {
    let target = image.target.as_ref().with_context(|| format!("image {} has no target", image.name))?;
    let mut digest = target.digest.clone();
    let mut bytes = read_blob(client, &digest).await?;
    let mut manifest = json(&bytes, &format!("manifest {digest} of image {}", image.name))?;
    if INDEX_TYPES.contains(&target.media_type.as_str()) || manifest.get("manifests").is_some() {
        let arch = host_architecture();
        let entries = manifest["manifests"].as_array().cloned().unwrap_or_default();
        let chosen = entries
            .iter()
            .find(|entry| entry["platform"]["os"] == "linux" && entry["platform"]["architecture"] == arch)
            .and_then(descriptor)
            .with_context(|| format!("image {} has no manifest for linux/{arch}", image.name))?;
        digest = chosen.digest;
        bytes = read_blob(client, &digest).await?;
        manifest = json(&bytes, &format!("manifest {digest} of image {}", image.name))?;
    }
    let config = descriptor(&manifest["config"])
        .with_context(|| format!("manifest {digest} of image {} has no config", image.name))?;
    let layers: Vec<Descriptor> = manifest["layers"].as_array().into_iter().flatten().filter_map(descriptor).collect();
    let config_bytes = read_blob(client, &config.digest).await?;
    let parsed = ImageConfig::parse(&config_bytes, &config.digest)?;
    if parsed.diff_ids.len() != layers.len() {
        anyhow::bail!(
            "image {}: its config lists {} layers but its manifest {}",
            image.name,
            parsed.diff_ids.len(),
            layers.len()
        );
    }
    Ok(RunImage { name: image.name.clone(), config_digest: config.digest, config: parsed, layers })
}

/// Prepares the read-write snapshot `key` on the image's layers, unpacking them first when
/// the snapshotter does not have them; returns its mounts.
pub async fn prepare(
    client: &Client,
    lease: &Lease<'_>,
    image: &RunImage,
    snapshotter: &str,
    key: &str,
) -> anyhow::Result<Vec<Mount>> {
    let parent = image.chain_id();
    let request = PrepareSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: key.to_string(),
        parent: parent.clone(),
        labels: Default::default(),
    };
    let subject = Subject::Snapshot { key, snapshotter };
    match lease.snapshots().prepare(request.clone()).await {
        Ok(response) => return Ok(response.into_inner().mounts),
        Err(status) if status.code() == Code::NotFound && !parent.is_empty() => {}
        Err(status) => return Err(client.explain(status, subject)),
    }
    unpack(client, lease, image, snapshotter).await?;
    let response = lease.snapshots().prepare(request).await.map_err(|status| client.explain(status, subject))?;
    Ok(response.into_inner().mounts)
}

/// Applies the image's layers that the snapshotter lacks, bottom up, committing each under
/// its chain ID; then labels the config so garbage collection keeps the snapshots.
pub async fn unpack(client: &Client, lease: &Lease<'_>, image: &RunImage, snapshotter: &str) -> anyhow::Result<()> {
    let chains = chain_ids(&image.config.diff_ids);
    let mut snapshots = lease.snapshots();
    for (index, chain) in chains.iter().enumerate() {
        let stat = StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: chain.clone() };
        match snapshots.stat(stat).await {
            Ok(_) => continue,
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(client.explain(status, Subject::Snapshot { key: chain, snapshotter })),
        }
        let key = format!("extract-{:016x} {chain}", rand::random::<u64>());
        let parent = if index == 0 { String::new() } else { chains[index - 1].clone() };
        let subject = Subject::Snapshot { key: &key, snapshotter };
        let prepare = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
            parent,
            labels: Default::default(),
        };
        let mounts =
            snapshots.prepare(prepare).await.map_err(|status| client.explain(status, subject))?.into_inner().mounts;
        let layer = &image.layers[index];
        let applied = lease
            .diff()
            .apply(ApplyRequest { diff: Some(layer.clone()), mounts, payloads: Default::default() })
            .await
            .map(|response| response.into_inner().applied);
        let remove = RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.clone() };
        let applied = match applied {
            Ok(applied) => applied,
            Err(status) => {
                let _ = snapshots.remove(remove).await;
                return Err(client
                    .explain(status, Subject::Content(&layer.digest))
                    .context(format!("unpack layer {} of image {} into {snapshotter}", layer.digest, image.name)));
            }
        };
        let diff_id = &image.config.diff_ids[index];
        if applied.as_ref().map(|d| d.digest.as_str()) != Some(diff_id.as_str()) {
            let _ = snapshots.remove(remove).await;
            anyhow::bail!(
                "unpack layer {} of image {}: it unpacked to {} but the config says {diff_id}",
                layer.digest,
                image.name,
                applied.map(|d| d.digest).unwrap_or_default()
            );
        }
        let commit = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: chain.clone(),
            key: key.clone(),
            labels: Default::default(),
        };
        match snapshots.commit(commit).await {
            Ok(_) => {}
            // Someone else unpacked the same layer meanwhile.
            Err(status) if status.code() == Code::AlreadyExists => {
                let _ = snapshots.remove(remove).await;
            }
            Err(status) => {
                let _ = snapshots.remove(remove).await;
                return Err(client.explain(status, Subject::Snapshot { key: chain, snapshotter }));
            }
        }
    }
    let label = format!("containerd.io/gc.ref.snapshot.{snapshotter}");
    let update = UpdateRequest {
        info: Some(Info {
            digest: image.config_digest.clone(),
            labels: [(label.clone(), image.chain_id())].into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths: vec![format!("labels.{label}")] }),
    };
    lease
        .content()
        .update(update)
        .await
        .map_err(|status| client.explain(status, Subject::Content(&image.config_digest)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        assert!(chain_ids(&[]).is_empty());
        let a = "sha256:a".to_string();
        let b = "sha256:b".to_string();
        let chains = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chains[0], a);
        assert_eq!(chains[1], format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:a sha256:b"))));
    }

    #[test]
    fn names_like_docker() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("library/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("user/app"), "docker.io/user/app:latest");
        assert_eq!(normalize("docker.io/library/busybox:e2e"), "docker.io/library/busybox:e2e");
        assert_eq!(normalize("127.0.0.1:5000/app"), "127.0.0.1:5000/app:latest");
        assert_eq!(normalize("localhost/app:1"), "localhost/app:1");
        assert_eq!(normalize("ghcr.io/a/b@sha256:ab"), "ghcr.io/a/b@sha256:ab");
    }

    #[test]
    fn local_registries_speak_plain_http() {
        assert!(is_local_registry("127.0.0.1:5000/busybox:e2e"));
        assert!(is_local_registry("localhost:5000/busybox"));
        assert!(is_local_registry("[::1]:5000/busybox"));
        assert!(!is_local_registry("docker.io/library/busybox"));
        assert!(!is_local_registry("busybox"));
    }
}
