//! Pushes run by the image service: every blob an image reaches goes to the registry unless
//! it is there already (HEAD), mounted from another repository of the same registry when a
//! distribution-source label names one, or uploaded (monolithic for small blobs, chunked
//! PATCHes for big ones); then manifests bottom up, the image's target last, by its tag.

use std::collections::HashMap;

use berth_api::berth::image::v1::{BlobState, PushRequest};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION};
use reqwest::{Method, StatusCode};
use tonic::Status;

use crate::content::Content;
use crate::manifest::{self, Descriptor, Parsed};
use crate::progress::{self, Progress};
use crate::pull::Puller;
use crate::reference::Reference;
use crate::registry::{self, MAX_MANIFEST_SIZE, Registry, RegistryError};

/// Blobs up to this size go in one PUT; bigger ones in PATCHes of this size.
const UPLOAD_CHUNK: usize = 8 << 20;
const SOURCE_LABEL: &str = "containerd.io/distribution.source.";
const MAX_DEPTH: usize = manifest::MAX_INDEX_DEPTH;

/// What a push sends, in order: blobs, then manifests children first.
#[derive(Default)]
struct Plan {
    blobs: Vec<Descriptor>,
    manifests: Vec<(Descriptor, Vec<u8>)>,
}

impl Registry {
    /// Whether the repository has blob `digest`.
    async fn has_blob(&self, digest: &str) -> Result<bool, RegistryError> {
        let response = self.send_body(Method::HEAD, &self.url("blobs", digest), &[], None).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.failure(&format!("{}@{digest}", self.locator), response).await),
        }
    }

    /// An absolute upload URL from a Location header.
    fn location(&self, response: &reqwest::Response) -> Result<String, RegistryError> {
        let location =
            response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                RegistryError::Protocol(format!("{}: upload answer without a Location", self.locator))
            })?;
        Ok(if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        })
    }

    /// Starts an upload, mounting `digest` from `from` when given: None when it got mounted.
    async fn start_upload(&self, digest: &str, from: Option<&str>) -> Result<Option<String>, RegistryError> {
        let mut url = format!("{}/v2/{}/blobs/uploads/", self.base, self.repository);
        if let Some(from) = from {
            url.push_str(&format!("?mount={digest}&from={from}"));
        }
        let response = self.send_body(Method::POST, &url, &[(CONTENT_LENGTH, "0".to_string())], Some(&[])).await?;
        match response.status() {
            StatusCode::CREATED if from.is_some() => Ok(None),
            StatusCode::ACCEPTED => Ok(Some(self.location(&response)?)),
            _ => Err(self.failure(&format!("{}: starting the upload of {digest}", self.locator), response).await),
        }
    }

    async fn put_manifest(&self, object: &str, media_type: &str, bytes: &[u8]) -> Result<(), RegistryError> {
        let headers = [(CONTENT_TYPE, media_type.to_string())];
        let response = self.send_body(Method::PUT, &self.url("manifests", object), &headers, Some(bytes)).await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(self.failure(&format!("{}: putting manifest {object}", self.locator), response).await)
    }
}

/// `upload` with `digest` added to its query.
fn with_digest(upload: &str, digest: &str) -> String {
    let separator = if upload.contains('?') { '&' } else { '?' };
    format!("{upload}{separator}digest={digest}")
}

