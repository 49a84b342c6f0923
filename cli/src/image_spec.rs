//! The OCI runtime spec of a container run from an image, built client-side as containerd's
//! client does: containerd's defaults ([`spec::default_spec`]), then the image config's
//! entrypoint, command, environment, working directory and user, then the command line's
//! overrides (command, `--env`, `--cwd`, `--user`, `--mount`, `-t`).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::spec;

/// Highest uid or gid accepted. Ids are u32 in the kernel, but runtimes, user namespaces and
/// containerd treat anything above 2^31−1 as invalid, so such ids are refused up front.
pub const MAX_ID: u64 = i32::MAX as u64;

/// What a container's process takes from an image config (its `config` object), and the
/// layers' diff IDs (`rootfs.diff_ids`) its root filesystem is made of.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// Reads an OCI (or Docker) image config. `Entrypoint`, `Cmd` and `Env` may be null.
    pub fn parse(bytes: &[u8], origin: &str) -> anyhow::Result<ImageConfig> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|err| anyhow::anyhow!("image config {origin} is not valid JSON: {err}"))?;
        if !value.is_object() {
            anyhow::bail!("image config {origin} is not a JSON object");
        }
        let config = &value["config"];
        let strings = |field: &Value, name: &str| -> anyhow::Result<Vec<String>> {
            match field {
                Value::Null => Ok(Vec::new()),
                Value::Array(items) => items
                    .iter()
                    .map(|item| {
                        item.as_str().map(str::to_string).ok_or_else(|| {
                            anyhow::anyhow!("image config {origin}: {name} holds a non-string value {item}")
                        })
                    })
                    .collect(),
                other => anyhow::bail!("image config {origin}: {name} is not a list of strings: {other}"),
            }
        };
        let text = |field: &Value| field.as_str().unwrap_or_default().to_string();
        Ok(ImageConfig {
            user: text(&config["User"]),
            env: strings(&config["Env"], "config.Env")?,
            entrypoint: strings(&config["Entrypoint"], "config.Entrypoint")?,
            cmd: strings(&config["Cmd"], "config.Cmd")?,
            working_dir: text(&config["WorkingDir"]),
            diff_ids: strings(&value["rootfs"]["diff_ids"], "rootfs.diff_ids")?,
        })
    }
}

/// What the command line says about the container's process.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// Replaces the image's Cmd (the entrypoint stays), as `docker run IMAGE CMD...` does.
    pub args: Vec<String>,
    /// `KEY=VALUE`, applied after the image's environment (same key: the last one wins).
    pub env: Vec<String>,
    pub cwd: Option<String>,
    /// `uid`, `uid:gid`, `name`, `name:group` (names need the image's /etc/passwd, /etc/group).
    pub user: Option<String>,
    pub terminal: bool,
    /// Extra mounts, already in OCI form (see [`parse_mount`]).
    pub mounts: Vec<Value>,
}

/// The image's /etc/passwd and /etc/group, when it has them; names resolve through these.
#[derive(Debug, Default, Clone)]
pub struct Accounts {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

/// The spec for container `id` in `namespace` running `image` with `overrides`.
pub fn from_image(
    namespace: &str,
    id: &str,
    image: &ImageConfig,
    overrides: &Overrides,
    accounts: &Accounts,
) -> anyhow::Result<Value> {
    let args = process_args(image, &overrides.args)?;
    let mut spec = spec::default_spec(namespace, id, &args);
    let mut env = environment(&image.env, &overrides.env);
    if overrides.terminal && !env.iter().any(|entry| entry.starts_with("TERM=")) {
        // As containerd's WithTTY: programs need a terminal type to draw on a terminal.
        env.push("TERM=xterm".to_string());
    }
    spec["process"]["env"] = json!(env);
    let cwd = overrides.cwd.clone().unwrap_or_else(|| image.working_dir.clone());
    let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
    if !cwd.starts_with('/') {
        anyhow::bail!("working directory {cwd:?} must be an absolute path");
    }
    spec["process"]["cwd"] = json!(cwd);
    let user = overrides.user.as_deref().unwrap_or(&image.user);
    let (uid, gid) = resolve_user(user, accounts)?;
    spec["process"]["user"] = json!({"uid": uid, "gid": gid});
    spec["process"]["terminal"] = json!(overrides.terminal);
    spec["hostname"] = json!(id);
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        // A user mount on a default mount's destination replaces it, as in containerd.
        for mount in &overrides.mounts {
            mounts.retain(|existing| existing["destination"] != mount["destination"]);
            mounts.push(mount.clone());
        }
    }
    Ok(spec)
}

