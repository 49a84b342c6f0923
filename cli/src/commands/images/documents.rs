//! An image's documents as the content store holds them: the index, the manifests (with the
//! platform each is for) and configs, and what a platform needs (containerd's
//! `images.Check`, `Image.Size` and `IsUnpacked` rules, client side).

use anyhow::Context as _;
use berth_api::containerd::services::content::v1::{InfoRequest, ReadContentRequest};
use berth_api::containerd::types::Descriptor;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::client::Client;
use crate::errors::Subject;

/// Manifests and indexes are small; refuse to buffer anything bigger (as the registry side does).
pub const MAX_DOCUMENT_SIZE: usize = 4 << 20;
/// Indexes nested deeper than this are not followed.
const MAX_DEPTH: usize = 8;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// `index`, `manifest`, `config` or `layer`, from a media type.
pub fn kind(media_type: &str) -> &'static str {
    if is_index(media_type) {
        "index"
    } else if is_manifest(media_type) {
        "manifest"
    } else if media_type.contains("config") {
        "config"
    } else {
        "layer"
    }
}

/// This host's platform, as OCI names it.
pub fn host_platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("linux/{arch}")
}

/// `os/arch[/variant]` of an OCI platform object (or of a config, which has the same fields).
pub fn platform_text(platform: &Value) -> Option<String> {
    let os = platform["os"].as_str().filter(|s| !s.is_empty())?;
    let arch = platform["architecture"].as_str().filter(|s| !s.is_empty())?;
    Some(match platform["variant"].as_str().filter(|s| !s.is_empty()) {
        Some(variant) => format!("{os}/{arch}/{variant}"),
        None => format!("{os}/{arch}"),
    })
}

/// Whether a platform text is for `wanted` (`os/arch`, variants ignored unless both have one).
fn platform_matches(platform: &str, wanted: &str) -> bool {
    let have: Vec<&str> = platform.split('/').collect();
    let want: Vec<&str> = wanted.split('/').collect();
    have.get(..2) == want.get(..2) && (have.len() < 3 || want.len() < 3 || have[2] == want[2])
}

/// A descriptor from its JSON form.
pub fn descriptor(value: &Value) -> Option<Descriptor> {
    Some(Descriptor {
        media_type: value["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: value["digest"].as_str()?.to_string(),
        size: value["size"].as_i64()?,
        annotations: Default::default(),
    })
}

/// Whether the content store has `digest`.
pub async fn present(client: &Client, digest: &str) -> anyhow::Result<bool> {
    match client.content().info(InfoRequest { digest: digest.to_string() }).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::NotFound => Ok(false),
        Err(status) => Err(client.explain(status, Subject::Content(digest))),
    }
}

/// A JSON document from the content store; `None` when the store lacks it.
pub async fn read_json(client: &Client, digest: &str) -> anyhow::Result<Option<Value>> {
    let Some(bytes) = read_small(client, digest).await? else { return Ok(None) };
    let value = serde_json::from_slice(&bytes).with_context(|| format!("blob {digest} is not JSON"))?;
    Ok(Some(value))
}

/// A blob of at most [`MAX_DOCUMENT_SIZE`] bytes, digest checked; `None` when absent.
pub async fn read_small(client: &Client, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let request = ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 };
    let mut stream = match client.content().read(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::NotFound => return Ok(None),
        Err(status) => return Err(client.explain(status, Subject::Content(digest))),
    };
    let mut bytes = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                bytes.extend_from_slice(&chunk.data);
                if bytes.len() > MAX_DOCUMENT_SIZE {
                    anyhow::bail!("blob {digest} is larger than {MAX_DOCUMENT_SIZE} bytes: not a manifest or config");
                }
            }
            Ok(None) => break,
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(client.explain(status, Subject::Content(digest))),
        }
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if digest.starts_with("sha256:") && actual != digest {
        anyhow::bail!("blob {digest} read back with digest {actual}: the content store is damaged");
    }
    Ok(Some(bytes))
}

/// One manifest reached from an image's target.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub descriptor: Descriptor,
    /// From the index entry, else from the config; `None` when neither says.
    pub platform: Option<String>,
    /// The manifest document; `None` when the content store lacks it.
    pub document: Option<Value>,
    pub config: Option<Descriptor>,
    /// The config document; `None` when absent.
    pub config_document: Option<Value>,
    pub layers: Vec<Descriptor>,
}

/// Everything reachable from an image's target that the content store holds.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    /// Indexes in walk order, with their documents when present.
    pub indexes: Vec<(Descriptor, Option<Value>)>,
    pub manifests: Vec<Manifest>,
}

impl Tree {
    /// Walks `target` through indexes down to every manifest and config.
    pub async fn read(client: &Client, target: &Descriptor) -> anyhow::Result<Tree> {
        let mut tree = Tree::default();
        tree.walk(client, target.clone(), None, 0).await?;
        Ok(tree)
    }

