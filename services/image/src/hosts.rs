//! Per-registry settings in containerd's hosts directory layout (`--registry-config DIR`,
//! containerd's `certs.d`): `DIR/<host[:port]>/hosts.toml` says which endpoints serve a
//! registry namespace and how to reach each.
//!
//! ```toml
//! server = "https://registry.example.com:5000"   # the upstream, tried last
//! ca = "ca.pem"                                  # for the server (relative to this file)
//!
//! [host."https://mirror.internal"]               # tried first, in file order
//!   capabilities = ["pull", "resolve"]
//!   ca = ["/etc/certs/a.pem", "/etc/certs/b.pem"]
//!   client = [["client.cert", "client.key"]]
//!   skip_verify = false
//!   override_path = false
//!   dial_timeout = "2s"
//!   [host."https://mirror.internal".header]
//!     x-custom = "value"
//! ```
//!
//! The namespace's directory is `host:port` (or `host_port_`), falling back to `_default`.
//! A directory without hosts.toml is read the way docker reads its certs.d: `*.crt` files
//! are CAs, `*.cert` with the `*.key` of the same name a client certificate. Plain HTTP is
//! an `http://` URL. Settings are read again for every pull and push (no restart needed).

use std::path::{Path, PathBuf};

use thiserror::Error;

/// The directory containerd and berth read by default.
pub const DEFAULT_DIR: &str = "/etc/berth/certs.d";
const FILE: &str = "hosts.toml";
const FALLBACK: &str = "_default";

#[derive(Debug, Error)]
#[error("registry settings {path}: {problem}")]
pub struct HostsError {
    pub path: String,
    pub problem: String,
}

/// What an endpoint may be asked to do (containerd's host capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Fetch manifests by digest and blobs.
    pub pull: bool,
    /// Turn a tag into a digest: trusted.
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    pub const ALL: Capabilities = Capabilities { pull: true, resolve: true, push: true };
}

/// One place to send a namespace's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// The API root path: `/v2` (or the URL's own path with `override_path`).
    pub path: String,
    pub capabilities: Capabilities,
    /// CA certificates (PEM files) trusted besides the system's.
    pub ca: Vec<PathBuf>,
    /// Client certificates: a PEM file with both, or a certificate and its key.
    pub client: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: bool,
    pub headers: Vec<(String, String)>,
    /// How long connecting may take (`dial_timeout`); None: the client's default.
    pub dial_timeout: Option<std::time::Duration>,
    /// Whether the scheme was written down; when not, the request's plain-http decides.
    pub scheme_given: bool,
    /// The namespace's own server (not a mirror).
    pub server: bool,
}

/// The endpoints of one namespace, in the order to try them, and where they came from.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub endpoints: Vec<Endpoint>,
    /// The directory read (None: no settings for this namespace).
    pub source: Option<PathBuf>,
}

/// A hosts directory (or none: every registry by its defaults).
#[derive(Debug, Clone, Default)]
pub struct HostsDir {
    root: Option<PathBuf>,
}

impl HostsDir {
    pub fn new(root: Option<PathBuf>) -> HostsDir {
        HostsDir { root }
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Where settings for `namespace` (`docker.io`, `127.0.0.1:5000`) would be read first.
    pub fn suggested(&self, namespace: &str) -> PathBuf {
        self.root.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DIR)).join(namespace).join(FILE)
    }

    /// The settings for registry namespace `namespace`, whose default server is
    /// `default_host` (`registry-1.docker.io` for `docker.io`).
    pub fn config(&self, namespace: &str, default_host: &str) -> Result<HostConfig, HostsError> {
        let default = || HostConfig { endpoints: vec![default_endpoint(default_host)], source: None };
        let Some(root) = &self.root else { return Ok(default()) };
        let Some(dir) = candidates(namespace).into_iter().map(|c| root.join(c)).find(|d| d.is_dir()) else {
            return Ok(default());
        };
        let file = dir.join(FILE);
        let endpoints = if file.is_file() {
            let text = std::fs::read_to_string(&file).map_err(|e| HostsError {
                path: file.display().to_string(),
                problem: format!("cannot read it: {e}"),
            })?;
            parse(&text, &dir, default_host)
                .map_err(|problem| HostsError { path: file.display().to_string(), problem })?
        } else {
            let mut server = default_endpoint(default_host);
            certificate_files(&dir, &mut server)
                .map_err(|e| HostsError { path: dir.display().to_string(), problem: format!("cannot list it: {e}") })?;
            vec![server]
        };
        Ok(HostConfig { endpoints, source: Some(dir) })
    }
}