impl Puller {
    /// Pushes image `request.name` of `namespace`; returns the pushed reference and digest.
    pub async fn push(&self, namespace: &str, request: PushRequest, progress: Progress) -> Result<(), Status> {
        let channel = self.content.clone().ok_or_else(|| {
            Status::failed_precondition("berth-image runs without a content service (--peer content=...)")
        })?;
        let image = self.images.get(namespace, &request.name).await?;
        let remote_text = if request.remote.is_empty() { request.name.clone() } else { request.remote.clone() };
        let remote = Reference::parse(&remote_text).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let options = registry::Options {
            plain_http: request.plain_http,
            skip_verify: request.skip_verify,
            credentials: request.credentials.map(|c| (c.username, c.secret)),
        };
        let registry = Registry::new(&remote, &options)?;
        let content = Content::new(channel, namespace, None);
        let target = image.target.unwrap_or_default();
        let root = Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            size: target.size,
            urls: Vec::new(),
            annotations: HashMap::new(),
            platform: None,
        };
        let mut plan = Plan::default();
        plan_push(&content, &request.name, &root, 0, &mut plan).await?;
        progress.resolved(&remote.to_string(), &root);
        for blob in &plan.blobs {
            progress.blob(blob, BlobState::Waiting, 0, 0);
        }
        let source_key = format!("{SOURCE_LABEL}{}", remote.hostname());
        for blob in &plan.blobs {
            self.push_blob(&content, &registry, blob, &source_key, &remote, &progress).await?;
        }
        for (descriptor, bytes) in &plan.manifests {
            let object = if descriptor.digest == root.digest { remote.object() } else { descriptor.digest.as_str() };
            registry.put_manifest(object, &descriptor.media_type, bytes).await?;
            progress.blob(descriptor, BlobState::Done, descriptor.size, 0);
        }
        tracing::info!(namespace, name = request.name, remote = %remote, "pushed");
        Ok(())
    }

    async fn push_blob(
        &self,
        content: &Content,
        registry: &Registry,
        blob: &Descriptor,
        source_key: &str,
        remote: &Reference,
        progress: &Progress,
    ) -> Result<(), Status> {
        if registry.has_blob(&blob.digest).await? {
            progress.blob(blob, BlobState::Skipped, blob.size, 0);
            return Ok(());
        }
        let labels = content.info(&blob.digest).await?.unwrap_or_default();
        let sources: Vec<&str> = labels
            .get(source_key)
            .map(|s| s.split(',').filter(|r| !r.is_empty() && *r != remote.repository).collect())
            .unwrap_or_default();
        // A registry that cannot mount answers with a plain upload to use instead.
        let from = sources.first().copied();
        let Some(mut location) = registry.start_upload(&blob.digest, from).await? else {
            progress.blob(blob, BlobState::Done, blob.size, 0);
            return Ok(());
        };
        let mut bytes = progress::Bytes::start(progress, blob, 0);
        let mut stream = content.read(&blob.digest).await?;
        let mut buffer: Vec<u8> = Vec::new();
        let mut sent = 0u64;
        let what = format!("{}@{}", registry.locator, blob.digest);
        // Small blobs: one PUT. Big ones: PATCH chunks, then a PUT that closes the upload.
        loop {
            let message = stream.message().await?;
            if let Some(message) = &message {
                buffer.extend_from_slice(&message.data);
            }
            let last = message.is_none();
            if last && sent == 0 {
                let response = registry
                    .send_body(
                        Method::PUT,
                        &with_digest(&location, &blob.digest),
                        &[(CONTENT_TYPE, "application/octet-stream".into())],
                        Some(&buffer),
                    )
                    .await?;
                if !response.status().is_success() {
                    return Err(registry.failure(&what, response).await.into());
                }
                break;
            }
            if buffer.len() >= UPLOAD_CHUNK || (last && !buffer.is_empty()) {
                let end = sent + buffer.len() as u64 - 1;
                let headers =
                    [(CONTENT_TYPE, "application/octet-stream".to_string()), (CONTENT_RANGE, format!("{sent}-{end}"))];
                let response = registry.send_body(Method::PATCH, &location, &headers, Some(&buffer)).await?;
                if response.status() != StatusCode::ACCEPTED {
                    return Err(registry.failure(&what, response).await.into());
                }
                location = registry.location(&response)?;
                sent += buffer.len() as u64;
                buffer.clear();
                bytes.at(sent);
            }
            if last {
                let response = registry
                    .send_body(
                        Method::PUT,
                        &with_digest(&location, &blob.digest),
                        &[(CONTENT_LENGTH, "0".into())],
                        Some(&[]),
                    )
                    .await?;
                if !response.status().is_success() {
                    return Err(registry.failure(&what, response).await.into());
                }
                break;
            }
        }
        progress.blob(blob, BlobState::Done, blob.size, 0);
        Ok(())
    }
}

/// Everything `descriptor` reaches that the content store has, in push order.
async fn plan_push(
    content: &Content,
    name: &str,
    descriptor: &Descriptor,
    depth: usize,
    plan: &mut Plan,
) -> Result<(), Status> {
    if depth > MAX_DEPTH {
        return Err(Status::failed_precondition(format!("image {name}: indexes nested more than {MAX_DEPTH} deep")));
    }
    if plan.manifests.iter().any(|(d, _)| d.digest == descriptor.digest) {
        return Ok(());
    }
    let bytes = content.read_all(&descriptor.digest, MAX_MANIFEST_SIZE).await?;
    let (_, parsed) = manifest::parse(&descriptor.media_type, &bytes)
        .map_err(|p| Status::failed_precondition(format!("image {name}: {}: {p}", descriptor.digest)))?;
    match &parsed {
        Parsed::Index { manifests } => {
            for child in manifests {
                if content.info(&child.digest).await?.is_none() {
                    return Err(Status::failed_precondition(format!(
                        "image {name}: manifest {} of its index is not in the content store \
                         (pull it with --all-platforms before pushing)",
                        child.digest
                    )));
                }
                let child =
                    Descriptor { annotations: HashMap::new(), platform: None, urls: Vec::new(), ..child.clone() };
                Box::pin(plan_push(content, name, &child, depth + 1, plan)).await?;
            }
        }
        Parsed::Manifest { config, layers } => {
            for blob in std::iter::once(config).chain(layers) {
                if content.info(&blob.digest).await?.is_none() {
                    return Err(Status::failed_precondition(format!(
                        "image {name} is incomplete: blob {} is not in the content store (pull the image again)",
                        blob.digest
                    )));
                }
                if !plan.blobs.iter().any(|b| b.digest == blob.digest) {
                    plan.blobs.push(blob.clone());
                }
            }
        }
    }
    plan.manifests.push((descriptor.clone(), bytes));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_join_the_upload_query() {
        assert_eq!(
            with_digest("http://r/v2/a/blobs/uploads/u1", "sha256:ab"),
            "http://r/v2/a/blobs/uploads/u1?digest=sha256:ab"
        );
        assert_eq!(with_digest("http://r/u?_state=x", "sha256:ab"), "http://r/u?_state=x&digest=sha256:ab");
    }
}
