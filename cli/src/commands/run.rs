//! `berth run IMAGE ID [CMD...]`: pull when needed, prepare the rootfs, create the container
//! record with a spec from the image config, create and start its task with this terminal's
//! stdio, wait, and exit with the container's code — what `ctr run` does, client-side. With
//! `--checkpoint`, the container gets the spec of the checkpoint image and its task is
//! restored from it (read-write layer and processes) instead of started afresh.

use std::time::Duration;

use anyhow::Context as _;
use berth_api::containerd::runc::v1::Options as RuncOptions;
use berth_api::containerd::services::containers::v1::container::Runtime;
use berth_api::containerd::services::containers::v1::{Container, CreateContainerRequest, DeleteContainerRequest};
use berth_api::containerd::services::images::v1::GetImageRequest;
use berth_api::containerd::services::images::v1::images_client::ImagesClient;
use berth_api::containerd::services::snapshots::v1::RemoveSnapshotRequest;
use berth_api::containerd::services::tasks::v1::{
    CloseIoRequest, CreateTaskRequest, DeleteProcessRequest, DeleteTaskRequest, KillRequest, ResizePtyRequest,
    StartRequest, WaitRequest,
};
use berth_api::containerd::types::{Descriptor, Mount};
use berth_api::prost_types::Any;
use prost::Message as _;
use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};

use crate::args::parse_label;
use crate::client::Client;
use crate::commands::containers::{DEFAULT_RUNTIME, DEFAULT_SNAPSHOTTER};
use crate::commands::tasks::{Exited, checkpoint, task_error};
use crate::errors::Subject;
use crate::image_spec::{self, Accounts, Overrides};
use crate::rootfs;
use crate::taskio::{Ends, Fifos, RawTerminal, window_size};

/// How long output may still arrive after the process ended.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove the task, the container and its snapshot once it exits
    #[arg(long, conflicts_with = "detach")]
    pub rm: bool,
    /// Start the container and print its ID instead of waiting (attach later with `berth tasks attach`)
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Give the container a terminal (this one, in raw mode)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Runtime that runs the container
    #[arg(long, default_value = DEFAULT_RUNTIME)]
    pub runtime: String,
    /// The OCI runtime binary (name or path) instead of runc, as ctr's --runc-binary
    #[arg(long, value_name = "BINARY")]
    pub runc_binary: Option<String>,
    /// Snapshotter holding the container's root filesystem
    #[arg(long, default_value = DEFAULT_SNAPSHOTTER)]
    pub snapshotter: String,
    /// Environment variable, KEY=VALUE, after the image's (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = image_spec::parse_env)]
    pub env: Vec<String>,
    /// Extra mount, e.g. type=bind,src=/host,dst=/data,options=rbind:ro (repeatable)
    #[arg(long = "mount", value_name = "SPEC", value_parser = image_spec::parse_mount)]
    pub mounts: Vec<Value>,
    /// User to run as: uid, uid:gid, name or name:group [default: the image's]
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container [default: the image's]
    #[arg(long)]
    pub cwd: Option<String>,
    /// Label for the container record, key=value (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Pull over plain HTTP (always so for registries on 127.0.0.1 or localhost)
    #[arg(long)]
    pub plain_http: bool,
    /// Restore the container from this checkpoint image (made by `berth tasks checkpoint`)
    /// instead of starting it afresh: its spec, read-write layer and processes come back
    #[arg(long, value_name = "REF")]
    pub checkpoint: Option<String>,
    /// Image to run, e.g. docker.io/library/busybox:latest or 127.0.0.1:5000/app:1
    pub image: String,
    /// Container ID
    pub id: String,
    /// Command to run instead of the image's Cmd (its entrypoint stays)
    #[arg(value_name = "COMMAND", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    berth_core::identifiers::validate("container id", &args.id)
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    let checkpoint = match &args.checkpoint {
        Some(reference) => Some(Checkpoint::load(client, reference).await?),
        None => None,
    };
    let image = match rootfs::find(client, &args.image).await? {
        Some(image) => image,
        None => {
            let plain_http = args.plain_http || rootfs::is_local_registry(&args.image);
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
            rootfs::pull(client, &args.image, &args.snapshotter, plain_http, |line| {
                if terminal {
                    eprintln!("{line}");
                }
            })
            .await?
        }
    };
    // Under a lease until the container's record holds its snapshot; the lease is made while
    // the image is read (one round trip less before the container starts).
    let (image, lease) = tokio::join!(rootfs::load(client, &image), rootfs::Lease::create(client));
    let lease = lease?;
    let image = match image {
        Ok(image) => image,
        Err(err) => {
            lease.release().await;
            return Err(err);
        }
    };
    let created = Created { client, id: args.id.clone(), snapshotter: args.snapshotter.clone(), container: false };
    let mounts = match rootfs::prepare(client, &lease, &image, &args.snapshotter, &args.id).await {
        Ok(mounts) => mounts,
        Err(err) => {
            lease.release().await;
            return Err(err);
        }
    };
    let made = create_container(client, &lease, &args, &image, &mounts, checkpoint.as_ref()).await;
    lease.release().await;
    if let Err(err) = made {
        created.undo().await;
        return Err(err);
    }
    let created = Created { container: true, ..created };
    // A restored process keeps the terminal (or not) it was dumped with.
    let terminal = checkpoint.as_ref().map(Checkpoint::terminal).unwrap_or(args.tty);
    let fifos = match Fifos::create(&format!("{}-{}", client.namespace(), args.id), terminal) {
        Ok(fifos) => fifos,
        Err(err) => {
            created.undo().await;
            return Err(err);
        }
    };
    let ends = if args.detach { None } else { Some(Ends::open(&fifos.stdin, &fifos.stdout, &fifos.stderr)?) };
    let request = CreateTaskRequest {
        container_id: args.id.clone(),
        rootfs: mounts,
        stdin: fifos.stdin.clone(),
        stdout: fifos.stdout.clone(),
        stderr: fifos.stderr.clone(),
        terminal,
        checkpoint: checkpoint.as_ref().map(|c| c.index.clone()),
        ..Default::default()
    };
    if let Err(status) = client.tasks().create(request).await {
        fifos.remove();
        created.undo().await;
        return Err(task_error(client, status, &args.id));
    }
    let Some(ends) = ends else {
        if let Err(err) = start(client, &args.id, "").await {
            let _ = client.tasks().delete(DeleteTaskRequest { container_id: args.id.clone() }).await;
            fifos.remove();
            return Err(err);
        }
        crate::output::print(&format!("{}\n", args.id))?;
        return Ok(());
    };
    let status = attach_and_wait(client, &args.id, "", ends, terminal, Attach::Start).await;
    let deleted = client.tasks().delete(DeleteTaskRequest { container_id: args.id.clone() }).await;
    fifos.remove();
    let status = status?.unwrap_or_default();
    deleted.map_err(|status| task_error(client, status, &args.id))?;
    if args.rm {
        created.undo().await;
    }
    Exited::result(status)
}

