//! Registry credentials from docker's client configuration, for pulls and pushes given no
//! `--user`: `$DOCKER_CONFIG/config.json` (or `~/.docker/config.json`), its `auths` entry
//! for the registry (base64 `auth`, or `username`/`password`, or an `identitytoken`), or the
//! credential helper it names (`credHelpers`, `credsStore`: `docker-credential-NAME get`).
//!
//! They are sent to berth's image service with the request, which gives them only to that
//! registry (and its token service).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde::Deserialize;

/// docker's key for Docker Hub.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    auths: HashMap<String, Entry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// What a credential helper answers.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Helped {
    username: String,
    secret: String,
}

/// The registry namespace of a reference as docker keys it: `docker.io` for `busybox`,
/// `127.0.0.1:5000` for `127.0.0.1:5000/app:1`.
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// docker's config file: `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`.
fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|home| PathBuf::from(home).join(".docker/config.json"))
}

/// The credentials docker's configuration holds for the registry of `reference`, if any.
pub fn for_reference(reference: &str) -> anyhow::Result<Option<(String, String)>> {
    let Some(path) = config_path() else { return Ok(None) };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("reading docker's credentials {}: {e}", path.display()),
    };
    let config: Config = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("docker's credentials {}: not valid JSON: {e}", path.display()))?;
    lookup(&config, &registry_of(reference))
        .map_err(|e| anyhow::anyhow!("docker's credentials {}: {e}", path.display()))
}

/// Normalizes an `auths` key: `https://host/v1/` → `host`; Docker Hub's names → `docker.io`.
fn key_host(key: &str) -> &str {
    let rest = key.split_once("://").map_or(key, |(_, rest)| rest);
    let host = rest.split('/').next().unwrap_or(rest);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io",
        host => host,
    }
}

fn lookup(config: &Config, registry: &str) -> Result<Option<(String, String)>, String> {
    let helper_key = if registry == "docker.io" { DOCKER_HUB_KEY } else { registry };
    if let Some(helper) = config.cred_helpers.get(registry).or(config.creds_store.as_ref())
        && let Some(found) = helper_get(helper, helper_key)
    {
        return Ok(Some(found));
    }
    let Some(entry) = config.auths.iter().find(|(key, _)| key_host(key) == registry).map(|(_, e)| e) else {
        return Ok(None);
    };
    if let Some(token) = entry.identitytoken.as_ref().filter(|t| !t.is_empty()) {
        return Ok(Some((String::new(), token.clone())));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|a| !a.is_empty()) {
        let decoded = decode_base64(auth).ok_or_else(|| format!("the auth of {registry} is not base64"))?;
        let text = String::from_utf8(decoded).map_err(|_| format!("the auth of {registry} is not UTF-8"))?;
        let (user, password) =
            text.split_once(':').ok_or_else(|| format!("the auth of {registry} is not USER:PASSWORD"))?;
        return Ok(Some((user.to_string(), password.to_string())));
    }
    match (&entry.username, &entry.password) {
        (Some(user), Some(password)) if !user.is_empty() => Ok(Some((user.clone(), password.clone()))),
        _ => Ok(None),
    }
}

/// Asks `docker-credential-NAME get` for `server`'s credentials; None when it has none
/// (or is not installed: then the pull goes on without).
fn helper_get(name: &str, server: &str) -> Option<(String, String)> {
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(server.as_bytes()).ok()?;
    let output = child.wait_with_output().ok()?;
    if !output.status.success() {
        return None;
    }
    let helped: Helped = serde_json::from_slice(&output.stdout).ok()?;
    if helped.username == "<token>" {
        return Some((String::new(), helped.secret));
    }
    Some((helped.username, helped.secret))
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut bits = 0u32;
    let mut count = 0;
    for byte in text.trim().bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn registries_of_references() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
        assert_eq!(registry_of("ghcr.io/a/b@sha256:00"), "ghcr.io");
    }

    #[test]
    fn reads_auths_like_docker() {
        // "user:pa:ss" in base64.
        let c = config(
            r#"{"auths": {
                "127.0.0.1:5000": {"auth": "dXNlcjpwYTpzcw=="},
                "https://index.docker.io/v1/": {"username": "hub", "password": "secret"},
                "http://tokens.example.com/v2/": {"identitytoken": "t0ken"}
            }}"#,
        );
        assert_eq!(lookup(&c, "127.0.0.1:5000").unwrap(), Some(("user".into(), "pa:ss".into())));
        assert_eq!(lookup(&c, "docker.io").unwrap(), Some(("hub".into(), "secret".into())));
        assert_eq!(lookup(&c, "tokens.example.com").unwrap(), Some((String::new(), "t0ken".into())));
        assert_eq!(lookup(&c, "elsewhere.example.com").unwrap(), None);
        let bad = config(r#"{"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}"#);
        assert!(lookup(&bad, "r.io").unwrap_err().contains("USER:PASSWORD"));
    }

    #[test]
    fn a_missing_helper_is_no_credentials() {
        let c = config(r#"{"credsStore": "berth-test-no-such-helper", "auths": {"r.io": {"auth": "dTpw"}}}"#);
        assert_eq!(lookup(&c, "r.io").unwrap(), Some(("u".into(), "p".into())));
    }

    #[test]
    fn base64_decodes() {
        for (text, want) in [("", ""), ("Zg==", "f"), ("Zm8=", "fo"), ("Zm9v", "foo"), ("Zm9vYmFy", "foobar")] {
            assert_eq!(decode_base64(text).unwrap(), want.as_bytes());
        }
        assert_eq!(decode_base64("*"), None);
    }
}