/// The directories that may hold a namespace's settings, in the order containerd looks.
fn candidates(namespace: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Some((host, port)) = namespace.rsplit_once(':')
        && !port.is_empty()
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        names.push(format!("{host}_{port}_"));
    }
    names.push(namespace.to_string());
    names.push(FALLBACK.to_string());
    names
}

fn default_endpoint(host: &str) -> Endpoint {
    Endpoint {
        scheme: "https".into(),
        host: host.to_string(),
        path: "/v2".into(),
        capabilities: Capabilities::ALL,
        ca: Vec::new(),
        client: Vec::new(),
        skip_verify: false,
        headers: Vec::new(),
        dial_timeout: None,
        scheme_given: false,
        server: true,
    }
}

/// docker's certs.d files: `*.crt` CAs, `*.cert` + `*.key` client pairs.
fn certificate_files(dir: &Path, endpoint: &mut Endpoint) -> std::io::Result<()> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for path in names {
        match path.extension().and_then(|e| e.to_str()) {
            Some("crt") => endpoint.ca.push(path),
            Some("cert") => {
                let key = path.with_extension("key");
                if key.is_file() {
                    endpoint.client.push((path, Some(key)));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reads hosts.toml text; relative paths are relative to `dir`.
fn parse(text: &str, dir: &Path, default_host: &str) -> Result<Vec<Endpoint>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_string())?;
    let mut endpoints = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts.as_table().ok_or("`host` must be a table of [host.\"URL\"] entries")?;
        for (url, settings) in hosts {
            let settings = settings.as_table().ok_or_else(|| format!("[host.{url:?}] must be a table"))?;
            let mut endpoint = from_url(url, settings, default_host).map_err(|p| format!("[host.{url:?}]: {p}"))?;
            endpoint.server = false;
            apply(settings, dir, &mut endpoint).map_err(|p| format!("[host.{url:?}]: {p}"))?;
            endpoints.push(endpoint);
        }
    }
    let mut server = match table.get("server") {
        Some(server) => {
            let url = server.as_str().ok_or("`server` must be a URL string")?;
            from_url(url, &table, default_host).map_err(|p| format!("server {url:?}: {p}"))?
        }
        None => default_endpoint(default_host),
    };
    apply(&table, dir, &mut server)?;
    endpoints.push(server);
    Ok(endpoints)
}

fn from_url(url: &str, settings: &toml::Table, default_host: &str) -> Result<Endpoint, String> {
    let (scheme, rest, scheme_given) = match url.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme.to_string(), rest, true),
        Some((other, _)) => return Err(format!("scheme {other:?} is neither http nor https")),
        None => ("https".to_string(), url, false),
    };
    let (host, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err("no host in the URL".into());
    }
    let override_path = settings.get("override_path").and_then(toml::Value::as_bool).unwrap_or(false);
    let path = if override_path {
        path.to_string()
    } else if path.is_empty() || path == "/v2" {
        "/v2".to_string()
    } else if let Some(prefix) = path.strip_suffix("/v2") {
        format!("{prefix}/v2")
    } else {
        format!("{path}/v2")
    };
    // docker.io's API lives elsewhere.
    let host = if host == "docker.io" && default_host == "registry-1.docker.io" { default_host } else { host };
    Ok(Endpoint { scheme, host: host.to_string(), path, scheme_given, ..default_endpoint(host) })
}

