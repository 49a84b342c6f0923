//! Pushes run by the image service: every blob an image reaches goes to the registry unless
//! it is there already (HEAD), mounted from another repository of the same registry when a
//! distribution-source label names one, or uploaded (monolithic for small blobs, chunked
//! PATCHes for big ones); then manifests bottom up, the image's target last, by its tag.
//! Pushed blobs get the `containerd.io/distribution.source.<host>` label a pull would give.
//!
//! Uploads continue rather than restart: a chunked upload whose PATCH fails asks the
//! registry how much it holds (GET on the upload session, its Range header) and goes on from
//! there; sessions of failed pushes are remembered (in this process) so pushing again
//! continues them too.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use berth_api::berth::image::v1::{BlobState, PushRequest};
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE};
use reqwest::{Method, StatusCode};
use tonic::Status;

use crate::content::Content;
use crate::manifest::{self, Descriptor, Parsed};
use crate::progress::{self, Progress};
use crate::pull::Puller;
use crate::reference::Reference;
use crate::registry::{self, Endpoint, MAX_MANIFEST_SIZE, Registry, RegistryError};
use crate::source_label;

/// Blobs up to this size go in one PUT; bigger ones in PATCHes of this size.
const UPLOAD_CHUNK: usize = 8 << 20;
const MAX_DEPTH: usize = manifest::MAX_INDEX_DEPTH;
/// Tries per blob upload for failures that may pass (a cut connection, a busy registry),
/// counted since the last try that got further.
const ATTEMPTS: u32 = 4;
const BACKOFF: Duration = Duration::from_millis(200);

/// What a push sends, in order: blobs, then manifests children first.
#[derive(Default)]
struct Plan {
    blobs: Vec<Descriptor>,
    manifests: Vec<(Descriptor, Vec<u8>)>,
}

/// Chunked upload sessions of blobs whose push failed, by registry, repository and digest:
/// pushing again continues them from the offset the registry reports (while it keeps them).
fn sessions() -> &'static Mutex<HashMap<SessionKey, String>> {
    static SESSIONS: OnceLock<Mutex<HashMap<SessionKey, String>>> = OnceLock::new();
    SESSIONS.get_or_init(Mutex::default)
}

/// Registry base URL, repository, digest.
type SessionKey = (String, String, String);

fn session_key(registry: &Registry, endpoint: &Endpoint, digest: &str) -> SessionKey {
    (endpoint.base(), registry.repository.clone(), digest.to_string())
}

/// The bytes of `0-END` in a Range header (distribution's upload status): END + 1.
fn received(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let range = headers.get(RANGE)?.to_str().ok()?;
    let end: u64 = range.trim().trim_start_matches("bytes=").split_once('-')?.1.parse().ok()?;
    // distribution says 0-0 for an empty upload as well as for one byte: assume nothing.
    Some(if end == 0 { 0 } else { end + 1 })
}