/// What `run` made so far, removed again on failure and by `--rm`.
struct Created<'a> {
    client: &'a Client,
    id: String,
    snapshotter: String,
    container: bool,
}

impl Created<'_> {
    async fn undo(&self) {
        // Both are tried whatever the other's outcome, so they go at once (each is a durable
        // write in its own service): `run --rm` waits for the slower one only.
        let container = async {
            if self.container {
                let request = DeleteContainerRequest { id: self.id.clone() };
                if let Err(status) = self.client.containers().delete(request).await {
                    eprintln!("berth: {:#}", self.client.explain(status, Subject::Container(&self.id)));
                }
            }
        };
        let snapshot = async {
            let request = RemoveSnapshotRequest { snapshotter: self.snapshotter.clone(), key: self.id.clone() };
            if let Err(status) = self.client.snapshots().remove(request).await {
                let subject = Subject::Snapshot { key: &self.id, snapshotter: &self.snapshotter };
                eprintln!("berth: {:#}", self.client.explain(status, subject));
            }
        };
        tokio::join!(container, snapshot);
    }
}

/// A checkpoint image to restore from: its index, and the spec the container had.
struct Checkpoint {
    index: Descriptor,
    spec: Option<Any>,
}

impl Checkpoint {
    /// Reads checkpoint image `reference`; a clear error when there is none such or it is not
    /// a checkpoint.
    async fn load(client: &Client, reference: &str) -> anyhow::Result<Checkpoint> {
        let found = ImagesClient::new(client.transport()).get(GetImageRequest { name: reference.to_string() }).await;
        let image = match found {
            Ok(found) => found.into_inner().image,
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => return Err(client.explain(status, Subject::Server)),
        };
        let image = image.ok_or_else(|| {
            anyhow::anyhow!(
                "checkpoint {reference} not found in namespace {} (make one with `berth tasks checkpoint ID`)",
                client.namespace()
            )
        })?;
        let index = image.target.unwrap_or_default();
        if index.media_type != checkpoint::INDEX_MEDIA_TYPE {
            anyhow::bail!(
                "{reference} is not a checkpoint: it points at a {} (a checkpoint is an {})",
                if index.media_type.is_empty() { "blob without media type" } else { &index.media_type },
                checkpoint::INDEX_MEDIA_TYPE
            );
        }
        let data = rootfs::read_blob(client, &index.digest).await?;
        let parsed: Value = serde_json::from_slice(&data)
            .with_context(|| format!("checkpoint {reference}: index {} is not JSON", index.digest))?;
        let manifests = parsed["manifests"].as_array().cloned().unwrap_or_default();
        let of_type = |media_type: &str| manifests.iter().find(|m| m["mediaType"] == media_type).cloned();
        if of_type(checkpoint::CRIU_MEDIA_TYPE).is_none() {
            anyhow::bail!("{reference} is not a checkpoint: its index holds no CRIU image");
        }
        let spec = match of_type(checkpoint::CONFIG_MEDIA_TYPE) {
            Some(config) => {
                let digest = config["digest"].as_str().unwrap_or_default();
                let data = rootfs::read_blob(client, digest).await?;
                Some(Any::decode(data.as_slice()).with_context(|| format!("checkpoint {reference}: spec {digest}"))?)
            }
            None => None,
        };
        Ok(Checkpoint { index, spec })
    }

