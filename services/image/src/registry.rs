//! A small client for the registry HTTP API v2 (the OCI distribution spec): manifests by tag
//! or digest, blobs with HTTP ranges, and the two ways registries ask for credentials
//! (basic, and bearer tokens from the realm a 401 names).
//!
//! Where requests go comes from the registry's settings ([`crate::hosts`]): mirrors first
//! (each only for what its capabilities allow), the registry itself last, each with its own
//! TLS trust (CA files, client certificates, skip_verify). A loopback registry without
//! settings is tried over HTTPS and spoken to in plain HTTP when it does not speak TLS.
//!
//! Credentials go only to the registry's own host and its token realm: never to a mirror on
//! another host, redirects to another host (blob storage) drop the Authorization header, and
//! descriptors' foreign `urls` are never fetched.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderName, HeaderValue, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::hosts::{self, Capabilities, HostsDir};
use crate::reference::Reference;

/// Largest manifest or index accepted (containerd's limit).
pub const MAX_MANIFEST_SIZE: usize = 4 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A read that stalls this long fails (and the fetch resumes from where it got to).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Every manifest type berth understands, for Accept headers.
pub const MANIFEST_TYPES: &[&str] = &[
    crate::manifest::OCI_INDEX,
    crate::manifest::OCI_MANIFEST,
    crate::manifest::DOCKER_LIST,
    crate::manifest::DOCKER_MANIFEST,
];

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("{0}: not found")]
    NotFound(String),
    /// The registry could not be reached, or answered that it cannot serve now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Denied(String),
    /// The registry answered something berth cannot use.
    #[error("{0}")]
    Protocol(String),
    /// The registry's TLS certificate is not trusted.
    #[error("{0}")]
    Untrusted(String),
    /// The registry settings (hosts.toml and the files it names) cannot be used.
    #[error("{0}")]
    Settings(String),
}

impl From<RegistryError> for tonic::Status {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::NotFound(_) => tonic::Status::not_found(err.to_string()),
            RegistryError::Unavailable(_) => tonic::Status::unavailable(err.to_string()),
            RegistryError::Unauthenticated(_) => tonic::Status::unauthenticated(err.to_string()),
            RegistryError::Denied(_) => tonic::Status::permission_denied(err.to_string()),
            RegistryError::Protocol(_) | RegistryError::Untrusted(_) | RegistryError::Settings(_) => {
                tonic::Status::failed_precondition(err.to_string())
            }
        }
    }
}

type Result<T> = std::result::Result<T, RegistryError>;

/// How to reach one registry.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Speak HTTP instead of HTTPS (where the settings do not name a scheme).
    pub plain_http: bool,
    /// Accept any TLS certificate (a registry with a self-signed one).
    pub skip_verify: bool,
    /// Username and password (or identity token, with an empty username).
    pub credentials: Option<(String, String)>,
    /// Per-registry settings (hosts.toml); None: every registry by its defaults.
    pub hosts: Option<Arc<HostsDir>>,
}

/// A manifest or index as the registry returned it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub media_type: String,
    pub digest: String,
    pub bytes: Vec<u8>,
}

/// A blob download under way.
pub struct BlobBody {
    response: reqwest::Response,
    /// Offset of the first byte this response carries: the asked offset when the registry
    /// honoured the range, 0 when it sent the whole blob.
    pub start: u64,
}

impl BlobBody {
    /// The next piece of the blob; None at its end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        self.response.chunk().await.map_err(|e| RegistryError::Unavailable(format!("reading blob: {}", describe(&e))))
    }
}