/// Entrypoint, then the command line's args or else the image's Cmd.
pub fn process_args(image: &ImageConfig, args: &[String]) -> anyhow::Result<Vec<String>> {
    let cmd = if args.is_empty() { &image.cmd } else { args };
    let all: Vec<String> = image.entrypoint.iter().chain(cmd).cloned().collect();
    if all.is_empty() {
        anyhow::bail!("the image sets neither an entrypoint nor a command: give one after the container ID");
    }
    Ok(all)
}

/// The image's environment (containerd's default PATH when it has none), then `extra`:
/// a key set again keeps its place and takes the new value.
pub fn environment(image: &[String], extra: &[String]) -> Vec<String> {
    let mut env: Vec<String> = if image.is_empty() { vec![spec::DEFAULT_PATH.to_string()] } else { image.to_vec() };
    for entry in extra {
        let key = entry.split_once('=').map_or(entry.as_str(), |(key, _)| key);
        match env.iter_mut().find(|existing| existing.split_once('=').map_or(existing.as_str(), |(k, _)| k) == key) {
            Some(existing) => existing.clone_from(entry),
            None => env.push(entry.clone()),
        }
    }
    env
}

/// `uid`, `uid:gid`, `name`, `name:group`, `uid:group`, `name:gid` → (uid, gid). A uid alone
/// takes its primary group from /etc/passwd when listed there, else 0 (as containerd).
pub fn resolve_user(user: &str, accounts: &Accounts) -> anyhow::Result<(u32, u32)> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (name, group) = match user.split_once(':') {
        Some((name, group)) => (name, Some(group)),
        None => (user, None),
    };
    let passwd = accounts.passwd.as_deref();
    let (uid, primary) = match numeric_id(name, "uid", user)? {
        Some(uid) => {
            let primary =
                passwd.and_then(|text| entries(text).find(|e| e.get(2) == Some(&name)).and_then(|e| gid_of(&e)));
            (uid, primary.unwrap_or(0))
        }
        None => {
            let text = passwd.ok_or_else(|| {
                anyhow::anyhow!(
                    "user {user:?}: the image has no /etc/passwd to look up {name:?} in (use a numeric uid)"
                )
            })?;
            let entry = entries(text)
                .find(|e| e.first() == Some(&name))
                .ok_or_else(|| anyhow::anyhow!("user {user:?}: no user {name:?} in the image's /etc/passwd"))?;
            let uid = entry.get(2).and_then(|uid| numeric_id(uid, "uid", user).ok().flatten());
            let uid = uid.ok_or_else(|| anyhow::anyhow!("user {user:?}: bad /etc/passwd entry for {name:?}"))?;
            (uid, gid_of(&entry).unwrap_or(0))
        }
    };
    let gid = match group {
        None => primary,
        Some(group) => match numeric_id(group, "gid", user)? {
            Some(gid) => gid,
            None => {
                let text = accounts.group.as_deref().ok_or_else(|| {
                    anyhow::anyhow!(
                        "user {user:?}: the image has no /etc/group to look up {group:?} in (use a numeric gid)"
                    )
                })?;
                let entry = entries(text)
                    .find(|e| e.first() == Some(&group))
                    .ok_or_else(|| anyhow::anyhow!("user {user:?}: no group {group:?} in the image's /etc/group"))?;
                gid_of_group(&entry)
                    .ok_or_else(|| anyhow::anyhow!("user {user:?}: bad /etc/group entry for {group:?}"))?
            }
        },
    };
    Ok((uid, gid))
}

/// `Some(id)` for a number in range, `None` for a name, an error for an out-of-range number.
fn numeric_id(text: &str, what: &str, user: &str) -> anyhow::Result<Option<u32>> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if text.is_empty() {
        anyhow::bail!("user {user:?}: empty {what}");
    }
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match text.parse::<u64>() {
        Ok(id) if id <= MAX_ID => Ok(Some(id as u32)),
        _ => anyhow::bail!("user {user:?}: {what} {text} is out of range (0 to {MAX_ID})"),
    }
}

fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().filter(|line| !line.trim().is_empty() && !line.starts_with('#')).map(|line| line.split(':').collect())
}