    /// Whether the checkpointed process had a terminal (its spec's `process.terminal`).
    fn terminal(&self) -> bool {
        let spec = self.spec.as_ref().and_then(|any| serde_json::from_slice::<Value>(&any.value).ok());
        spec.is_some_and(|spec| spec["process"]["terminal"] == true)
    }
}

async fn create_container(
    client: &Client,
    lease: &rootfs::Lease<'_>,
    args: &Args,
    image: &rootfs::RunImage,
    mounts: &[Mount],
    checkpoint: Option<&Checkpoint>,
) -> anyhow::Result<()> {
    let user = args.user.clone().unwrap_or_else(|| image.config.user.clone());
    // Names (and a uid's primary group) come from the image's own account files.
    let accounts = if user.is_empty() {
        Accounts::default()
    } else {
        Accounts {
            passwd: image_spec::read_from_mounts(mounts, "etc/passwd"),
            group: image_spec::read_from_mounts(mounts, "etc/group"),
        }
    };
    let overrides = Overrides {
        args: args.args.clone(),
        env: args.env.clone(),
        cwd: args.cwd.clone(),
        user: args.user.clone(),
        terminal: args.tty,
        mounts: args.mounts.clone(),
    };
    let spec = match checkpoint.and_then(|c| c.spec.clone()) {
        // The restored processes expect the container they were dumped from.
        Some(spec) => spec,
        None => crate::spec::to_any(
            &image_spec::from_image(client.namespace(), &args.id, &image.config, &overrides, &accounts)
                .with_context(|| format!("image {}", image.name))?,
        )?,
    };
    let container = Container {
        id: args.id.clone(),
        labels: args.labels.iter().cloned().collect(),
        image: image.name.clone(),
        runtime: Some(Runtime { name: args.runtime.clone(), options: args.runc_binary.as_deref().map(runc_options) }),
        spec: Some(spec),
        snapshotter: args.snapshotter.clone(),
        snapshot_key: args.id.clone(),
        ..Default::default()
    };
    lease
        .containers()
        .create(CreateContainerRequest { container: Some(container) })
        .await
        .map_err(|status| client.explain(status, Subject::Container(&args.id)))?;
    Ok(())
}

/// Runtime options naming the OCI runtime binary (containerd.runc.v1.Options).
fn runc_options(binary: &str) -> Any {
    let options = RuncOptions { binary_name: binary.to_string(), ..Default::default() };
    Any { type_url: "containerd.runc.v1.Options".into(), value: options.encode_to_vec() }
}

/// Starts a task (exec_id empty) or an exec.
pub async fn start(client: &Client, id: &str, exec_id: &str) -> anyhow::Result<u32> {
    let request = StartRequest { container_id: id.to_string(), exec_id: exec_id.to_string() };
    let started = client.tasks().start(request).await.map_err(|status| task_error(client, status, id))?;
    Ok(started.into_inner().pid)
}

/// How [`attach_and_wait`] treats the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// Start it, pass SIGINT and SIGTERM on, close its stdin when ours ends (run, start, exec).
    Start,
    /// Already running (a task started with -d): SIGINT or SIGTERM only detach this client,
    /// and the end of our stdin leaves the process's stdin open.
    Running,
}

