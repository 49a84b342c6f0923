//! A private OCI registry on loopback for pull/push tests: Debian's `docker-registry`
//! (distribution 2.8) with its storage in a temp dir, started and stopped by PID.
//!
//! [`Registry::start_tls`] serves HTTPS with a certificate from a throwaway CA made with the
//! `openssl` command ([`Registry::ca_path`]); [`Registry::start_with_auth`] asks for basic
//! auth.
//!
//! Each [`Registry`] is its own process on its own free port, so parallel tests never share
//! one. [`Registry::get`] is a tiny HTTP/1.1 client (std `TcpStream`) for asserting on what
//! the registry serves without pulling in an HTTP stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::procs;

const BINARY: &str = "/usr/bin/docker-registry";
/// The user distribution provisions when the htpasswd file is missing (with a random password
/// it logs), which saves us from needing a bcrypt tool.
const AUTH_USER: &str = "docker";

/// A running `docker-registry`; killed by PID and its storage removed on drop.
pub struct Registry {
    dir: TempDir,
    addr: SocketAddr,
    child: Child,
    credentials: Option<(String, String)>,
    tls: bool,
}

impl Registry {
    /// Starts a registry without auth (deletes enabled) and waits until `GET /v2/` answers.
    pub fn start() -> Registry {
        Self::start_mode(false, false, false)
    }

    /// Starts a registry that requires basic auth; see [`Registry::credentials`].
    pub fn start_with_auth() -> Registry {
        Self::start_mode(true, false, false)
    }

    /// Starts a registry that speaks only HTTPS, with a certificate for 127.0.0.1 and
    /// localhost signed by a CA of its own ([`Registry::ca_path`]).
    pub fn start_tls() -> Registry {
        Self::start_mode(false, true, false)
    }

    /// [`Registry::start_tls`] that also demands a client certificate signed by its CA (one
    /// is in [`Registry::client_cert_dir`]).
    pub fn start_tls_with_client_auth() -> Registry {
        Self::start_mode(false, true, true)
    }

    fn start_mode(auth: bool, tls: bool, client_auth: bool) -> Registry {
        assert!(
            Path::new(BINARY).is_file(),
            "{BINARY} not found: install Debian's docker-registry package \
             (`apt-get install docker-registry` or `bash scripts/install-deps.sh`)"
        );
        let dir = tempfile::Builder::new().prefix("berth-registry-").tempdir().expect("temp dir");
        let log_path = dir.path().join("registry.log");
        let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
        if tls {
            make_certificates(dir.path());
        }
        // The port is free when we look but may be taken before the registry binds it: retry.
        for _ in 0..10 {
            let addr = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(&config, config_yaml(dir.path(), addr, auth, tls, client_auth))
                .expect("write registry config");
            let log = std::fs::File::create(&log_path).expect("registry log file");
            let mut child = Command::new(BINARY)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("registry log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start {BINARY}: {e}"));
            match wait_ready(&mut child, addr, &log_path) {
                Ready::Yes => {
                    let credentials = auth.then(|| (AUTH_USER.to_string(), provisioned_password(&logs())));
                    return Registry { dir, addr, child, credentials, tls };
                }
                Ready::Exited if logs().contains("address already in use") => continue,
                Ready::Exited => panic!("docker-registry exited at start; its log:\n{}", logs()),
                Ready::Timeout => {
                    stop(&mut child);
                    panic!("docker-registry did not answer GET /v2/ within 30 s; its log:\n{}", logs());
                }
            }
        }
        panic!("docker-registry found no free port after 10 tries; last log:\n{}", logs());
    }

    /// `127.0.0.1:PORT`, the registry host as image references spell it.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:PORT/<name_tag>`, e.g. `reference("busybox:1")`.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.addr)
    }

    /// `(user, password)` for a registry started with [`Registry::start_with_auth`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CA (PEM) that signed a [`Registry::start_tls`] registry's certificate.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("ca.pem"))
    }

    /// A directory in docker's certs.d layout for a TLS registry: `ca.crt` (its CA) and a
    /// client certificate its CA signed (`client.cert`, `client.key`).
    pub fn client_cert_dir(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("client"))
    }

    /// Where the registry keeps its blobs and repositories.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `GET path` (e.g. `/v2/busybox/manifests/1`) with the given Accept values, sending the
    /// credentials when the registry has them.
    pub fn get(&self, path: &str, accept: &[&str]) -> Response {
        self.request("GET", path, accept, self.credentials())
    }

    /// `HEAD path`, like [`Registry::get`] without a body.
    pub fn head(&self, path: &str, accept: &[&str]) -> Response {
        self.request("HEAD", path, accept, self.credentials())
    }

    /// A request with explicit credentials (`None` to test anonymous access).
    pub fn request(&self, method: &str, path: &str, accept: &[&str], credentials: Option<(&str, &str)>) -> Response {
        http_request(self.addr, method, path, accept, credentials)
            .unwrap_or_else(|e| panic!("{method} http://{}{path}: {e}", self.addr))
    }

    /// The manifest or index stored under `name:reference`, asking for every manifest type.
    pub fn manifest(&self, name: &str, reference: &str) -> Response {
        self.get(&format!("/v2/{name}/manifests/{reference}"), MANIFEST_TYPES)
    }
}

