//! Exports of images as one OCI image layout tar, streamed as it is written: `oci-layout`,
//! every blob the images reach (indexes, the manifests the content store has, configs,
//! layers) under `blobs/sha256/`, and `index.json` naming each image as containerd does
//! (`io.containerd.image.name` = the full name, `org.opencontainers.image.ref.name` = its tag).
//!
//! Everything is checked before the first byte goes out, so a failed export fails early.

use std::collections::HashMap;

use berth_api::berth::image::v1::ExportChunk;
use serde_json::json;
use tokio::sync::mpsc;
use tonic::Status;

use crate::content::Content;
use crate::import::{IMAGE_NAME, REF_NAME};
use crate::manifest::{self, Descriptor, Parsed};
use crate::pull::Puller;
use crate::reference::Reference;
use crate::registry::MAX_MANIFEST_SIZE;

const BLOCK: usize = 512;
/// Bytes gathered before a chunk is sent.
const CHUNK: usize = 1 << 20;
const MAX_DEPTH: usize = manifest::MAX_INDEX_DEPTH;

pub type Chunks = mpsc::Sender<Result<ExportChunk, Status>>;

/// The OCI reference name of an image: its tag (or digest), as containerd's export writes it.
fn ref_name(name: &str) -> String {
    match Reference::parse(name) {
        Ok(reference) => reference.object().to_string(),
        Err(_) => name.to_string(),
    }
}

/// A ustar header for a regular file (or directory when `size` is None), fixed mode and time.
fn header(path: &str, size: Option<u64>) -> Result<Vec<u8>, Status> {
    let mut header = tar::Header::new_ustar();
    header.set_path(path).map_err(|e| Status::internal(format!("tar path {path}: {e}")))?;
    match size {
        Some(size) => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
            header.set_mode(0o644);
        }
        None => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_mode(0o755);
        }
    }
    header.set_mtime(0);
    header.set_cksum();
    Ok(header.as_bytes().to_vec())
}

fn padding(size: u64) -> usize {
    (BLOCK - (size % BLOCK as u64) as usize) % BLOCK
}

/// Gathers tar bytes into chunks for the stream.
struct Writer {
    chunks: Chunks,
    buffer: Vec<u8>,
}

impl Writer {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Status> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Status> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.chunks
            .send(Ok(ExportChunk { data }))
            .await
            .map_err(|_| Status::cancelled("the client stopped reading the export"))
    }

    async fn file(&mut self, path: &str, bytes: &[u8]) -> Result<(), Status> {
        self.write(&header(path, Some(bytes.len() as u64))?).await?;
        self.write(bytes).await?;
        self.write(&[0; BLOCK][..padding(bytes.len() as u64)]).await
    }
}

impl Puller {
    /// Writes the images `names` of `namespace` as an OCI layout tar to `chunks`.
    pub async fn export(&self, namespace: &str, names: Vec<String>, chunks: Chunks) -> Result<(), Status> {
        let channel = self.content.clone().ok_or_else(|| {
            Status::failed_precondition("berth-image runs without a content service (--peer content=...)")
        })?;
        if names.is_empty() {
            return Err(Status::invalid_argument("name at least one image to export"));
        }
        let content = Content::new(channel, namespace, None);
        let mut entries = Vec::new();
        let mut blobs: Vec<Descriptor> = Vec::new();
        for name in &names {
            let image = self.images.get(namespace, name).await?;
            let target = image.target.unwrap_or_default();
            let root = Descriptor {
                media_type: target.media_type.clone(),
                digest: target.digest.clone(),
                size: target.size,
                urls: Vec::new(),
                annotations: HashMap::new(),
                platform: None,
            };
            if content.info(&root.digest).await?.is_none() {
                return Err(Status::failed_precondition(format!(
                    "image {name}: its target {} is not in the content store (pull it again)",
                    root.digest
                )));
            }
            collect(&content, name, &root, 0, &mut blobs).await?;
            entries.push(json!({
                "mediaType": target.media_type,
                "digest": target.digest,
                "size": target.size,
                "annotations": {IMAGE_NAME: name, REF_NAME: ref_name(name)},
            }));
        }
        let index = json!({"schemaVersion": 2, "mediaType": manifest::OCI_INDEX, "manifests": entries});
        let index = serde_json::to_vec(&index).map_err(|e| Status::internal(e.to_string()))?;

        let mut writer = Writer { chunks, buffer: Vec::with_capacity(CHUNK) };
        writer.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).await?;
        writer.write(&header("blobs/", None)?).await?;
        writer.write(&header("blobs/sha256/", None)?).await?;
        for blob in &blobs {
            let path = format!("blobs/{}", blob.digest.replacen(':', "/", 1));
            let size = u64::try_from(blob.size).unwrap_or(0);
            writer.write(&header(&path, Some(size))?).await?;
            let mut stream = content.read(&blob.digest).await?;
            let mut sent = 0u64;
            while let Some(message) = stream.message().await? {
                sent += message.data.len() as u64;
                if sent > size {
                    break;
                }
                writer.write(&message.data).await?;
            }
            if sent != size {
                return Err(Status::data_loss(format!(
                    "blob {} gave {sent} bytes, its descriptor says {size}",
                    blob.digest
                )));
            }
            writer.write(&[0; BLOCK][..padding(size)]).await?;
        }
        writer.file("index.json", &index).await?;
        writer.write(&[0; BLOCK * 2]).await?;
        writer.flush().await?;
        tracing::info!(namespace, images = names.len(), blobs = blobs.len(), "exported");
        Ok(())
    }
}

