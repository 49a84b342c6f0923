//! Which processes make up a berth stack and how each is started.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Every berth service in start order. A service whose binary is not next to berthd is
/// skipped (the gateway then reports it as not running).
pub const SERVICES: &[&str] = &["content", "snapshot", "image", "metadata", "execution"];

/// The services that may run as several replicas over one `--root/<name>`.
const REPLICATED: &str = "content";

/// What the stack is asked to be (berthd's command line).
#[derive(Clone, Debug)]
pub struct Options {
    pub root: PathBuf,
    pub state: PathBuf,
    pub address: PathBuf,
    pub tcp: Option<String>,
    pub metadata: String,
    pub content_replicas: u32,
    /// The image service's per-registry settings directory (hosts.toml); None: its default.
    pub registry_config: Option<PathBuf>,
}

/// One process to start and supervise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Process {
    /// How logs and messages name it: `content`, `content-1`, `gateway`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The unix socket it serves on once ready.
    pub socket: PathBuf,
}

/// The processes of one stack: the services, then the gateway in front of them.
#[derive(Clone, Debug)]
pub struct Plan {
    pub services: Vec<Process>,
    pub gateway: Process,
    /// Services left out because their binary is not there, with the path looked at.
    pub skipped: Vec<(&'static str, PathBuf)>,
}

impl Plan {
    /// Every socket the stack will serve on, the gateway's last.
    pub fn sockets(&self) -> Vec<PathBuf> {
        self.services.iter().chain([&self.gateway]).map(|p| p.socket.clone()).collect()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--metadata {metadata:?}: expected `local` or `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`")]
    Metadata { metadata: String },
    #[error(
        "--content-replicas {0}: content replicas share their records and ref locks through etcd; \
         pass --metadata etcd://HOST:PORT or run one replica"
    )]
    ReplicasNeedEtcd(u32),
    #[error("--content-replicas must be at least 1")]
    NoReplicas,
    #[error("{0} not found: berthd starts the gateway from its own directory; build or install berth-gateway there")]
    NoGateway(PathBuf),
}

/// A service whose binary is there: where each of its instances will listen.
struct Present {
    service: &'static str,
    program: PathBuf,
    /// (process name, socket) per replica.
    instances: Vec<(String, PathBuf)>,
}

/// The peers each service calls directly (on their own sockets, not through the gateway).
/// A service not listed here takes no `--peer` flags.
fn peers_of(service: &str) -> &'static [&'static str] {
    match service {
        // Namespace deletes and garbage collection ask what the others hold.
        "metadata" => &["content", "snapshot", "image"],
        // Events, implicit namespaces and lease resources go to metadata.
        "content" => &["metadata"],
        // Diff reads and writes layers in content.
        "snapshot" => &["metadata", "content"],
        // Pulls write content, unpack into snapshots, take leases and publish events.
        "image" => &["content", "snapshot", "metadata"],
        // Container records and events from metadata, rootfs mounts from snapshot.
        "execution" => &["metadata", "snapshot", "content"],
        _ => &[],
    }
}