/// A string or an array of strings.
fn strings(value: &toml::Value, what: &str) -> Result<Vec<String>, String> {
    match value {
        toml::Value::String(s) => Ok(vec![s.clone()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or_else(|| format!("`{what}` entries must be strings")))
            .collect(),
        _ => Err(format!("`{what}` must be a string or an array of strings")),
    }
}

fn relative(dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() { path.to_path_buf() } else { dir.join(path) }
}

/// Keys of a host's settings berth reads; others (containerd's `proxy`) are ignored with a
/// warning.
const KNOWN: &[&str] =
    &["server", "host", "capabilities", "ca", "client", "skip_verify", "header", "override_path", "dial_timeout"];

/// The settings of one `[host]` table (or the top level, for the server).
fn apply(settings: &toml::Table, dir: &Path, endpoint: &mut Endpoint) -> Result<(), String> {
    for key in settings.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        tracing::warn!(host = endpoint.host, key, dir = %dir.display(), "registry setting not supported: ignored");
    }
    if let Some(value) = settings.get("dial_timeout") {
        let text = value.as_str().ok_or("`dial_timeout` must be a duration like \"1s\"")?;
        let timeout = humantime::parse_duration(text).map_err(|e| format!("dial_timeout {text:?}: {e}"))?;
        endpoint.dial_timeout = Some(timeout);
    }
    if let Some(value) = settings.get("capabilities") {
        let mut capabilities = Capabilities { pull: false, resolve: false, push: false };
        for name in strings(value, "capabilities")? {
            match name.as_str() {
                "pull" => capabilities.pull = true,
                "resolve" => capabilities.resolve = true,
                "push" => capabilities.push = true,
                other => return Err(format!("unknown capability {other:?} (pull, resolve, push)")),
            }
        }
        endpoint.capabilities = capabilities;
    }
    if let Some(value) = settings.get("ca") {
        endpoint.ca = strings(value, "ca")?.iter().map(|p| relative(dir, p)).collect();
    }
    if let Some(value) = settings.get("client") {
        endpoint.client = match value {
            toml::Value::String(path) => vec![(relative(dir, path), None)],
            toml::Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    toml::Value::String(path) => Ok((relative(dir, path), None)),
                    toml::Value::Array(pair) => match pair.as_slice() {
                        [toml::Value::String(cert), toml::Value::String(key)] => {
                            Ok((relative(dir, cert), Some(key).filter(|k| !k.is_empty()).map(|k| relative(dir, k))))
                        }
                        [toml::Value::String(cert)] => Ok((relative(dir, cert), None)),
                        _ => Err("`client` pairs must be [\"cert\", \"key\"]".to_string()),
                    },
                    _ => Err("`client` entries must be paths or [cert, key] pairs".to_string()),
                })
                .collect::<Result<_, _>>()?,
            _ => return Err("`client` must be a path, an array of paths or of [cert, key] pairs".into()),
        };
    }
    if let Some(value) = settings.get("skip_verify") {
        endpoint.skip_verify = value.as_bool().ok_or("`skip_verify` must be true or false")?;
    }
    if let Some(value) = settings.get("header") {
        let table = value.as_table().ok_or("`header` must be a table")?;
        for (name, values) in table {
            for value in strings(values, "header")? {
                endpoint.headers.push((name.clone(), value));
            }
        }
    }
    Ok(())
}