impl Registry {
    /// Whether the repository has blob `digest`.
    async fn has_blob(&self, endpoint: &Endpoint, digest: &str) -> Result<bool, RegistryError> {
        let response = self.send_body(endpoint, Method::HEAD, &self.url(endpoint, "blobs", digest), &[], None).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.failure(&format!("{}@{digest}", self.locator), response).await),
        }
    }

    /// An absolute upload URL from a Location header.
    fn location(&self, endpoint: &Endpoint, response: &reqwest::Response) -> Result<String, RegistryError> {
        let location =
            response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| {
                RegistryError::Protocol(format!("{}: upload answer without a Location", self.locator))
            })?;
        Ok(if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", endpoint.base())
        })
    }

    /// Starts an upload, mounting `digest` from `from` when given: None when it got mounted.
    async fn start_upload(
        &self,
        endpoint: &Endpoint,
        digest: &str,
        from: Option<&str>,
    ) -> Result<Option<String>, RegistryError> {
        let mut url = self.url(endpoint, "blobs", "uploads/");
        if let Some(from) = from {
            let separator = if url.contains('?') { '&' } else { '?' };
            url.push_str(&format!("{separator}mount={digest}&from={from}"));
        }
        let response =
            self.send_body(endpoint, Method::POST, &url, &[(CONTENT_LENGTH, "0".to_string())], Some(&[])).await?;
        match response.status() {
            StatusCode::CREATED if from.is_some() => Ok(None),
            StatusCode::ACCEPTED => Ok(Some(self.location(endpoint, &response)?)),
            _ => Err(self.failure(&format!("{}: starting the upload of {digest}", self.locator), response).await),
        }
    }

    /// How many bytes an upload session holds (GET on its URL), and its next URL; None when
    /// the registry no longer has it.
    async fn upload_status(&self, endpoint: &Endpoint, location: &str) -> Result<Option<(u64, String)>, RegistryError> {
        let response = self.send_body(endpoint, Method::GET, location, &[], None).await?;
        match response.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => {
                let offset = received(response.headers()).unwrap_or(0);
                let next = self.location(endpoint, &response).unwrap_or_else(|_| location.to_string());
                Ok(Some((offset, next)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.failure(&format!("{}: upload status", self.locator), response).await),
        }
    }

    async fn put_manifest(
        &self,
        endpoint: &Endpoint,
        object: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let headers = [(CONTENT_TYPE, media_type.to_string())];
        let url = self.url(endpoint, "manifests", object);
        let response = self.send_body(endpoint, Method::PUT, &url, &headers, Some(bytes)).await?;
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

/// Where a blob's bytes come from.
pub(crate) enum Source<'a> {
    Content(&'a Content),
    #[cfg(test)]
    Memory(&'a [u8]),
}

/// A blob's bytes from some offset on.
#[cfg_attr(test, allow(clippy::large_enum_variant))]
enum Reader {
    Content {
        stream: tonic::Streaming<berth_api::containerd::services::content::v1::ReadContentResponse>,
        skip: u64,
    },
    #[cfg(test)]
    Memory {
        data: Vec<u8>,
        at: usize,
    },
}

impl Source<'_> {
    async fn open(&self, digest: &str, offset: u64) -> Result<Reader, Status> {
        Ok(match self {
            Source::Content(content) => Reader::Content { stream: content.read(digest).await?, skip: offset },
            #[cfg(test)]
            Source::Memory(bytes) => Reader::Memory { data: bytes.to_vec(), at: offset as usize },
        })
    }
}

impl Reader {
    /// The next bytes; None at the end.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, Status> {
        match self {
            Reader::Content { stream, skip } => loop {
                let Some(message) = stream.message().await? else { return Ok(None) };
                let data = message.data;
                if (data.len() as u64) <= *skip {
                    *skip -= data.len() as u64;
                    continue;
                }
                let from = *skip as usize;
                *skip = 0;
                return Ok(Some(data[from..].to_vec()));
            },
            #[cfg(test)]
            Reader::Memory { data, at } => {
                if *at >= data.len() {
                    return Ok(None);
                }
                let end = data.len().min(*at + UPLOAD_CHUNK);
                let piece = data[*at..end].to_vec();
                *at = end;
                Ok(Some(piece))
            }
        }
    }
}

/// Whether a failed upload step is worth another try.
fn passing(err: &Status) -> bool {
    matches!(err.code(), tonic::Code::Unavailable | tonic::Code::Aborted)
}

/// Uploads blob `blob` from `source` into the session at `location`, starting at `offset`
/// (what the session holds already). A step that fails in a way that may pass asks the
/// registry how much it has (GET on the session) and continues from there.
pub(crate) async fn upload(
    registry: &Registry,
    endpoint: &Endpoint,
    blob: &Descriptor,
    source: &Source<'_>,
    mut location: String,
    mut offset: u64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), Status> {
    let key = session_key(registry, endpoint, &blob.digest);
    let total = u64::try_from(blob.size).unwrap_or(0);
    let mut failures = 0;
    loop {
        let result = upload_from(registry, endpoint, blob, source, &mut location, offset, total, progress).await;
        let err = match result {
            Ok(()) => {
                sessions().lock().map(|mut s| s.remove(&key)).ok();
                return Ok(());
            }
            Err(err) => err,
        };
        failures += 1;
        if !passing(&err) || failures >= ATTEMPTS {
            return Err(err);
        }
        tokio::time::sleep(BACKOFF * failures).await;
        let before = offset;
        (offset, location) = match registry.upload_status(endpoint, &location).await {
            Ok(Some((held, next))) if held <= total => (held, next),
            // The session is gone (or makes no sense): start over.
            Ok(_) | Err(_) => match registry.start_upload(endpoint, &blob.digest, None).await? {
                Some(fresh) => (0, fresh),
                None => return Ok(()),
            },
        };
        tracing::info!(digest = blob.digest, offset, "upload cut: continuing from what the registry holds");
        if offset > before {
            failures = 0;
        }
    }
}

/// One try: PATCHes from `offset` (or one PUT for a small blob sent whole), then the PUT
/// that closes the session. Remembers the session after each chunk.
#[allow(clippy::too_many_arguments)]
async fn upload_from(
    registry: &Registry,
    endpoint: &Endpoint,
    blob: &Descriptor,
    source: &Source<'_>,
    location: &mut String,
    mut offset: u64,
    total: u64,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), Status> {
    let what = format!("{}@{}", registry.locator, blob.digest);
    let key = session_key(registry, endpoint, &blob.digest);
    let mut reader = source.open(&blob.digest, offset).await?;
    let mut buffer: Vec<u8> = Vec::new();
    let whole = offset == 0 && total <= UPLOAD_CHUNK as u64;
    loop {
        let data = reader.next().await?;
        let last = data.is_none();
        if let Some(data) = data {
            buffer.extend_from_slice(&data);
        }
        if last && whole {
            let headers = [(CONTENT_TYPE, "application/octet-stream".to_string())];
            let url = with_digest(location, &blob.digest);
            let response = registry.send_body(endpoint, Method::PUT, &url, &headers, Some(&buffer)).await?;
            if !response.status().is_success() {
                return Err(registry.failure(&what, response).await.into());
            }
            progress(total);
            return Ok(());
        }
        if !whole && (buffer.len() >= UPLOAD_CHUNK || (last && !buffer.is_empty())) {
            let end = offset + buffer.len() as u64 - 1;
            let headers =
                [(CONTENT_TYPE, "application/octet-stream".to_string()), (CONTENT_RANGE, format!("{offset}-{end}"))];
            let response = registry.send_body(endpoint, Method::PATCH, location, &headers, Some(&buffer)).await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(registry.failure(&what, response).await.into());
            }
            *location = registry.location(endpoint, &response)?;
            offset += buffer.len() as u64;
            buffer.clear();
            sessions().lock().map(|mut s| s.insert(key.clone(), location.clone())).ok();
            progress(offset);
        }
        if last {
            let url = with_digest(location, &blob.digest);
            let response =
                registry.send_body(endpoint, Method::PUT, &url, &[(CONTENT_LENGTH, "0".into())], Some(&[])).await?;
            if !response.status().is_success() {
                return Err(registry.failure(&what, response).await.into());
            }
            return Ok(());
        }
    }
}