/// Works out the processes to start from `options`, with binaries looked up in `bin_dir`.
pub fn plan(options: &Options, bin_dir: &Path) -> Result<Plan, PlanError> {
    let local = match options.metadata.as_str() {
        "local" => true,
        m if m.strip_prefix("etcd://").is_some_and(|rest| !rest.is_empty()) => false,
        m => return Err(PlanError::Metadata { metadata: m.to_string() }),
    };
    match options.content_replicas {
        0 => return Err(PlanError::NoReplicas),
        1 => {}
        n if local => return Err(PlanError::ReplicasNeedEtcd(n)),
        _ => {}
    }
    let gateway_program = bin_dir.join("berth-gateway");
    if !gateway_program.is_file() {
        return Err(PlanError::NoGateway(gateway_program));
    }

    // First where every service will listen, then each one's command line (which names its peers).
    let mut skipped = Vec::new();
    let mut present: Vec<Present> = Vec::new();
    for &service in SERVICES {
        let program = bin_dir.join(format!("berth-{service}"));
        if !program.is_file() {
            skipped.push((service, program));
            continue;
        }
        let replicas = if service == REPLICATED { options.content_replicas } else { 1 };
        let names: Vec<String> = if replicas == 1 {
            vec![service.to_string()]
        } else {
            (0..replicas).map(|i| format!("{service}-{i}")).collect()
        };
        let instances = names.into_iter().map(|name| {
            let socket = options.state.join(format!("{name}.sock"));
            (name, socket)
        });
        present.push(Present { service, program, instances: instances.collect() });
    }
    let addresses = |service: &str| -> Option<String> {
        let found = present.iter().find(|p| p.service == service)?;
        Some(found.instances.iter().map(|(_, socket)| socket.display().to_string()).collect::<Vec<_>>().join(","))
    };

    let mut services = Vec::new();
    let mut backends = Vec::new();
    for Present { service, program, instances } in &present {
        for (name, socket) in instances {
            let mut args = vec![
                "--root".into(),
                options.root.join(service).into_os_string(),
                "--listen".into(),
                socket.clone().into_os_string(),
                "--metadata".into(),
                options.metadata.clone().into(),
            ];
            if let (&"image", Some(dir)) = (service, &options.registry_config) {
                args.extend(["--registry-config".into(), dir.clone().into_os_string()]);
            }
            for peer in peers_of(service) {
                if let Some(addresses) = addresses(peer) {
                    args.extend(["--peer".into(), format!("{peer}={addresses}").into()]);
                }
            }
            services.push(Process { name: name.clone(), program: program.clone(), args, socket: socket.clone() });
        }
        backends.push(format!("{service}={}", addresses(service).unwrap_or_default()));
    }
    let mut args: Vec<OsString> = vec!["--address".into(), options.address.clone().into_os_string()];
    if let Some(tcp) = &options.tcp {
        args.extend(["--tcp".into(), tcp.into()]);
    }
    for backend in backends {
        args.extend(["--backend".into(), backend.into()]);
    }
    let gateway =
        Process { name: "gateway".to_string(), program: gateway_program, args, socket: options.address.clone() };
    Ok(Plan { services, gateway, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(metadata: &str, content_replicas: u32) -> Options {
        Options {
            root: "/var/lib/berth".into(),
            state: "/run/berth".into(),
            address: "/run/berth/berth.sock".into(),
            tcp: None,
            metadata: metadata.to_string(),
            content_replicas,
            registry_config: None,
        }
    }

    fn bin_dir(binaries: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for binary in binaries {
            std::fs::write(dir.path().join(binary), b"").unwrap();
        }
        dir
    }

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn starts_the_services_that_exist_then_the_gateway() {
        let bin = bin_dir(&["berth-content", "berth-gateway", "berth-metadata"]);
        let plan = plan(&options("local", 1), bin.path()).unwrap();
        let names: Vec<&str> = plan.services.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["content", "metadata"]);
        let skipped: Vec<&str> = plan.skipped.iter().map(|(name, _)| *name).collect();
        assert_eq!(skipped, ["snapshot", "image", "execution"]);
        let content = &plan.services[0];
        assert_eq!(content.program, bin.path().join("berth-content"));
        assert_eq!(
            strings(&content.args),
            [
                "--root",
                "/var/lib/berth/content",
                "--listen",
                "/run/berth/content.sock",
                "--metadata",
                "local",
                "--peer",
                "metadata=/run/berth/metadata.sock"
            ]
        );
        // Each is told where its peers are (only the ones that run: no snapshot, no image).
        assert_eq!(strings(&plan.services[1].args)[6..], ["--peer", "content=/run/berth/content.sock"]);
        assert_eq!(
            strings(&plan.gateway.args),
            [
                "--address",
                "/run/berth/berth.sock",
                "--backend",
                "content=/run/berth/content.sock",
                "--backend",
                "metadata=/run/berth/metadata.sock"
            ]
        );
        assert_eq!(plan.sockets().last().unwrap(), Path::new("/run/berth/berth.sock"));
    }

    #[test]
    fn the_image_service_gets_the_registry_settings_directory() {
        let bin = bin_dir(&["berth-content", "berth-image", "berth-gateway"]);
        let default = plan(&options("local", 1), bin.path()).unwrap();
        assert!(default.services.iter().all(|p| !strings(&p.args).contains(&"--registry-config")));
        let options = Options { registry_config: Some("/etc/certs.d".into()), ..options("local", 1) };
        let plan = plan(&options, bin.path()).unwrap();
        let image = plan.services.iter().find(|p| p.name == "image").unwrap();
        assert!(strings(&image.args).windows(2).any(|w| w == ["--registry-config", "/etc/certs.d"]));
        let content = plan.services.iter().find(|p| p.name == "content").unwrap();
        assert!(!strings(&content.args).contains(&"--registry-config"));
    }

    #[test]
    fn content_replicas_share_a_root_and_need_etcd() {
        let bin = bin_dir(&["berth-content", "berth-gateway"]);
        assert_eq!(plan(&options("local", 2), bin.path()).unwrap_err(), PlanError::ReplicasNeedEtcd(2));
        assert_eq!(plan(&options("local", 0), bin.path()).unwrap_err(), PlanError::NoReplicas);

        // berth-content shares its ref locks through etcd, so replicas on etcd are allowed.
        let mut opts = options("etcd://127.0.0.1:2379", 2);
        opts.tcp = Some("127.0.0.1:7000".into());
        let plan = plan(&opts, bin.path()).unwrap();
        let names: Vec<&str> = plan.services.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["content-0", "content-1"]);
        assert!(plan.services.iter().all(|p| p.args[1] == "/var/lib/berth/content"));
        assert_eq!(plan.services[1].socket, Path::new("/run/berth/content-1.sock"));
        assert_eq!(plan.services[1].args[5], "etcd://127.0.0.1:2379");
        assert_eq!(
            strings(&plan.gateway.args)[2..],
            ["--tcp", "127.0.0.1:7000", "--backend", "content=/run/berth/content-0.sock,/run/berth/content-1.sock"]
        );
    }

    #[test]
    fn bad_metadata_and_a_missing_gateway_are_errors() {
        let bin = bin_dir(&["berth-content"]);
        assert!(matches!(plan(&options("local", 1), bin.path()), Err(PlanError::NoGateway(_))));
        assert!(matches!(plan(&options("redis://x", 1), bin.path()), Err(PlanError::Metadata { .. })));
        assert!(matches!(plan(&options("etcd://", 1), bin.path()), Err(PlanError::Metadata { .. })));
    }
}