/// One place that serves the repository: the registry itself or a mirror (hosts.toml).
pub(crate) struct Endpoint {
    http: reqwest::Client,
    scheme: &'static str,
    /// `host[:port]`.
    host: String,
    /// API root path, `/v2` unless the settings override it.
    path: String,
    /// The namespace, asked of a mirror as `?ns=` (containerd does the same).
    ns: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
    capabilities: Capabilities,
    /// Whether the credentials go here: the registry's own host, never a mirror elsewhere.
    credentials: bool,
    /// Switch to plain HTTP when the host does not speak TLS (loopback without settings).
    fallback: bool,
    plain: AtomicBool,
    /// The Authorization header that last worked (a bearer token or basic credentials).
    authorization: Mutex<Option<HeaderValue>>,
    /// Where settings for this registry are read, for errors that ask for some.
    settings: String,
}

impl Endpoint {
    /// `https://host` (or `http://`).
    pub(crate) fn base(&self) -> String {
        let scheme = if self.plain.load(Ordering::Relaxed) { "http" } else { self.scheme };
        format!("{scheme}://{}", self.host)
    }

    /// The API root, `https://host/v2`.
    fn root(&self) -> String {
        format!("{}{}", self.base(), self.path)
    }

    /// `url` with the endpoint's query (`ns=` for mirrors) added.
    pub(crate) fn with_query(&self, url: String) -> String {
        match &self.ns {
            Some(ns) => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}ns={ns}")
            }
            None => url,
        }
    }
}

/// The registry of one reference's repository, through the endpoints its settings name.
pub struct Registry {
    endpoints: Vec<Endpoint>,
    pub(crate) repository: String,
    /// How references are named in errors.
    pub(crate) locator: String,
    credentials: Option<(String, String)>,
}

/// Error text of a reqwest error with its causes (reqwest's Display hides them).
fn describe(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Whether a TLS connection failed because the other side does not speak TLS.
fn not_tls(text: &str) -> bool {
    text.contains("InvalidContentType") || text.contains("corrupt message") || text.contains("HTTP response")
}

fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name == "localhost" || name == "::1" || name.starts_with("127.")
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| RegistryError::Settings(format!("{what} {}: cannot read it: {e}", path.display())))
}

/// An HTTP client for `endpoint`'s TLS settings.
fn client(endpoint: &hosts::Endpoint, skip_verify: bool) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(endpoint.dial_timeout.unwrap_or(CONNECT_TIMEOUT))
        .read_timeout(READ_TIMEOUT)
        .tls_danger_accept_invalid_certs(skip_verify || endpoint.skip_verify)
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
    let mut roots = Vec::new();
    for path in &endpoint.ca {
        let pem = read_file(path, "CA certificate")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            RegistryError::Settings(format!(
                "CA certificate {}: not PEM certificates: {}",
                path.display(),
                describe(&e)
            ))
        })?;
        roots.extend(certs);
    }
    if !roots.is_empty() {
        builder = builder.tls_certs_merge(roots);
    }
    // rustls takes one client identity: the first that reads.
    if let Some((cert, key)) = endpoint.client.first() {
        let mut pem = read_file(cert, "client certificate")?;
        if let Some(key) = key {
            pem.push(b'\n');
            pem.extend(read_file(key, "client key")?);
        }
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            RegistryError::Settings(format!(
                "client certificate {}: not a PEM certificate with its key: {}",
                cert.display(),
                describe(&e)
            ))
        })?;
        builder = builder.identity(identity);
    }
    builder.build().map_err(|e| RegistryError::Settings(format!("http client: {}", describe(&e))))
}