/// Where an upload that an earlier push of `blob` left half done stands: the bytes the
/// registry holds and the session's URL; None when there is none (or nothing in it).
async fn earlier_session(registry: &Registry, endpoint: &Endpoint, blob: &Descriptor) -> Option<(u64, String)> {
    let key = session_key(registry, endpoint, &blob.digest);
    let location = sessions().lock().ok()?.get(&key).cloned()?;
    match registry.upload_status(endpoint, &location).await {
        Ok(Some((held, next))) if held > 0 && held <= u64::try_from(blob.size).unwrap_or(0) => Some((held, next)),
        _ => {
            sessions().lock().map(|mut s| s.remove(&key)).ok();
            None
        }
    }
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
            hosts: Some(self.hosts.clone()),
        };
        let registry = Registry::new(&remote, &options)?;
        let endpoint = registry.pusher()?;
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
        let source_key = source_label::key(&remote);
        for blob in &plan.blobs {
            self.push_blob(&content, &registry, endpoint, blob, &source_key, &remote, &progress).await?;
        }
        for (descriptor, bytes) in &plan.manifests {
            let object = if descriptor.digest == root.digest { remote.object() } else { descriptor.digest.as_str() };
            registry.put_manifest(endpoint, object, &descriptor.media_type, bytes).await?;
            progress.blob(descriptor, BlobState::Done, descriptor.size, 0);
        }
        // As after a pull: the registry and repository now hold these blobs, so later pushes
        // to the same registry can mount them instead of uploading.
        let pushed = plan.blobs.iter().map(|b| &b.digest).chain(plan.manifests.iter().map(|(d, _)| &d.digest));
        for digest in pushed {
            let existing = content.info(digest).await?.unwrap_or_default();
            let value = source_label::with_repository(existing.get(&source_key), &remote.repository);
            if existing.get(&source_key) != Some(&value) {
                content.set_labels(digest, [(source_key.clone(), value)].into()).await?;
            }
        }
        tracing::info!(namespace, name = request.name, remote = %remote, "pushed");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn push_blob(
        &self,
        content: &Content,
        registry: &Registry,
        endpoint: &Endpoint,
        blob: &Descriptor,
        source_key: &str,
        remote: &Reference,
        progress: &Progress,
    ) -> Result<(), Status> {
        if registry.has_blob(endpoint, &blob.digest).await? {
            progress.blob(blob, BlobState::Skipped, blob.size, 0);
            return Ok(());
        }
        // An upload an earlier push left half done continues where the registry has it.
        let (offset, location) = match earlier_session(registry, endpoint, blob).await {
            Some(resumed) => resumed,
            None => {
                let labels = content.info(&blob.digest).await?.unwrap_or_default();
                let sources: Vec<&str> = labels
                    .get(source_key)
                    .map(|s| s.split(',').filter(|r| !r.is_empty() && *r != remote.repository).collect())
                    .unwrap_or_default();
                // A registry that cannot mount answers with a plain upload to use instead.
                let from = sources.first().copied();
                let Some(location) = registry.start_upload(endpoint, &blob.digest, from).await? else {
                    progress.blob(blob, BlobState::Done, blob.size, 0);
                    return Ok(());
                };
                (0, location)
            }
        };
        let mut bytes = progress::Bytes::start(progress, blob, offset);
        upload(registry, endpoint, blob, &Source::Content(content), location, offset, &mut |at| bytes.at(at)).await?;
        progress.blob(blob, BlobState::Done, blob.size, offset as i64);
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

    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fake registry's one upload session.
    #[derive(Default)]
    struct Upload {
        held: Vec<u8>,
        patches: Vec<(u64, usize)>,
        statuses: usize,
        cuts_left: usize,
        /// Refuse the PATCH with this number (1-based) once, as a registry error would.
        refuse_at: usize,
        committed: Option<String>,
    }

    /// Reads one HTTP/1.1 request: request line, headers (lowercased), body.
    async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<(String, Vec<(String, String)>, Vec<u8>)> {
        let mut raw = Vec::new();
        let mut buffer = vec![0u8; 1 << 16];
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => raw.extend_from_slice(&buffer[..n]),
            }
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let mut lines = head.split("\r\n");
        let line = lines.next()?.to_string();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize =
            headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let mut body = raw[end + 4..].to_vec();
        while body.len() < length {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buffer[..n]),
            }
        }
        Some((line, headers, body))
    }

    /// A registry that takes one chunked upload and cuts the connection of the first
    /// `cuts` PATCHes after keeping 1 MiB of their bytes, as a cut upload leaves it.
    async fn fake_registry(cuts: usize) -> (String, Arc<std::sync::Mutex<Upload>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(std::sync::Mutex::new(Upload { cuts_left: cuts, ..Default::default() }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let Some((line, headers, body)) = read_request(&mut socket).await else { return };
                    let mut parts = line.split_whitespace();
                    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
                    let answer = {
                        let mut upload = state.lock().unwrap();
                        let range = |held: usize| format!("Range: 0-{}", held.saturating_sub(1));
                        match method {
                            "POST" => "HTTP/1.1 202 Accepted\r\nLocation: /v2/team/app/blobs/uploads/u1".to_string(),
                            "GET" => {
                                upload.statuses += 1;
                                format!(
                                    "HTTP/1.1 204 No Content\r\nLocation: /v2/team/app/blobs/uploads/u1\r\n{}",
                                    range(upload.held.len())
                                )
                            }
                            "PATCH" => {
                                let start: u64 = headers
                                    .iter()
                                    .find(|(n, _)| n == "content-range")
                                    .and_then(|(_, v)| v.split('-').next()?.parse().ok())
                                    .unwrap();
                                upload.patches.push((start, body.len()));
                                if upload.patches.len() == upload.refuse_at {
                                    upload.refuse_at = 0;
                                    "HTTP/1.1 400 Bad Request".to_string()
                                } else if start as usize != upload.held.len() {
                                    "HTTP/1.1 416 Range Not Satisfiable".to_string()
                                } else if upload.cuts_left > 0 {
                                    upload.cuts_left -= 1;
                                    upload.held.extend_from_slice(&body[..1 << 20]);
                                    // The connection drops without an answer.
                                    return;
                                } else {
                                    upload.held.extend_from_slice(&body);
                                    format!(
                                        "HTTP/1.1 202 Accepted\r\nLocation: /v2/team/app/blobs/uploads/u1\r\n{}",
                                        range(upload.held.len())
                                    )
                                }
                            }
                            "PUT" => {
                                upload.held.extend_from_slice(&body);
                                upload.committed = path.split("digest=").nth(1).map(str::to_string);
                                "HTTP/1.1 201 Created".to_string()
                            }
                            _ => "HTTP/1.1 405 Method Not Allowed".to_string(),
                        }
                    };
                    let response = format!("{answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        (addr, state)
    }

    fn blob(data: &[u8]) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            digest: crate::digest::sha256(data),
            size: data.len() as i64,
            urls: Vec::new(),
            annotations: HashMap::new(),
            platform: None,
        }
    }

    #[tokio::test]
    async fn a_cut_chunked_upload_continues_from_what_the_registry_holds() {
        let (addr, state) = fake_registry(2).await;
        let reference = Reference::parse(&format!("{addr}/team/app:1")).unwrap();
        let options = registry::Options { plain_http: true, ..Default::default() };
        let registry = Registry::new(&reference, &options).unwrap();
        let endpoint = registry.pusher().unwrap();
        let data: Vec<u8> = (0..(UPLOAD_CHUNK * 2 + 12345)).map(|i| (i % 251) as u8).collect();
        let descriptor = blob(&data);
        let location = registry.start_upload(endpoint, &descriptor.digest, None).await.unwrap().unwrap();
        let mut seen = Vec::new();
        upload(&registry, endpoint, &descriptor, &Source::Memory(&data), location, 0, &mut |at| seen.push(at))
            .await
            .unwrap();
        let upload = state.lock().unwrap();
        assert!(upload.held == data, "the registry holds the blob, each byte once");
        assert_eq!(upload.committed.as_deref(), Some(descriptor.digest.as_str()));
        assert_eq!(upload.statuses, 2, "asked twice how much it holds");
        // Cut after 1 MiB of the first chunk, then after 1 MiB of the rest: each retry starts
        // where the registry's Range said.
        let chunk = UPLOAD_CHUNK as u64;
        let mib = 1u64 << 20;
        assert_eq!(upload.patches[0], (0, UPLOAD_CHUNK));
        assert_eq!(upload.patches[1].0, mib);
        assert_eq!(upload.patches[2].0, 2 * mib);
        assert!(upload.patches.iter().skip(3).all(|(start, _)| *start >= 2 * mib));
        assert_eq!(seen.last().copied(), Some(data.len() as u64));
        assert!(upload.patches.iter().all(|(_, len)| *len as u64 <= chunk));
    }

    #[tokio::test]
    async fn a_push_again_continues_the_session_a_failed_push_left() {
        let (addr, state) = fake_registry(0).await;
        state.lock().unwrap().refuse_at = 2;
        let reference = Reference::parse(&format!("{addr}/team/app:1")).unwrap();
        let options = registry::Options { plain_http: true, ..Default::default() };
        let registry = Registry::new(&reference, &options).unwrap();
        let endpoint = registry.pusher().unwrap();
        let data: Vec<u8> = (0..(UPLOAD_CHUNK * 2 + 7)).map(|i| (i % 241) as u8).collect();
        let descriptor = blob(&data);
        assert!(earlier_session(&registry, endpoint, &descriptor).await.is_none());
        let location = registry.start_upload(endpoint, &descriptor.digest, None).await.unwrap().unwrap();
        let failed = upload(&registry, endpoint, &descriptor, &Source::Memory(&data), location, 0, &mut |_| {}).await;
        assert_eq!(failed.unwrap_err().code(), tonic::Code::FailedPrecondition, "a 400 is not tried again");
        // The next push finds the session and what it holds: the first chunk.
        let (held, location) = earlier_session(&registry, endpoint, &descriptor).await.unwrap();
        assert_eq!(held, UPLOAD_CHUNK as u64);
        upload(&registry, endpoint, &descriptor, &Source::Memory(&data), location, held, &mut |_| {}).await.unwrap();
        assert!(earlier_session(&registry, endpoint, &descriptor).await.is_none(), "forgotten once done");
        let upload = state.lock().unwrap();
        assert!(upload.held == data);
        let starts: Vec<u64> = upload.patches.iter().map(|(start, _)| *start).collect();
        assert_eq!(starts, [0, UPLOAD_CHUNK as u64, UPLOAD_CHUNK as u64, 2 * UPLOAD_CHUNK as u64]);
    }

    #[test]
    fn ranges_say_how_much_is_held() {
        let headers = |range: &str| {
            let mut map = reqwest::header::HeaderMap::new();
            map.insert(RANGE, range.parse().unwrap());
            map
        };
        assert_eq!(received(&headers("0-99")), Some(100));
        assert_eq!(received(&headers("0-0")), Some(0));
        assert_eq!(received(&headers("bytes=0-9")), Some(10));
        assert_eq!(received(&reqwest::header::HeaderMap::new()), None);
    }
}