/// Waits until the registry answers `GET /v2/`, exits, or 30 s pass.
///
/// Ready also needs the registry's own "listening on ADDR" log line: another test's server
/// could have grabbed the port between our probe and the registry's bind, and answer for it.
fn wait_ready(child: &mut Child, addr: SocketAddr, log: &Path) -> Ready {
    let listening = format!("listening on {addr}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ready::Exited;
        }
        // 200 without auth, 401 with it, 400 (plain HTTP to HTTPS) with TLS: it serves.
        if let Ok(response) = http_request(addr, "GET", "/v2/", &[], None)
            && (response.status == 200 || response.status == 401 || response.status == 400)
            && std::fs::read_to_string(log).is_ok_and(|l| l.contains(&listening))
        {
            return Ready::Yes;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ready::Timeout
}

/// The password distribution logs when it creates the missing htpasswd file.
fn provisioned_password(logs: &str) -> String {
    logs.lines()
        .find(|line| line.contains("provisioning with default user"))
        .and_then(|line| line.split_whitespace().find_map(|field| field.strip_prefix("password=")))
        .map(|p| p.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("docker-registry logged no provisioned password; its log:\n{logs}"))
}

/// SIGTERM by PID, SIGKILL after 5 s, then reap.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    procs::signal(child.id(), Signal::SIGTERM);
    if !procs::wait_until(Duration::from_secs(5), || matches!(child.try_wait(), Ok(Some(_)))) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

impl Drop for Registry {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

enum Ready {
    Yes,
    Exited,
    Timeout,
}

/// Every manifest media type a registry may hold, for Accept headers.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

/// A CA (ca.pem), a certificate it signed for 127.0.0.1 and localhost (server.pem,
/// server.key) and a client certificate (client/client.cert and .key, with client/ca.crt) in
/// `dir`, made with the openssl command; valid for two days.
fn make_certificates(dir: &Path) {
    let openssl = crate::require_tool("openssl");
    let run = |args: &[&str]| {
        let output = Command::new(&openssl).current_dir(dir).args(args).output().expect("run openssl");
        assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca =
        vec!["req", "-x509", "-days", "2", "-subj", "/CN=berth test CA", "-keyout", "ca.key", "-out", "ca.pem"];
    ca.extend(key);
    ca.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    run(&ca);
    // A key and a certificate the CA signed, with the extensions given.
    let issue = |subject: &str, key_out: &str, cert_out: &str, extensions: &str| {
        let mut request = vec!["req", "-new", "-subj", subject, "-keyout", key_out, "-out", "request.csr"];
        request.extend(key);
        run(&request);
        std::fs::write(dir.join("extensions.cnf"), extensions).expect("write extensions.cnf");
        let mut sign = vec!["x509", "-req", "-in", "request.csr", "-CA", "ca.pem", "-CAkey", "ca.key"];
        sign.extend(["-CAcreateserial", "-days", "2", "-extfile", "extensions.cnf", "-out", cert_out]);
        run(&sign);
    };
    issue(
        "/CN=127.0.0.1",
        "server.key",
        "server.pem",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    );
    std::fs::create_dir_all(dir.join("client")).expect("create client dir");
    issue(
        "/CN=berth test client",
        "client/client.key",
        "client/client.cert",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    );
    std::fs::copy(dir.join("ca.pem"), dir.join("client/ca.crt")).expect("copy the CA");
}

fn config_yaml(dir: &Path, addr: SocketAddr, auth: bool, tls: bool, client_auth: bool) -> String {
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n{tls}\
         health:\n  storagedriver:\n    enabled: false\n",
        storage = dir.join("storage").display(),
        tls = if tls {
            let mut tls = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            );
            if client_auth {
                tls.push_str(&format!("    clientcas:\n      - {}\n", dir.join("ca.pem").display()));
            }
            tls
        } else {
            String::new()
        },
    );
    if auth {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
            dir.join("htpasswd").display()
        ));
    }
    yaml
}

/// One HTTP response, read to the end (`Connection: close`).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {}", self.text()))
    }
}

fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    accept: &[&str],
    credentials: Option<(&str, &str)>,
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !accept.is_empty() {
        request.push_str(&format!("Accept: {}\r\n", accept.join(", ")));
    }
    if let Some((user, password)) = credentials {
        request.push_str(&format!("Authorization: Basic {}\r\n", base64(format!("{user}:{password}").as_bytes())));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head_text = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers are not utf-8"))?;
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status =
        status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if head {
        Vec::new()
    } else if chunked {
        dechunk(rest).ok_or_else(|| bad("bad chunked body"))?
    } else {
        rest.to_vec()
    };
    Ok(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
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
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
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
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), want);
        }
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\n\r\nhello", false).unwrap();
        assert_eq!((plain.status, plain.header("content-type"), plain.text().as_str()), (200, Some("a/b"), "hello"));
        let chunked = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((chunked.status, chunked.text().as_str()), (404, "abcde"));
    }
}
