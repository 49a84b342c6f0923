//! OCI runtime specs as container records carry them: JSON inside a `google.protobuf.Any`
//! whose type URL is containerd's name for the runtime-spec `Spec` type.

use berth_api::prost_types::Any;
use serde_json::{Value, json};

/// The type URL containerd registers for `specs.Spec` (github.com/opencontainers/runtime-spec).
pub const TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// The runtime-spec version our default spec claims.
pub const OCI_VERSION: &str = "1.0.2";

/// containerd's default PATH for processes whose image sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Capabilities containerd grants by default.
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// A minimal Linux spec with containerd's defaults (root user, `rootfs`, the usual mounts and
/// the cgroup filesystem read-only, namespaces, masked and read-only paths, no inheritable or
/// ambient capabilities, RLIMIT_NOFILE 1024:1024 set rather than inherited, cgroup
/// `/<namespace>/<id>`). `args` is the process to run;
/// when empty the spec has none, for whoever starts the container to fill in from the image.
pub fn default_spec(namespace: &str, id: &str, args: &[String]) -> Value {
    let capabilities = DEFAULT_CAPABILITIES.to_vec();
    let mut process = json!({
        "user": {"uid": 0, "gid": 0},
        "env": [DEFAULT_PATH],
        "cwd": "/",
        "capabilities": {"bounding": capabilities, "effective": capabilities, "permitted": capabilities},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true,
    });
    if !args.is_empty() {
        process["args"] = json!(args);
    }
    json!({
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs"},
        "mounts": [
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
            mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
            mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
            mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
            mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]),
            mount("/run", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "cgroupsPath": format!("/{namespace}/{id}"),
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Value {
    json!({"destination": destination, "type": kind, "source": source, "options": options})
}

/// Reads a spec given by the user: a JSON object with an `ociVersion`. `origin` names where it
/// came from, for the error.
pub fn parse(bytes: &[u8], origin: &str) -> anyhow::Result<Value> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|err| anyhow::anyhow!("{origin} is not an OCI runtime spec: invalid JSON: {err}"))?;
    let Some(object) = value.as_object() else {
        anyhow::bail!("{origin} is not an OCI runtime spec: expected a JSON object like {{\"ociVersion\": ...}}");
    };
    if !object.get("ociVersion").is_some_and(Value::is_string) {
        anyhow::bail!(
            "{origin} is not an OCI runtime spec: it has no \"ociVersion\" (start from the default: \
             `berth containers create IMAGE ID` then `berth containers info --spec ID`)"
        );
    }
    Ok(value)
}

/// The spec as containerd stores it: compact JSON in an Any of [`TYPE_URL`].
pub fn to_any(spec: &Value) -> anyhow::Result<Any> {
    Ok(Any { type_url: TYPE_URL.to_string(), value: serde_json::to_vec(spec)? })
}

/// The spec inside a record, as ctr shows it: the decoded JSON when the Any holds a runtime
/// spec, otherwise the Any itself (type URL and base64 value).
pub fn decode(any: &Any) -> Value {
    if any.type_url.rsplit('/').next() == Some("Spec")
        && let Ok(value) = serde_json::from_slice::<Value>(&any.value)
    {
        return value;
    }
    crate::output::any_json(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_has_containerd_defaults() {
        let spec = default_spec("ns1", "web", &[]);
        assert_eq!(spec["ociVersion"], OCI_VERSION);
        assert_eq!(spec["root"]["path"], "rootfs");
        assert_eq!(spec["process"]["cwd"], "/");
        assert!(spec["process"].get("args").is_none(), "no process unless given");
        assert_eq!(spec["linux"]["cgroupsPath"], "/ns1/web");
        assert_eq!(spec["mounts"][0]["destination"], "/proc");
        assert_eq!(spec["process"]["capabilities"]["bounding"].as_array().unwrap().len(), 14);
        let spec = default_spec("ns1", "web", &["sh".to_string(), "-c".to_string(), "true".to_string()]);
        assert_eq!(spec["process"]["args"], json!(["sh", "-c", "true"]));
    }

    #[test]
    fn any_round_trip() {
        let spec = default_spec("default", "c1", &["sh".to_string()]);
        let any = to_any(&spec).unwrap();
        assert_eq!(any.type_url, TYPE_URL);
        assert!(!any.value.contains(&b'\n'), "compact JSON");
        assert_eq!(decode(&any), spec);
        let parsed = parse(&any.value, "spec.json").unwrap();
        assert_eq!(parsed, spec);
    }

    #[test]
    fn other_anys_show_their_type() {
        let any = Any { type_url: "example.com/Other".into(), value: vec![1, 2, 3] };
        assert_eq!(decode(&any), json!({"type_url": "example.com/Other", "value": "AQID"}));
        let broken = Any { type_url: TYPE_URL.into(), value: b"{not json".to_vec() };
        assert_eq!(decode(&broken)["type_url"], TYPE_URL);
    }

    #[test]
    fn user_specs_must_look_like_specs() {
        assert!(parse(br#"{"ociVersion":"1.1.0"}"#, "f").is_ok());
        let err = parse(b"{", "spec.json").unwrap_err().to_string();
        assert!(err.starts_with("spec.json is not an OCI runtime spec: invalid JSON"), "{err}");
        let err = parse(b"[1]", "-").unwrap_err().to_string();
        assert!(err.contains("expected a JSON object"), "{err}");
        let err = parse(br#"{"process":{}}"#, "f").unwrap_err().to_string();
        assert!(err.contains("ociVersion"), "{err}");
    }
}