    async fn walk(
        &mut self,
        client: &Client,
        descriptor: Descriptor,
        platform: Option<String>,
        depth: usize,
    ) -> anyhow::Result<()> {
        if is_index(&descriptor.media_type) {
            let document = read_json(client, &descriptor.digest).await?;
            self.indexes.push((descriptor.clone(), document.clone()));
            if depth >= MAX_DEPTH {
                return Ok(());
            }
            let Some(document) = document else { return Ok(()) };
            for entry in document["manifests"].as_array().into_iter().flatten() {
                let Some(child) = descriptor_from(entry) else { continue };
                let platform = platform_text(&entry["platform"]);
                Box::pin(self.walk(client, child, platform, depth + 1)).await?;
            }
            return Ok(());
        }
        if !is_manifest(&descriptor.media_type) {
            return Ok(());
        }
        let document = read_json(client, &descriptor.digest).await?;
        let config = document.as_ref().and_then(|d| descriptor_from(&d["config"]));
        let layers = document
            .as_ref()
            .map(|d| d["layers"].as_array().into_iter().flatten().filter_map(descriptor_from).collect())
            .unwrap_or_default();
        let config_document = match &config {
            Some(config) => read_json(client, &config.digest).await?,
            None => None,
        };
        let platform = platform.or_else(|| config_document.as_ref().and_then(platform_text));
        self.manifests.push(Manifest { descriptor, platform, document, config, config_document, layers });
        Ok(())
    }

    /// Platforms of the manifests, as ctr lists them: `linux/amd64,linux/arm64/v8`.
    pub fn platforms(&self) -> String {
        let mut platforms: Vec<String> = self.manifests.iter().filter_map(|m| m.platform.clone()).collect();
        platforms.dedup();
        platforms.join(",")
    }

    /// The manifests for `platform`; the only one when the target is a manifest.
    pub fn for_platform(&self, platform: &str) -> Vec<&Manifest> {
        if self.indexes.is_empty() {
            return self.manifests.iter().collect();
        }
        self.manifests.iter().filter(|m| m.platform.as_deref().is_some_and(|p| platform_matches(p, platform))).collect()
    }

    /// What `platform` needs, as containerd's `images.Check` counts it: the configs and
    /// layers of the platform's manifests (the manifests themselves were read to know them).
    pub fn required(&self, platform: &str) -> Vec<Descriptor> {
        let mut required: Vec<Descriptor> = Vec::new();
        for manifest in self.for_platform(platform) {
            for descriptor in manifest.config.iter().chain(&manifest.layers) {
                if !required.iter().any(|r| r.digest == descriptor.digest) {
                    required.push(descriptor.clone());
                }
            }
        }
        required
    }

    /// The bytes `platform` needs, as ctr's SIZE column counts them: the target, the indexes
    /// and the platform's manifests with their configs and layers. `None` when a manifest
    /// for the platform is missing from the content store.
    pub fn size(&self, target: &Descriptor, platform: &str) -> Option<u64> {
        let manifests = self.for_platform(platform);
        if manifests.is_empty() || manifests.iter().any(|m| m.document.is_none()) {
            return None;
        }
        let mut counted: Vec<&Descriptor> = Vec::new();
        let required = self.required(platform);
        let all = std::iter::once(target)
            .chain(self.indexes.iter().map(|(d, _)| d))
            .chain(manifests.iter().map(|m| &m.descriptor))
            .chain(&required);
        for descriptor in all {
            if !counted.iter().any(|c| c.digest == descriptor.digest) {
                counted.push(descriptor);
            }
        }
        Some(counted.iter().map(|d| u64::try_from(d.size).unwrap_or(0)).sum())
    }

    /// The chain ID of `manifest`'s top layer, from its config's `rootfs.diff_ids`.
    pub fn chain_id(manifest: &Manifest) -> Option<String> {
        let diff_ids: Vec<&str> = manifest.config_document.as_ref()?["rootfs"]["diff_ids"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        chain_id(&diff_ids)
    }
}

/// [`descriptor`], under a name that methods with a `descriptor` argument can reach.
fn descriptor_from(entry: &Value) -> Option<Descriptor> {
    descriptor(entry)
}

/// containerd's chain ID: the first diff ID, then sha256 of "parent child" for each above it.
pub fn chain_id(diff_ids: &[&str]) -> Option<String> {
    let (first, rest) = diff_ids.split_first()?;
    let mut chain = first.to_string();
    for diff_id in rest {
        chain = format!("sha256:{}", hex::encode(Sha256::digest(format!("{chain} {diff_id}").as_bytes())));
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn platforms_are_written_like_oci() {
        assert_eq!(
            platform_text(&json!({"os": "linux", "architecture": "arm64", "variant": "v8"})).unwrap(),
            "linux/arm64/v8"
        );
        assert_eq!(platform_text(&json!({"os": "linux", "architecture": "amd64"})).unwrap(), "linux/amd64");
        assert_eq!(platform_text(&json!({})), None);
        assert!(platform_matches("linux/arm64/v8", "linux/arm64"));
        assert!(!platform_matches("linux/arm/v6", "linux/arm/v7"));
        assert!(!platform_matches("linux/amd64", "linux/arm64"));
    }

    #[test]
    fn chain_ids_like_containerd() {
        let a = "sha256:aaaa";
        assert_eq!(chain_id(&[a]).unwrap(), a);
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb")));
        assert_eq!(chain_id(&[a, "sha256:bbbb"]).unwrap(), expected);
        assert_eq!(chain_id(&[]), None);
    }

    #[test]
    fn kinds_from_media_types() {
        assert_eq!(kind(OCI_INDEX), "index");
        assert_eq!(kind(DOCKER_MANIFEST), "manifest");
        assert_eq!(kind("application/vnd.oci.image.config.v1+json"), "config");
        assert_eq!(kind("application/vnd.oci.image.layer.v1.tar+gzip"), "layer");
    }
}