fn add(blobs: &mut Vec<Descriptor>, descriptor: &Descriptor) {
    if !blobs.iter().any(|b| b.digest == descriptor.digest) {
        blobs.push(descriptor.clone());
    }
}

/// Adds `descriptor` and what it reaches to `blobs`: manifests of an index that the content
/// store lacks (other platforms never pulled) are left out; a manifest's config and layers
/// must all be there.
async fn collect(
    content: &Content,
    name: &str,
    descriptor: &Descriptor,
    depth: usize,
    blobs: &mut Vec<Descriptor>,
) -> Result<(), Status> {
    if !manifest::is_index(&descriptor.media_type) && !manifest::is_manifest(&descriptor.media_type) {
        return Err(Status::failed_precondition(format!(
            "image {name}: {} has unsupported media type {:?}",
            descriptor.digest, descriptor.media_type
        )));
    }
    if depth > MAX_DEPTH {
        return Err(Status::failed_precondition(format!("image {name}: indexes nested more than {MAX_DEPTH} deep")));
    }
    crate::digest::validate(&descriptor.digest)
        .map_err(|p| Status::failed_precondition(format!("image {name}: digest {}: {p}", descriptor.digest)))?;
    let bytes = content.read_all(&descriptor.digest, MAX_MANIFEST_SIZE).await?;
    let (_, parsed) = manifest::parse(&descriptor.media_type, &bytes)
        .map_err(|p| Status::failed_precondition(format!("image {name}: {}: {p}", descriptor.digest)))?;
    add(blobs, descriptor);
    match parsed {
        Parsed::Index { manifests } => {
            for child in &manifests {
                if content.info(&child.digest).await?.is_none() {
                    continue;
                }
                let child =
                    Descriptor { annotations: HashMap::new(), platform: None, urls: Vec::new(), ..child.clone() };
                Box::pin(collect(content, name, &child, depth + 1, blobs)).await?;
            }
        }
        Parsed::Manifest { config, layers } => {
            for blob in std::iter::once(&config).chain(&layers) {
                crate::digest::validate(&blob.digest)
                    .map_err(|p| Status::failed_precondition(format!("image {name}: digest {}: {p}", blob.digest)))?;
                if content.info(&blob.digest).await?.is_none() {
                    return Err(Status::failed_precondition(format!(
                        "image {name} is incomplete: blob {} is not in the content store (pull the image again)",
                        blob.digest
                    )));
                }
                add(blobs, blob);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_padding() {
        let bytes = header("blobs/sha256/ab", Some(5)).unwrap();
        assert_eq!(bytes.len(), BLOCK);
        assert_eq!(&bytes[..15], b"blobs/sha256/ab");
        assert_eq!((padding(0), padding(1), padding(512), padding(513)), (0, 511, 0, 511));
        assert_eq!(ref_name("127.0.0.1:5000/app:1"), "1");
        assert_eq!(ref_name("busybox"), "latest");
    }
}