impl Registry {
    pub fn new(reference: &Reference, options: &Options) -> Result<Registry> {
        crate::tls::install_provider();
        let default_hosts = HostsDir::default();
        let hosts = options.hosts.as_deref().unwrap_or(&default_hosts);
        let config = hosts
            .config(&reference.domain, reference.registry_host())
            .map_err(|e| RegistryError::Settings(e.to_string()))?;
        let settings = match &config.source {
            Some(dir) => dir.join("hosts.toml").display().to_string(),
            None => hosts.suggested(&reference.domain).display().to_string(),
        };
        let own = [reference.registry_host(), reference.domain.as_str()];
        let mut endpoints = Vec::new();
        for endpoint in &config.endpoints {
            let plain = if endpoint.scheme_given { endpoint.scheme == "http" } else { options.plain_http };
            let headers = endpoint
                .headers
                .iter()
                .map(|(text, value)| {
                    let name = HeaderName::from_bytes(text.as_bytes());
                    let value = HeaderValue::from_str(value);
                    match (name, value) {
                        (Ok(name), Ok(value)) => Ok((name, value)),
                        _ => Err(RegistryError::Settings(format!("{settings}: header {text:?} is not valid in HTTP"))),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            endpoints.push(Endpoint {
                http: client(endpoint, options.skip_verify)?,
                scheme: if plain { "http" } else { "https" },
                host: endpoint.host.clone(),
                path: endpoint.path.clone(),
                ns: (!own.contains(&endpoint.host.as_str())).then(|| reference.domain.clone()),
                headers,
                capabilities: endpoint.capabilities,
                credentials: endpoint.server || own.contains(&endpoint.host.as_str()),
                fallback: config.source.is_none() && !plain && is_loopback(&endpoint.host),
                plain: AtomicBool::new(false),
                authorization: Mutex::new(None),
                settings: settings.clone(),
            });
        }
        Ok(Registry {
            endpoints,
            repository: reference.repository.clone(),
            locator: reference.locator(),
            credentials: options.credentials.clone(),
        })
    }

    /// The endpoints that may do `what`, in the order to try them.
    fn able(&self, what: &str, can: impl Fn(&Capabilities) -> bool) -> Result<Vec<&Endpoint>> {
        let able: Vec<&Endpoint> = self.endpoints.iter().filter(|e| can(&e.capabilities)).collect();
        if able.is_empty() {
            let settings = self.endpoints.first().map(|e| e.settings.as_str()).unwrap_or_default();
            return Err(RegistryError::Settings(format!(
                "{}: no host in {settings} has the {what:?} capability",
                self.locator
            )));
        }
        Ok(able)
    }

    /// The endpoint pushes go to: the first with the push capability.
    pub(crate) fn pusher(&self) -> Result<&Endpoint> {
        Ok(self.able("push", |c| c.push)?[0])
    }

    pub(crate) fn url(&self, endpoint: &Endpoint, kind: &str, object: &str) -> String {
        endpoint.with_query(format!("{}/{}/{kind}/{object}", endpoint.root(), self.repository))
    }

    /// Sends a request, answering one authentication challenge if the registry makes one.
    async fn send(
        &self,
        endpoint: &Endpoint,
        method: Method,
        url: &str,
        headers: &[(reqwest::header::HeaderName, String)],
    ) -> Result<reqwest::Response> {
        self.send_body(endpoint, method, url, headers, None).await
    }

    /// Sends one request, switching a loopback endpoint to plain HTTP when it does not
    /// speak TLS (and URLs made before the switch with it).
    async fn request(
        &self,
        endpoint: &Endpoint,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response> {
        let current = |url: &str| {
            let secure = format!("https://{}", endpoint.host);
            match url.strip_prefix(&secure) {
                Some(rest) if endpoint.plain.load(Ordering::Relaxed) => format!("http://{}{rest}", endpoint.host),
                _ => url.to_string(),
            }
        };
        match build(&current(url)).send().await {
            Ok(response) => Ok(response),
            Err(err) if endpoint.fallback && !endpoint.plain.load(Ordering::Relaxed) && not_tls(&describe(&err)) => {
                endpoint.plain.store(true, Ordering::Relaxed);
                tracing::debug!(host = endpoint.host, "no TLS at a loopback registry: speaking plain HTTP");
                build(&current(url)).send().await.map_err(|e| self.unreachable(endpoint, &e))
            }
            Err(err) => Err(self.unreachable(endpoint, &err)),
        }
    }

    /// [`Registry::send`] with a body (sent again when a challenge is answered).
    pub(crate) async fn send_body(
        &self,
        endpoint: &Endpoint,
        method: Method,
        url: &str,
        headers: &[(reqwest::header::HeaderName, String)],
        body: Option<&[u8]>,
    ) -> Result<reqwest::Response> {
        let cached = endpoint.authorization.lock().await.clone();
        let build = |authorization: Option<HeaderValue>| {
            let method = method.clone();
            move |url: &str| {
                let mut request = endpoint.http.request(method.clone(), url);
                for (name, value) in &endpoint.headers {
                    request = request.header(name, value);
                }
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                if let Some(body) = body {
                    request = request.body(body.to_vec());
                }
                if let Some(value) = &authorization {
                    request = request.header(AUTHORIZATION, value.clone());
                }
                request
            }
        };
        let response = self.request(endpoint, build(cached), url).await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(Challenge::parse)
            .ok_or_else(|| {
                RegistryError::Unauthenticated(format!("{}: 401 without a WWW-Authenticate challenge", self.locator))
            })?;
        let authorization = self.authorize(endpoint, &challenge).await?;
        let response = self.request(endpoint, build(Some(authorization.clone())), url).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            let with = if self.credentials_for(endpoint).is_some() {
                "with the credentials given"
            } else {
                "without credentials"
            };
            return Err(RegistryError::Unauthenticated(format!(
                "{}: the registry refused access {with}",
                self.locator
            )));
        }
        *endpoint.authorization.lock().await = Some(authorization);
        Ok(response)
    }

    fn credentials_for(&self, endpoint: &Endpoint) -> Option<&(String, String)> {
        self.credentials.as_ref().filter(|_| endpoint.credentials)
    }

    pub(crate) fn unreachable(&self, endpoint: &Endpoint, err: &reqwest::Error) -> RegistryError {
        let text = describe(err);
        let base = endpoint.base();
        if text.contains("certificate") && !text.contains("client certificate") {
            return RegistryError::Untrusted(format!(
                "registry {base}: its TLS certificate is not trusted ({text}): give berth-image the registry's CA \
                 as `ca = \"/path/to/ca.pem\"` in {} (the hosts directory is berth-image's and berthd's \
                 --registry-config), or pass --skip-verify",
                endpoint.settings
            ));
        }
        if text.contains("CertificateRequired") || text.contains("BadCertificate") || text.contains("UnknownCA") {
            return RegistryError::Untrusted(format!(
                "registry {base} refused the TLS connection ({text}): it wants a client certificate it trusts: \
                 name one as `client = [[\"/path/to/client.cert\", \"/path/to/client.key\"]]` in {}",
                endpoint.settings
            ));
        }
        if not_tls(&text) && endpoint.scheme == "https" {
            return RegistryError::Unavailable(format!(
                "registry {base} does not speak TLS ({text}): pass --plain-http, or write \
                 `server = \"http://{}\"` in {}",
                endpoint.host, endpoint.settings
            ));
        }
        RegistryError::Unavailable(format!("registry {base} unreachable: {text}"))
    }

    /// The Authorization header answering `challenge`.
    async fn authorize(&self, endpoint: &Endpoint, challenge: &Challenge) -> Result<HeaderValue> {
        match challenge.scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                let Some((user, password)) = self.credentials_for(endpoint) else {
                    return Err(RegistryError::Unauthenticated(format!(
                        "{}: the registry asks for credentials",
                        self.locator
                    )));
                };
                let value = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
                HeaderValue::from_str(&value)
                    .map_err(|_| RegistryError::Protocol("credentials are not valid in a header".into()))
            }
            "bearer" => {
                let token = self.token(endpoint, challenge).await?;
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    RegistryError::Protocol(format!("{}: the token service returned an unusable token", self.locator))
                })
            }
            other => Err(RegistryError::Unauthenticated(format!(
                "{}: unsupported authentication scheme {other:?}",
                self.locator
            ))),
        }
    }

    /// Fetches a bearer token from the challenge's realm (docker's token flow), with the
    /// credentials when there are some, anonymously otherwise.
    async fn token(&self, endpoint: &Endpoint, challenge: &Challenge) -> Result<String> {
        let realm = challenge
            .param("realm")
            .ok_or_else(|| RegistryError::Protocol(format!("{}: bearer challenge without a realm", self.locator)))?;
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(service) = challenge.param("service") {
            query.push(("service", service.to_string()));
        }
        let scope =
            challenge.param("scope").map_or_else(|| format!("repository:{}:pull", self.repository), str::to_string);
        query.push(("scope", scope));
        let url = reqwest::Url::parse_with_params(realm, &query)
            .map_err(|e| RegistryError::Protocol(format!("{}: bad token realm {realm:?}: {e}", self.locator)))?;
        let mut request = endpoint.http.get(url);
        if let Some((user, password)) = self.credentials_for(endpoint) {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("token service {realm} unreachable: {}", describe(&e))))?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::Unauthenticated(format!(
                    "{}: the token service refused the credentials",
                    self.locator
                )));
            }
            s => return Err(RegistryError::Unavailable(format!("token service {realm} answered {s}"))),
        }
        let body = response.bytes().await.map_err(|e| self.unreachable(endpoint, &e))?;
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Protocol(format!("token service {realm}: bad JSON: {e}")))?;
        json.get("token")
            .or_else(|| json.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .ok_or_else(|| RegistryError::Protocol(format!("token service {realm} returned no token")))
    }

    /// Maps a non-success status to an error about `what`.
    pub(crate) async fn failure(&self, what: &str, response: reqwest::Response) -> RegistryError {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let detail: String = body.chars().take(200).collect();
        match status {
            StatusCode::NOT_FOUND => RegistryError::NotFound(what.to_string()),
            StatusCode::UNAUTHORIZED => RegistryError::Unauthenticated(format!("{what}: unauthorized: {detail}")),
            StatusCode::FORBIDDEN => RegistryError::Denied(format!("{what}: access denied: {detail}")),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                RegistryError::Unavailable(format!("{what}: registry answered {s}: {detail}"))
            }
            s => RegistryError::Protocol(format!("{what}: registry answered {s}: {detail}")),
        }
    }

    /// The manifest or index `object` (a tag or digest) names, verified against the digest
    /// when `object` is one. Tags are resolved only by endpoints trusted to; each endpoint
    /// is tried in turn until one serves it.
    pub async fn manifest(&self, object: &str) -> Result<Fetched> {
        let by_digest = object.contains(':');
        let endpoints = if by_digest { self.able("pull", |c| c.pull)? } else { self.able("resolve", |c| c.resolve)? };
        let mut last = None;
        for endpoint in endpoints {
            match self.manifest_at(endpoint, object).await {
                Ok(fetched) => return Ok(fetched),
                Err(err) => {
                    tracing::debug!(host = endpoint.host, object, "manifest not served: {err}");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::NotFound(object.to_string())))
    }

    async fn manifest_at(&self, endpoint: &Endpoint, object: &str) -> Result<Fetched> {
        let what = format!("{}:{object}", self.locator).replace(":sha256:", "@sha256:");
        let url = self.url(endpoint, "manifests", object);
        let mut response = self.send(endpoint, Method::GET, &url, &[(ACCEPT, MANIFEST_TYPES.join(", "))]).await?;
        if !response.status().is_success() {
            return Err(self.failure(&what, response).await);
        }
        if response.content_length().is_some_and(|l| l > MAX_MANIFEST_SIZE as u64) {
            return Err(RegistryError::Protocol(format!("{what}: manifest larger than {MAX_MANIFEST_SIZE} bytes")));
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.unreachable(endpoint, &e))? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_MANIFEST_SIZE {
                return Err(RegistryError::Protocol(format!("{what}: manifest larger than {MAX_MANIFEST_SIZE} bytes")));
            }
        }
        let digest = crate::digest::sha256(&bytes);
        if object.contains(':') && object != digest {
            return Err(RegistryError::Protocol(format!("{what}: the registry served content with digest {digest}")));
        }
        Ok(Fetched { media_type, digest, bytes })
    }

    /// Starts downloading blob `digest` from byte `offset` (a Range request; the registry
    /// may ignore it and send it all, see [`BlobBody::start`]), from the first endpoint
    /// that serves it.
    pub async fn blob(&self, digest: &str, offset: u64) -> Result<BlobBody> {
        let mut last = None;
        for endpoint in self.able("pull", |c| c.pull)? {
            match self.blob_at(endpoint, digest, offset).await {
                Ok(body) => return Ok(body),
                Err(err) => {
                    tracing::debug!(host = endpoint.host, digest, "blob not served: {err}");
                    last = Some(err);
                }
            }
        }
        Err(last.unwrap_or_else(|| RegistryError::NotFound(digest.to_string())))
    }

    async fn blob_at(&self, endpoint: &Endpoint, digest: &str, offset: u64) -> Result<BlobBody> {
        let what = format!("{}@{digest}", self.locator);
        let url = self.url(endpoint, "blobs", digest);
        let headers = if offset > 0 { vec![(RANGE, format!("bytes={offset}-"))] } else { Vec::new() };
        let response = self.send(endpoint, Method::GET, &url, &headers).await?;
        match response.status() {
            StatusCode::OK => Ok(BlobBody { response, start: 0 }),
            StatusCode::PARTIAL_CONTENT => {
                // Only a range starting where we asked is usable.
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                match start {
                    Some(start) if start == offset => Ok(BlobBody { response, start }),
                    _ => Err(RegistryError::Protocol(format!(
                        "{what}: the registry answered a range other than bytes={offset}-"
                    ))),
                }
            }
            _ => Err(self.failure(&what, response).await),
        }
    }
}

