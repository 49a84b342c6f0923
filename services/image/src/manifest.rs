//! OCI and docker manifests and indexes: what they reference, which platform each manifest
//! is for, and the `containerd.io/gc.ref.content.*` labels containerd puts on them.

use std::collections::HashMap;

use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// How deep indexes may nest inside indexes.
pub const MAX_INDEX_DEPTH: usize = 4;

/// A descriptor as manifests spell it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

/// The parts of a manifest or index berth reads. A document with both `manifests` and
/// `layers` is refused: it is neither.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// What a fetched manifest-like blob turned out to be.
#[derive(Debug, Clone)]
pub enum Parsed {
    Index { manifests: Vec<Descriptor> },
    Manifest { config: Descriptor, layers: Vec<Descriptor> },
}

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

pub fn is_config(media_type: &str) -> bool {
    media_type == OCI_CONFIG || media_type == DOCKER_CONFIG
}

/// Layer media types berth can fetch and unpack.
pub fn is_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

/// Reads `bytes` as the index or manifest `media_type` says it is (the document's own
/// `mediaType` when the registry sent none), checking each descriptor.
pub fn parse(media_type: &str, bytes: &[u8]) -> Result<(String, Parsed), String> {
    let document: Document =
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid manifest or index: {e}"))?;
    if document.manifests.is_some() && (document.layers.is_some() || document.config.is_some()) {
        return Err("has both manifests and layers/config: neither an index nor a manifest".to_string());
    }
    let media_type = match (media_type, document.media_type.as_deref()) {
        ("" | "application/json" | "application/octet-stream", Some(own)) => own.to_string(),
        ("" | "application/json" | "application/octet-stream", None) => {
            if document.manifests.is_some() {
                OCI_INDEX.to_string()
            } else {
                OCI_MANIFEST.to_string()
            }
        }
        (given, _) => given.to_string(),
    };
    if let Some(own) = document.media_type.as_deref()
        && own != media_type
    {
        return Err(format!("served as {media_type} but says it is {own}"));
    }
    let check = |d: &Descriptor| -> Result<(), String> {
        crate::digest::validate(&d.digest).map_err(|p| format!("descriptor digest {:?}: {p}", d.digest))?;
        if d.size < 0 {
            return Err(format!("descriptor {} has a negative size", d.digest));
        }
        Ok(())
    };
    if is_index(&media_type) {
        let manifests = document.manifests.ok_or_else(|| format!("{media_type} without manifests"))?;
        manifests.iter().try_for_each(check)?;
        Ok((media_type, Parsed::Index { manifests }))
    } else if is_manifest(&media_type) {
        let config = document.config.ok_or_else(|| format!("{media_type} without a config"))?;
        let layers = document.layers.unwrap_or_default();
        check(&config)?;
        layers.iter().try_for_each(check)?;
        Ok((media_type, Parsed::Manifest { config, layers }))
    } else {
        Err(format!("unsupported media type {media_type:?}"))
    }
}

impl Parsed {
    /// Every descriptor this one references, in document order.
    pub fn children(&self) -> Vec<&Descriptor> {
        match self {
            Parsed::Index { manifests } => manifests.iter().collect(),
            Parsed::Manifest { config, layers } => std::iter::once(config).chain(layers).collect(),
        }
    }

    /// containerd's gc.ref labels for the children: `.config` for a config, `.m.<i>` for
    /// manifests, `.l.<i>` for layers, `.<i>` for anything else; counted per kind.
    pub fn gc_labels(&self) -> HashMap<String, String> {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        let mut labels = HashMap::new();
        for child in self.children() {
            let kind = if is_config(&child.media_type) {
                "containerd.io/gc.ref.content.config"
            } else if is_manifest(&child.media_type) {
                "containerd.io/gc.ref.content.m."
            } else if is_layer(&child.media_type) {
                "containerd.io/gc.ref.content.l."
            } else {
                "containerd.io/gc.ref.content."
            };
            let index = counts.entry(kind).or_default();
            let key = if *index > 0 || kind.ends_with('.') { format!("{kind}{index}") } else { kind.to_string() };
            *index += 1;
            labels.insert(key, child.digest.clone());
        }
        labels
    }
}