/// Copies the process's stdio through `ends` (and the terminal's size), and returns its exit
/// status, or None when `Attach::Running` was detached by a signal.
pub async fn attach_and_wait(
    client: &Client,
    id: &str,
    exec_id: &str,
    ends: Ends,
    terminal: bool,
    mode: Attach,
) -> anyhow::Result<Option<u32>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut winch = signal(SignalKind::window_change())?;
    let raw = if terminal { RawTerminal::enter() } else { None };
    // The exit status stays with the task until it is deleted: waiting after Start misses nothing.
    let wait_request = WaitRequest { container_id: id.to_string(), exec_id: exec_id.to_string() };
    let mut tasks = client.tasks();
    let mut waiting = std::pin::pin!(tasks.wait(wait_request));
    // The task's terminal exists from Create on: size it before its process runs. An exec's
    // appears at its Start.
    if terminal && exec_id.is_empty() {
        resize(client, id, exec_id).await;
    }
    if mode == Attach::Start
        && let Err(err) = start(client, id, exec_id).await
    {
        drop(raw);
        return Err(err);
    }
    let closer = client.clone();
    let (close_id, close_exec) = (id.to_string(), exec_id.to_string());
    let copies = ends.start(async move {
        if mode == Attach::Start {
            let request = CloseIoRequest { container_id: close_id, exec_id: close_exec, stdin: true };
            let _ = closer.tasks().close_io(request).await;
        }
    });
    if terminal && !exec_id.is_empty() {
        resize(client, id, exec_id).await;
    }
    let waited = loop {
        let signal = tokio::select! {
            waited = &mut waiting => break Some(waited),
            _ = interrupt.recv() => libc::SIGINT,
            _ = terminate.recv() => libc::SIGTERM,
            _ = winch.recv() => {
                if terminal {
                    resize(client, id, exec_id).await;
                }
                continue;
            }
        };
        match mode {
            Attach::Start => forward(client, id, exec_id, signal).await,
            Attach::Running => break None,
        }
    };
    let Some(waited) = waited else {
        copies.finish(Duration::ZERO).await;
        drop(raw);
        return Ok(None);
    };
    copies.finish(DRAIN).await;
    drop(raw);
    let waited = waited.map_err(|status| task_error(client, status, id))?;
    Ok(Some(waited.into_inner().exit_status))
}

async fn forward(client: &Client, id: &str, exec_id: &str, signal: i32) {
    let request =
        KillRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), signal: signal as u32, all: false };
    if let Err(status) = client.tasks().kill(request).await {
        eprintln!("berth: cannot pass the signal on: {:#}", task_error(client, status, id));
    }
}

async fn resize(client: &Client, id: &str, exec_id: &str) {
    if let Some((width, height)) = window_size() {
        let request = ResizePtyRequest { container_id: id.to_string(), exec_id: exec_id.to_string(), width, height };
        let _ = client.tasks().resize_pty(request).await;
    }
}

/// Deletes an exec once it ended.
pub async fn delete_exec(client: &Client, id: &str, exec_id: &str) -> anyhow::Result<()> {
    let request = DeleteProcessRequest { container_id: id.to_string(), exec_id: exec_id.to_string() };
    client.tasks().delete_process(request).await.map_err(|status| task_error(client, status, id))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    use crate::args::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let cli = Cli::try_parse_from(["berth", "run"].iter().chain(args.iter()).copied())?;
        match cli.command {
            Command::Run(args) => Ok(args),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_like_ctr() {
        let args = parse(&["busybox", "c1"]).unwrap();
        assert_eq!((args.image.as_str(), args.id.as_str()), ("busybox", "c1"));
        assert_eq!(args.runtime, "io.containerd.runc.v2");
        assert_eq!(args.snapshotter, "overlayfs");
        assert!(!args.rm && !args.detach && !args.tty && args.args.is_empty());
    }

    #[test]
    fn flags_then_command_with_its_own_flags() {
        let args = parse(&[
            "--rm",
            "-t",
            "--env",
            "A=1",
            "--mount",
            "type=bind,src=/tmp,dst=/data,options=rbind:ro",
            "-u",
            "1000:1000",
            "--cwd",
            "/tmp",
            "img",
            "c1",
            "sh",
            "-c",
            "echo --rm",
        ])
        .unwrap();
        assert!(args.rm && args.tty);
        assert_eq!(args.env, ["A=1"]);
        assert_eq!(args.mounts[0]["destination"], "/data");
        assert_eq!(args.user.as_deref(), Some("1000:1000"));
        assert_eq!(args.args, ["sh", "-c", "echo --rm"]);
        assert!(parse(&["--rm", "-d", "img", "c1"]).is_err(), "--rm and -d do not mix");
        assert!(parse(&["--env", "NOEQUALS", "img", "c1"]).is_err());
        assert!(parse(&["img"]).is_err(), "ID is required");
        let restore = parse(&["--checkpoint", "ck:1", "--runc-binary", "crun", "img", "c2"]).unwrap();
        assert_eq!(restore.checkpoint.as_deref(), Some("ck:1"));
        assert_eq!(restore.runc_binary.as_deref(), Some("crun"));
    }
}