impl crate::pull::Puller {
    /// Reads per-registry settings from `hosts` for pulls and pushes.
    pub fn with_hosts(mut self, hosts: HostsDir) -> Self {
        self.hosts = std::sync::Arc::new(hosts);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(namespace: &str, hosts_toml: Option<&str>, files: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(namespace);
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(text) = hosts_toml {
            std::fs::write(dir.join(FILE), text).unwrap();
        }
        for file in files {
            std::fs::write(dir.join(file), "x").unwrap();
        }
        root
    }

    #[test]
    fn no_settings_means_the_registry_itself_over_https() {
        let config = HostsDir::new(None).config("docker.io", "registry-1.docker.io").unwrap();
        assert_eq!(config.endpoints, vec![default_endpoint("registry-1.docker.io")]);
        let root = tempfile::tempdir().unwrap();
        let config = HostsDir::new(Some(root.path().into())).config("example.com", "example.com").unwrap();
        assert!(config.source.is_none());
        assert_eq!(config.endpoints[0].host, "example.com");
    }

    #[test]
    fn reads_hosts_toml_like_containerd() {
        let text = r#"
            server = "https://registry.example.com:5000"
            ca = "ca.pem"
            [host."https://mirror.internal/base"]
              capabilities = ["pull", "resolve"]
              ca = ["/etc/a.pem", "b.pem"]
              client = [["c.cert", "c.key"], ["both.pem", ""]]
              skip_verify = true
              dial_timeout = "1500ms"
              [host."https://mirror.internal/base".header]
                x-one = "1"
                x-two = ["a", "b"]
            [host."http://plain.internal:8080/raw"]
              capabilities = "pull"
              override_path = true
        "#;
        let root = dir_with("registry.example.com:5000", Some(text), &[]);
        let dir = root.path().join("registry.example.com:5000");
        let config = HostsDir::new(Some(root.path().into()))
            .config("registry.example.com:5000", "registry.example.com:5000")
            .unwrap();
        let [mirror, plain, server] = config.endpoints.as_slice() else { panic!("{:?}", config.endpoints) };
        assert_eq!(
            (mirror.scheme.as_str(), mirror.host.as_str(), mirror.path.as_str()),
            ("https", "mirror.internal", "/base/v2")
        );
        assert_eq!(mirror.capabilities, Capabilities { pull: true, resolve: true, push: false });
        assert_eq!(mirror.ca, vec![PathBuf::from("/etc/a.pem"), dir.join("b.pem")]);
        assert_eq!(mirror.client, vec![(dir.join("c.cert"), Some(dir.join("c.key"))), (dir.join("both.pem"), None)]);
        assert!(mirror.skip_verify && !mirror.server);
        assert_eq!(mirror.dial_timeout, Some(std::time::Duration::from_millis(1500)));
        assert_eq!(
            mirror.headers,
            vec![("x-one".into(), "1".into()), ("x-two".into(), "a".into()), ("x-two".into(), "b".into())]
        );
        assert_eq!((plain.scheme.as_str(), plain.path.as_str()), ("http", "/raw"));
        assert_eq!(plain.capabilities, Capabilities { pull: true, resolve: false, push: false });
        assert_eq!((server.host.as_str(), server.capabilities), ("registry.example.com:5000", Capabilities::ALL));
        assert_eq!(server.ca, vec![dir.join("ca.pem")]);
        assert!(server.server && server.scheme_given);
        assert_eq!(config.source.as_deref(), Some(dir.as_path()));
    }

    #[test]
    fn looks_for_the_port_forms_then_default() {
        assert_eq!(candidates("r.io:5000"), ["r.io_5000_", "r.io:5000", "_default"]);
        assert_eq!(candidates("r.io"), ["r.io", "_default"]);
        let root = dir_with("_default", Some("server = \"http://fallback:1\""), &[]);
        let config = HostsDir::new(Some(root.path().into())).config("r.io", "r.io").unwrap();
        assert_eq!((config.endpoints[0].scheme.as_str(), config.endpoints[0].host.as_str()), ("http", "fallback:1"));
        // Without a server the namespace's own host is the server.
        let root = dir_with("r.io", Some("skip_verify = true"), &[]);
        let config = HostsDir::new(Some(root.path().into())).config("r.io", "r.io").unwrap();
        assert_eq!(config.endpoints.len(), 1);
        assert!(config.endpoints[0].skip_verify && !config.endpoints[0].scheme_given);
    }

    #[test]
    fn docker_certificate_files_without_hosts_toml() {
        let root = dir_with("r.io", None, &["ca.crt", "client.cert", "client.key", "lonely.cert", "notes.txt"]);
        let dir = root.path().join("r.io");
        let config = HostsDir::new(Some(root.path().into())).config("r.io", "r.io").unwrap();
        assert_eq!(config.endpoints[0].ca, vec![dir.join("ca.crt")]);
        assert_eq!(config.endpoints[0].client, vec![(dir.join("client.cert"), Some(dir.join("client.key")))]);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for text in [
            "server = 5",
            "server = \"ftp://x\"",
            "capabilities = [\"fly\"]",
            "skip_verify = \"yes\"",
            "dial_timeout = \"soon\"",
            "[host.\"https://m\"]\nca = 3",
            "not toml at all [",
        ] {
            let root = dir_with("r.io", Some(text), &[]);
            let err = HostsDir::new(Some(root.path().into())).config("r.io", "r.io").unwrap_err();
            assert!(err.to_string().contains("hosts.toml"), "{text}: {err}");
        }
    }
}