/// A platform to pull: os, architecture and optional variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Wanted {
    /// This host's platform (linux/amd64, linux/arm64/v8, ...).
    pub fn host() -> Wanted {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Wanted { os: "linux".into(), architecture: architecture.into(), variant: variant.map(str::to_string) }
    }

    /// `os/arch[/variant]` as ctr's `--platform` takes it (`arch` alone means linux).
    pub fn parse(text: &str) -> Result<Wanted, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let (os, architecture, variant) = match parts.as_slice() {
            [arch] => ("linux", *arch, None),
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => return Err(format!("platform {text:?}: expected os/arch[/variant]")),
        };
        if os.is_empty() || architecture.is_empty() || variant.is_some_and(str::is_empty) {
            return Err(format!("platform {text:?}: expected os/arch[/variant]"));
        }
        let architecture = match architecture.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            other => other.to_string(),
        };
        let variant = match (architecture.as_str(), variant) {
            ("arm64", None) => Some("v8".to_string()),
            (_, v) => v.map(str::to_string),
        };
        Ok(Wanted { os: os.to_ascii_lowercase(), architecture, variant })
    }

    /// Whether a manifest for `platform` runs here. arm64 without a variant is v8.
    pub fn matches(&self, platform: &Platform) -> bool {
        if platform.os != self.os || platform.architecture != self.architecture {
            return false;
        }
        let theirs = match (platform.architecture.as_str(), platform.variant.as_deref()) {
            ("arm64", None | Some("")) => Some("v8"),
            (_, Some("")) => None,
            (_, v) => v,
        };
        match (&self.variant, theirs) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            (Some(_), None) => true,
        }
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn manifests_label_their_children_like_containerd() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":10}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":5}},
                      {{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":6}}]}}"#,
            digest(1),
            digest(2),
            digest(3)
        );
        let (media_type, parsed) = parse(OCI_MANIFEST, manifest.as_bytes()).unwrap();
        assert_eq!(media_type, OCI_MANIFEST);
        let labels = parsed.gc_labels();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels["containerd.io/gc.ref.content.config"], digest(1));
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], digest(2));
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], digest(3));

        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#,
            digest(4),
            digest(5)
        );
        let (media_type, parsed) = parse("", index.as_bytes()).unwrap();
        assert_eq!(media_type, OCI_INDEX);
        let labels = parsed.gc_labels();
        assert_eq!(labels["containerd.io/gc.ref.content.m.0"], digest(4));
        assert_eq!(labels["containerd.io/gc.ref.content.m.1"], digest(5));
    }

    #[test]
    fn refuses_what_is_neither() {
        let both = format!(
            r#"{{"manifests":[],"layers":[],"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":1}}}}"#,
            digest(1)
        );
        assert!(parse(OCI_MANIFEST, both.as_bytes()).unwrap_err().contains("both"));
        assert!(parse("text/html", b"{}").unwrap_err().contains("unsupported media type"));
        assert!(parse(OCI_MANIFEST, b"not json").is_err());
        let bad_digest = format!(r#"{{"config":{{"mediaType":"{OCI_CONFIG}","digest":"sha256:x","size":1}}}}"#);
        assert!(parse(OCI_MANIFEST, bad_digest.as_bytes()).is_err());
        let mismatch = format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(parse(OCI_MANIFEST, mismatch.as_bytes()).unwrap_err().contains("says it is"));
    }

    #[test]
    fn platforms() {
        let linux = |arch: &str, variant: Option<&str>| Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(str::to_string),
        };
        let amd64 = Wanted::parse("linux/amd64").unwrap();
        assert!(amd64.matches(&linux("amd64", None)));
        assert!(!amd64.matches(&linux("arm64", None)));
        let arm64 = Wanted::parse("arm64").unwrap();
        assert_eq!(arm64.to_string(), "linux/arm64/v8");
        assert!(arm64.matches(&linux("arm64", None)) && arm64.matches(&linux("arm64", Some("v8"))));
        let armv7 = Wanted::parse("linux/arm/v7").unwrap();
        assert!(armv7.matches(&linux("arm", Some("v7"))) && !armv7.matches(&linux("arm", Some("v6"))));
        assert!(Wanted::parse("a/b/c/d").is_err() && Wanted::parse("linux/").is_err());
        assert!(Wanted::host().matches(&Platform {
            os: "linux".into(),
            architecture: Wanted::host().architecture,
            variant: None
        }));
    }
}