fn gid_of(entry: &[&str]) -> Option<u32> {
    entry.get(3)?.parse::<u64>().ok().filter(|gid| *gid <= MAX_ID).map(|gid| gid as u32)
}

fn gid_of_group(entry: &[&str]) -> Option<u32> {
    entry.get(2)?.parse::<u64>().ok().filter(|gid| *gid <= MAX_ID).map(|gid| gid as u32)
}

/// Parses `--mount type=bind,src=/host,dst=/ctr,options=rbind:ro` (ctr's form) into an OCI
/// mount. `type` defaults to bind; a bind mount without `bind`/`rbind` in its options gets
/// `rbind`.
pub fn parse_mount(text: &str) -> Result<Value, String> {
    let (mut kind, mut source, mut destination, mut options) = ("bind".to_string(), None, None, Vec::new());
    for field in text.split(',') {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("mount {text:?}: {field:?} is not key=value (e.g. type=bind,src=/a,dst=/b)"))?;
        match key {
            "type" => kind = value.to_string(),
            "src" | "source" => source = Some(value.to_string()),
            "dst" | "destination" | "target" => destination = Some(value.to_string()),
            "options" => options = value.split(':').filter(|o| !o.is_empty()).map(str::to_string).collect(),
            other => return Err(format!("mount {text:?}: unknown key {other:?} (use type, src, dst, options)")),
        }
    }
    let destination = destination.ok_or_else(|| format!("mount {text:?}: dst= is missing"))?;
    if !destination.starts_with('/') {
        return Err(format!("mount {text:?}: dst {destination:?} must be an absolute path"));
    }
    let source = source.unwrap_or_else(|| kind.clone());
    if kind == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
        options.insert(0, "rbind".to_string());
    }
    Ok(json!({"destination": destination, "type": kind, "source": source, "options": options}))
}

/// Parses `--env KEY=VALUE`.
pub fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(text.to_string()),
        _ => Err(format!("environment variable {text:?}: write KEY=VALUE")),
    }
}

/// Reads `path` (relative, like `etc/passwd`) from a snapshot's mounts without mounting them:
/// the upper directory, then the lower ones, top first. Only regular files reached without
/// symlinks count, so nothing outside the snapshot's directories is ever read.
pub fn read_from_mounts(mounts: &[berth_api::containerd::types::Mount], path: &str) -> Option<String> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for mount in mounts {
        if mount.r#type == "bind" || mount.options.iter().any(|o| o == "bind" || o == "rbind") {
            dirs.push(PathBuf::from(&mount.source));
            continue;
        }
        for option in &mount.options {
            if let Some(upper) = option.strip_prefix("upperdir=") {
                dirs.insert(0, PathBuf::from(upper));
            } else if let Some(lower) = option.strip_prefix("lowerdir=") {
                dirs.extend(lower.split(':').map(PathBuf::from));
            }
        }
    }
    for dir in dirs {
        match read_inside(&dir, path) {
            Found::File(text) => return Some(text),
            Found::Hidden => return None,
            Found::Absent => {}
        }
    }
    None
}

enum Found {
    File(String),
    /// A whiteout, a symlink or something else that is not a plain file: stop looking.
    Hidden,
    Absent,
}