/// A parsed `WWW-Authenticate` header: a scheme and its `key="value"` parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
            let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
            if key.is_empty() {
                break;
            }
            if chars.next_if_eq(&'=').is_none() {
                params.push((key.trim().to_ascii_lowercase(), String::new()));
                continue;
            }
            let mut value = String::new();
            if chars.next_if_eq(&'"').is_some() {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
            } else {
                value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
            }
            params.push((key.trim().to_ascii_lowercase(), value));
        }
        Challenge { scheme: scheme.to_string(), params }
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/busybox:pull"));
        let c = Challenge::parse(r#"Basic realm="berth-test""#);
        assert_eq!((c.scheme.as_str(), c.param("realm")), ("Basic", Some("berth-test")));
        let c = Challenge::parse(r#"Bearer realm=plain, error="insufficient_scope", odd="a\"b""#);
        assert_eq!(
            (c.param("realm"), c.param("error"), c.param("odd")),
            (Some("plain"), Some("insufficient_scope"), Some("a\"b"))
        );
    }

    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request as a fake server saw it: path and Authorization header.
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

    /// A tiny HTTP/1.1 server on loopback answering each request with `answer(path, auth)`
    /// (status line and extra headers, body).
    async fn serve(answer: impl Fn(&str, Option<&str>) -> (String, Vec<u8>) + Send + Sync + 'static) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Seen = Arc::default();
        let answer = Arc::new(answer);
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (answer, log) = (answer.clone(), log.clone());
                tokio::spawn(async move {
                    let mut raw = Vec::new();
                    let mut buffer = [0u8; 4096];
                    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => raw.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&raw).to_string();
                    let path = text.split_whitespace().nth(1).unwrap_or_default().to_string();
                    let auth = text
                        .lines()
                        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("authorization")))
                        .map(|(_, v)| v.trim().to_string());
                    log.lock().unwrap().push((path.clone(), auth.clone()));
                    let (head, body) = answer(&path, auth.as_deref());
                    let response = format!("{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                });
            }
        });
        (addr, seen)
    }

    fn registry(addr: &str, credentials: Option<(&str, &str)>) -> Registry {
        let reference = Reference::parse(&format!("{addr}/team/app:1")).unwrap();
        let options = Options {
            plain_http: true,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            ..Default::default()
        };
        Registry::new(&reference, &options).unwrap()
    }

    const MANIFEST: &[u8] = br#"{"schemaVersion":2,"config":{},"layers":[]}"#;

    #[tokio::test]
    async fn follows_the_bearer_token_flow() {
        let realm = Arc::new(Mutex::new(String::new()));
        let shared = realm.clone();
        let (addr, seen) = serve(move |path, auth| {
            if path.starts_with("/token") {
                assert!(path.contains("scope=repository%3Ateam%2Fapp%3Apull"), "{path}");
                assert!(path.contains("service=test-registry"), "{path}");
                assert_eq!(auth, Some("Basic dXNlcjpzZWNyZXQ="), "the token service gets the credentials");
                return ("HTTP/1.1 200 OK".into(), br#"{"token":"t0ken"}"#.to_vec());
            }
            if auth == Some("Bearer t0ken") {
                return (
                    format!("HTTP/1.1 200 OK\r\nContent-Type: {}", crate::manifest::OCI_MANIFEST),
                    MANIFEST.to_vec(),
                );
            }
            let realm = shared.lock().unwrap().clone();
            let challenge = format!(
                r#"WWW-Authenticate: Bearer realm="{realm}",service="test-registry",scope="repository:team/app:pull""#
            );
            (format!("HTTP/1.1 401 Unauthorized\r\n{challenge}"), b"{}".to_vec())
        })
        .await;
        *realm.lock().unwrap() = format!("http://{addr}/token");
        let registry = registry(&addr, Some(("user", "secret")));
        let fetched = registry.manifest("1").await.unwrap();
        assert_eq!((fetched.media_type.as_str(), fetched.bytes.as_slice()), (crate::manifest::OCI_MANIFEST, MANIFEST));
        // The token is kept: a second request needs no new challenge.
        registry.manifest("1").await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.split('?').next().unwrap()).collect();
        assert_eq!(
            paths,
            ["/v2/team/app/manifests/1", "/token", "/v2/team/app/manifests/1", "/v2/team/app/manifests/1"]
        );
    }

    #[tokio::test]
    async fn maps_registry_answers_to_errors() {
        let (addr, _) = serve(|path, _| match path {
            "/v2/team/app/manifests/missing" => ("HTTP/1.1 404 Not Found".into(), b"{}".to_vec()),
            "/v2/team/app/manifests/busy" => ("HTTP/1.1 503 Service Unavailable".into(), b"{}".to_vec()),
            "/v2/team/app/manifests/private" => {
                ("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"".into(), b"{}".to_vec())
            }
            "/v2/team/app/manifests/huge" => {
                ("HTTP/1.1 200 OK\r\nContent-Type: text/plain".into(), vec![b'x'; MAX_MANIFEST_SIZE + 1])
            }
            _ => (format!("HTTP/1.1 200 OK\r\nContent-Type: {}", crate::manifest::OCI_MANIFEST), MANIFEST.to_vec()),
        })
        .await;
        let registry = registry(&addr, None);
        assert!(matches!(registry.manifest("missing").await, Err(RegistryError::NotFound(_))));
        assert!(matches!(registry.manifest("busy").await, Err(RegistryError::Unavailable(_))));
        assert!(matches!(registry.manifest("private").await, Err(RegistryError::Unauthenticated(_))));
        let huge = registry.manifest("huge").await;
        assert!(matches!(&huge, Err(RegistryError::Protocol(m)) if m.contains("larger than")), "{:?}", huge.err());
        let digest = crate::digest::sha256(b"other");
        // Content that does not hash to the digest asked for is refused.
        let wrong = registry.manifest(&digest).await;
        assert!(matches!(&wrong, Err(RegistryError::Protocol(m)) if m.contains("digest")), "{:?}", wrong.err());
    }

    #[tokio::test]
    async fn credentials_stay_with_the_registry_across_redirects() {
        let (storage, storage_seen) = serve(|_, _| ("HTTP/1.1 200 OK".into(), b"blob".to_vec())).await;
        // The same server under another host name: a different origin to the client.
        let storage = storage.replace("127.0.0.1", "localhost");
        let (addr, seen) = serve(move |path, auth| {
            if auth.is_none() {
                return ("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"".into(), Vec::new());
            }
            (format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{storage}{path}"), Vec::new())
        })
        .await;
        let registry = registry(&addr, Some(("user", "secret")));
        let mut body = registry.blob(&crate::digest::sha256(b"blob"), 0).await.unwrap();
        assert_eq!(body.chunk().await.unwrap().unwrap().as_ref(), b"blob");
        assert!(seen.lock().unwrap().iter().any(|(_, auth)| auth.is_some()), "the registry got the credentials");
        let storage_seen = storage_seen.lock().unwrap().clone();
        assert_eq!(storage_seen.len(), 1);
        assert_eq!(storage_seen[0].1, None, "no credentials to another host");
    }

    #[tokio::test]
    async fn mirrors_serve_what_their_capabilities_allow_without_the_credentials() {
        let (mirror, mirror_seen) = serve(|path, _| {
            if path.contains("/blobs/") {
                return ("HTTP/1.1 200 OK".into(), b"blob".to_vec());
            }
            ("HTTP/1.1 404 Not Found".into(), b"{}".to_vec())
        })
        .await;
        let (server, server_seen) = serve(|_, auth| {
            if auth.is_none() {
                return ("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"".into(), Vec::new());
            }
            (format!("HTTP/1.1 200 OK\r\nContent-Type: {}", crate::manifest::OCI_MANIFEST), MANIFEST.to_vec())
        })
        .await;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(&server);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"http://{server}\"\n[host.\"http://{mirror}\"]\ncapabilities = [\"pull\"]\n\
                 [host.\"http://{mirror}\".header]\nx-berth = \"1\"\n"
            ),
        )
        .unwrap();
        let reference = Reference::parse(&format!("{server}/team/app:1")).unwrap();
        let options = Options {
            credentials: Some(("user".into(), "secret".into())),
            hosts: Some(Arc::new(HostsDir::new(Some(root.path().into())))),
            ..Default::default()
        };
        let registry = Registry::new(&reference, &options).unwrap();
        // A tag is resolved by the server only (the mirror may not resolve).
        registry.manifest("1").await.unwrap();
        // By digest: the mirror first; it lacks it, so the server serves it.
        registry.manifest(&crate::digest::sha256(MANIFEST)).await.unwrap();
        let mut body = registry.blob(&crate::digest::sha256(b"blob"), 0).await.unwrap();
        assert_eq!(body.chunk().await.unwrap().unwrap().as_ref(), b"blob");
        let mirror_seen = mirror_seen.lock().unwrap().clone();
        let paths: Vec<&str> = mirror_seen.iter().map(|(p, _)| p.as_str()).collect();
        let ns = format!("?ns={server}");
        assert_eq!(paths.len(), 2, "{paths:?}");
        assert!(paths.iter().all(|p| p.ends_with(&ns)), "the mirror is told the namespace: {paths:?}");
        assert!(mirror_seen.iter().all(|(_, auth)| auth.is_none()), "no credentials to a mirror");
        assert!(server_seen.lock().unwrap().iter().any(|(_, auth)| auth.is_some()));
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }
}