fn read_inside(dir: &Path, relative: &str) -> Found {
    let mut current = dir.to_path_buf();
    let parts: Vec<&str> = relative.split('/').filter(|p| !p.is_empty()).collect();
    for (index, part) in parts.iter().enumerate() {
        if *part == ".." || *part == "." {
            return Found::Hidden;
        }
        current.push(part);
        let Ok(meta) = std::fs::symlink_metadata(&current) else { return Found::Absent };
        let last = index + 1 == parts.len();
        if last && meta.file_type().is_file() {
            // Bounded: account files are small.
            return match std::fs::read(&current) {
                Ok(bytes) if bytes.len() <= 1 << 20 => Found::File(String::from_utf8_lossy(&bytes).into_owned()),
                _ => Found::Hidden,
            };
        }
        if last || !meta.file_type().is_dir() {
            return Found::Hidden;
        }
    }
    Found::Absent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(user: &str) -> ImageConfig {
        ImageConfig {
            user: user.to_string(),
            env: vec!["PATH=/bin".into(), "A=1".into()],
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            working_dir: "/srv".into(),
            diff_ids: vec![],
        }
    }

    #[test]
    fn parses_oci_and_docker_configs_with_nulls() {
        let bytes = br#"{"architecture":"amd64","os":"linux","config":{"User":"1000:1000","Env":["PATH=/x"],
            "Entrypoint":null,"Cmd":["sh","-c","echo"],"WorkingDir":"/w"},
            "rootfs":{"type":"layers","diff_ids":["sha256:aa","sha256:bb"]}}"#;
        let parsed = ImageConfig::parse(bytes, "c").unwrap();
        assert_eq!(parsed.user, "1000:1000");
        assert!(parsed.entrypoint.is_empty());
        assert_eq!(parsed.cmd, ["sh", "-c", "echo"]);
        assert_eq!(parsed.working_dir, "/w");
        assert_eq!(parsed.diff_ids, ["sha256:aa", "sha256:bb"]);
        let bare = ImageConfig::parse(br#"{"rootfs":{"diff_ids":[]}}"#, "c").unwrap();
        assert_eq!(bare, ImageConfig::default());
        assert!(ImageConfig::parse(b"[]", "c").is_err());
        let err = ImageConfig::parse(br#"{"config":{"Cmd":"sh"}}"#, "c").unwrap_err().to_string();
        assert!(err.contains("config.Cmd is not a list"), "{err}");
    }

    #[test]
    fn args_are_entrypoint_then_command_line_or_cmd() {
        let mut image = config("");
        assert_eq!(process_args(&image, &[]).unwrap(), ["sh"]);
        assert_eq!(process_args(&image, &["echo".into(), "hi".into()]).unwrap(), ["echo", "hi"]);
        image.entrypoint = vec!["/init".into(), "--".into()];
        assert_eq!(process_args(&image, &[]).unwrap(), ["/init", "--", "sh"]);
        assert_eq!(process_args(&image, &["x".into()]).unwrap(), ["/init", "--", "x"]);
        let empty = ImageConfig::default();
        assert!(process_args(&empty, &[]).unwrap_err().to_string().contains("neither an entrypoint nor a command"));
    }

    #[test]
    fn env_image_first_then_flags_replace_in_place() {
        let env = environment(&["PATH=/bin".into(), "A=1".into()], &["A=2".into(), "B=3".into()]);
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3"]);
        assert_eq!(environment(&[], &[]), [spec::DEFAULT_PATH]);
    }

    #[test]
    fn users_numeric_and_by_name() {
        let accounts = Accounts {
            passwd: Some(
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65533::/:/bin/false\nweb:x:1000:1001::/:/bin/sh\n"
                    .into(),
            ),
            group: Some("root:x:0:\nstaff:x:50:web\n".into()),
        };
        let none = Accounts::default();
        assert_eq!(resolve_user("", &none).unwrap(), (0, 0));
        assert_eq!(resolve_user("1000", &none).unwrap(), (1000, 0));
        assert_eq!(resolve_user("1000", &accounts).unwrap(), (1000, 1001), "primary group from passwd");
        assert_eq!(resolve_user("1000:7", &accounts).unwrap(), (1000, 7));
        assert_eq!(resolve_user("nobody", &accounts).unwrap(), (65534, 65533));
        assert_eq!(resolve_user("web:staff", &accounts).unwrap(), (1000, 50));
        assert_eq!(resolve_user("2147483647:2147483647", &none).unwrap(), (2147483647, 2147483647));
        for bad in ["2147483648", "0:2147483648", "4294967296", "-1", "99999999999999999999"] {
            let err = resolve_user(bad, &none).unwrap_err().to_string();
            assert!(err.contains("out of range"), "{bad}: {err}");
        }
        assert!(resolve_user("web", &none).unwrap_err().to_string().contains("no /etc/passwd"));
        assert!(resolve_user("ghost", &accounts).unwrap_err().to_string().contains("no user \"ghost\""));
        assert!(resolve_user("0:ghosts", &accounts).unwrap_err().to_string().contains("no group \"ghosts\""));
        assert!(resolve_user("0:", &accounts).unwrap_err().to_string().contains("empty gid"));
    }

    #[test]
    fn spec_from_image_with_overrides() {
        let image = config("1000:1000");
        let overrides = Overrides {
            args: vec!["id".into()],
            env: vec!["A=9".into()],
            cwd: None,
            user: None,
            terminal: true,
            mounts: vec![parse_mount("type=bind,src=/tmp,dst=/data,options=rbind:ro").unwrap()],
        };
        let spec = from_image("ns", "c1", &image, &overrides, &Accounts::default()).unwrap();
        assert_eq!(spec["process"]["args"], json!(["id"]));
        assert_eq!(spec["process"]["env"], json!(["PATH=/bin", "A=9", "TERM=xterm"]), "a terminal gets TERM");
        assert_eq!(spec["process"]["cwd"], "/srv");
        assert_eq!(spec["process"]["user"], json!({"uid": 1000, "gid": 1000}));
        assert_eq!(spec["process"]["terminal"], true);
        assert_eq!(spec["linux"]["cgroupsPath"], "/ns/c1");
        assert_eq!(spec["hostname"], "c1");
        let mounts = spec["mounts"].as_array().unwrap();
        assert_eq!(mounts.last().unwrap()["destination"], "/data");
        assert_eq!(mounts.last().unwrap()["options"], json!(["rbind", "ro"]));
        for destination in ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"] {
            assert!(mounts.iter().any(|m| m["destination"] == destination), "{destination}");
        }
        let capabilities = &spec["process"]["capabilities"];
        assert!(capabilities.get("inheritable").is_none() && capabilities.get("ambient").is_none());
        assert_eq!(capabilities["bounding"].as_array().unwrap().len(), 14);
        assert_eq!(spec["process"]["rlimits"], json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]));
        assert!(spec["linux"]["maskedPaths"].as_array().unwrap().contains(&json!("/proc/kcore")));
        assert!(spec["linux"]["readonlyPaths"].as_array().unwrap().contains(&json!("/proc/sys")));

        let overrides = Overrides { cwd: Some("/tmp".into()), user: Some("7:8".into()), ..Default::default() };
        let spec = from_image("ns", "c1", &image, &overrides, &Accounts::default()).unwrap();
        assert_eq!(spec["process"]["args"], json!(["sh"]));
        assert_eq!(spec["process"]["cwd"], "/tmp");
        assert_eq!(spec["process"]["user"], json!({"uid": 7, "gid": 8}));
        let overrides = Overrides { cwd: Some("tmp".into()), ..Default::default() };
        assert!(from_image("ns", "c1", &image, &overrides, &Accounts::default()).is_err());
    }

    #[test]
    fn mounts_like_ctr() {
        let mount = parse_mount("type=tmpfs,dst=/scratch,options=size=1m").unwrap();
        assert_eq!(
            mount,
            json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]})
        );
        let mount = parse_mount("src=/a,dst=/b").unwrap();
        assert_eq!(mount["options"], json!(["rbind"]));
        assert!(parse_mount("src=/a").unwrap_err().contains("dst= is missing"));
        assert!(parse_mount("src=/a,dst=b").unwrap_err().contains("absolute"));
        assert!(parse_mount("src=/a,dst=/b,foo=1").unwrap_err().contains("unknown key"));
        assert!(parse_env("A=1").is_ok() && parse_env("A=").is_ok());
        assert!(parse_env("A").is_err() && parse_env("=1").is_err());
    }

    #[test]
    fn account_files_from_overlay_layers_never_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, top, bottom) = (dir.path().join("upper"), dir.path().join("top"), dir.path().join("bottom"));
        for d in [&upper, &top, &bottom] {
            std::fs::create_dir_all(d.join("etc")).unwrap();
        }
        std::fs::write(bottom.join("etc/passwd"), "old").unwrap();
        std::fs::write(bottom.join("etc/group"), "g").unwrap();
        std::fs::write(top.join("etc/passwd"), "new").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", top.join("etc/group")).unwrap();
        let overlay = berth_api::containerd::types::Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", dir.path().join("work").display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}:{}", top.display(), bottom.display()),
            ],
            ..Default::default()
        };
        assert_eq!(read_from_mounts(std::slice::from_ref(&overlay), "etc/passwd").as_deref(), Some("new"));
        assert_eq!(read_from_mounts(std::slice::from_ref(&overlay), "etc/group"), None, "a symlink hides it");
        assert_eq!(read_from_mounts(std::slice::from_ref(&overlay), "etc/shadow"), None);
        let bind = berth_api::containerd::types::Mount {
            r#type: "bind".into(),
            source: bottom.display().to_string(),
            options: vec!["rbind".into(), "rw".into()],
            ..Default::default()
        };
        assert_eq!(read_from_mounts(&[bind], "etc/passwd").as_deref(), Some("old"));
    }
}
