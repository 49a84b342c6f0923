//! Shared by the tasks_* tests: a stack with containers ready to run (a busybox rootfs copied
//! into an overlayfs snapshot made through the gateway, a container record with an OCI spec
//! from `runc spec`), FIFOs for stdio, and a cleanup that leaves no shim, container or mount
//! behind even when a test fails.

#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use berth_e2e::content::in_namespace;
use berth_e2e::{Stack, procs, require_root, require_tool};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteTaskRequest, GetRequest, KillRequest, StartRequest,
    WaitRequest,
};
use nix::sys::signal::Signal;
use tonic::transport::Channel;

/// Not `tasks`: ctr puts containers in cgroup `/<namespace>/<id>`, and `tasks` is a file in
/// every cgroup v1 directory.
pub const NS: &str = "e2e-tasks";

/// A berth stack able to run containers, cleaned up (tasks, shims, mounts) on drop.
pub struct Host {
    pub stack: Stack,
    pub channel: Channel,
    rootfs: PathBuf,
    io_dir: PathBuf,
}

/// FIFO paths for a process's stdio, and the test's ends of them.
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

impl Host {
    pub async fn start() -> Host {
        require_root();
        require_tool("runc");
        let stack = Stack::start().await;
        let channel = stack.containerd_channel().await;
        let rootfs = berth_e2e::images::busybox().unpack(&stack.dir.path().join("busybox"));
        let io_dir = stack.dir.path().join("io");
        std::fs::create_dir_all(&io_dir).unwrap();
        Host { stack, channel, rootfs, io_dir }
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }

    pub fn execution_root(&self) -> PathBuf {
        self.stack.root.join("execution")
    }

    /// An OCI spec for `args` in container `id`, from runc's default spec.
    pub fn spec(&self, id: &str, args: &[&str], terminal: bool) -> serde_json::Value {
        let dir = self.stack.dir.path().join("spec");
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("config.json"));
        let made = Command::new("runc").arg("spec").current_dir(&dir).output().unwrap();
        assert!(made.status.success(), "runc spec: {}", String::from_utf8_lossy(&made.stderr));
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        spec["process"]["terminal"] = terminal.into();
        spec["process"]["args"] = args.iter().map(|a| serde_json::Value::from(*a)).collect();
        spec["root"] = serde_json::json!({"path": "rootfs", "readonly": false});
        spec["hostname"] = id.into();
        spec["linux"]["cgroupsPath"] = format!("/berth-e2e/{NS}-{id}").into();
        spec
    }

    /// A container `id` running `args`: a snapshot with the busybox rootfs and its record.
    pub async fn container(&self, id: &str, args: &[&str]) {
        self.container_with(id, self.spec(id, args, false), "io.containerd.runc.v2").await;
    }

    pub async fn container_with(&self, id: &str, spec: serde_json::Value, runtime: &str) {
        self.container_with_options(id, spec, runtime, None).await
    }

    /// A container on `runtime` with runtime `options` (e.g. containerd.runc.v1.Options).
    pub async fn container_with_options(
        &self,
        id: &str,
        spec: serde_json::Value,
        runtime: &str,
        options: Option<prost_types::Any>,
    ) {
        // The record first: it keeps the snapshot from the collector from the moment it exists
        // (a collection triggered by another test's deletion may run at any time).
        let container = Container {
            id: id.into(),
            image: "busybox:e2e".into(),
            runtime: Some(Runtime { name: runtime.into(), options }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: serde_json::to_vec(&spec).unwrap(),
            }),
            snapshotter: "overlayfs".into(),
            snapshot_key: id.into(),
            ..Default::default()
        };
        ContainersClient::new(self.channel.clone())
            .create(in_namespace(CreateContainerRequest { container: Some(container) }, NS))
            .await
            .unwrap_or_else(|e| panic!("create container {id}: {e}"));
        let prepare = PrepareSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: id.into(),
            parent: String::new(),
            labels: HashMap::new(),
        };
        let mounts = SnapshotsClient::new(self.channel.clone())
            .prepare(in_namespace(prepare, NS))
            .await
            .unwrap_or_else(|e| panic!("prepare snapshot {id}: {e}"))
            .into_inner()
            .mounts;
        let target = self.stack.dir.path().join(format!("fill-{id}"));
        std::fs::create_dir_all(&target).unwrap();
        for mount in &mounts {
            let mut command = Command::new("mount");
            if mount.r#type != "bind" {
                command.args(["-t", &mount.r#type]);
            }
            if !mount.options.is_empty() {
                command.args(["-o", &mount.options.join(",")]);
            }
            let status = command.arg(&mount.source).arg(&target).status().unwrap();
            assert!(status.success(), "mount {mount:?}");
        }
        let copied = Command::new("cp").arg("-a").arg(format!("{}/.", self.rootfs.display())).arg(&target).status();
        let unmounted = Command::new("umount").arg(&target).status().unwrap();
        assert!(copied.unwrap().success() && unmounted.success(), "fill the rootfs of {id}");
    }

    /// FIFOs for a process called `name`.
    pub fn fifos(&self, name: &str) -> Stdio {
        let path = |stream: &str| {
            let path = self.io_dir.join(format!("{name}-{stream}"));
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            path.display().to_string()
        };
        Stdio { stdin: path("stdin"), stdout: path("stdout"), stderr: path("stderr") }
    }

    /// Creates the task of container `id` with `stdio`; returns its pid.
    pub async fn create(&self, id: &str, stdio: &Stdio) -> u32 {
        let request = CreateTaskRequest {
            container_id: id.into(),
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            ..Default::default()
        };
        let created = self.tasks().create(in_namespace(request, NS)).await;
        created.unwrap_or_else(|e| panic!("create task {id}: {e}\n{}", self.stack.logs())).into_inner().pid
    }

    /// Creates and starts a task without stdio; returns its pid.
    pub async fn run_detached(&self, id: &str, args: &[&str]) -> u32 {
        self.container(id, args).await;
        let request = CreateTaskRequest { container_id: id.into(), ..Default::default() };
        let created = self.tasks().create(in_namespace(request, NS)).await;
        let pid = created.unwrap_or_else(|e| panic!("create task {id}: {e}\n{}", self.stack.logs())).into_inner().pid;
        self.start_task(id, "").await;
        pid
    }

    pub async fn start_task(&self, id: &str, exec_id: &str) -> u32 {
        let request = StartRequest { container_id: id.into(), exec_id: exec_id.into() };
        self.tasks()
            .start(in_namespace(request, NS))
            .await
            .unwrap_or_else(|e| panic!("start {id}: {e}"))
            .into_inner()
            .pid
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> u32 {
        let request = WaitRequest { container_id: id.into(), exec_id: exec_id.into() };
        let waited = tokio::time::timeout(Duration::from_secs(30), self.tasks().wait(in_namespace(request, NS))).await;
        waited.expect("exit within 30 s").unwrap_or_else(|e| panic!("wait {id}: {e}")).into_inner().exit_status
    }

    pub async fn kill(&self, id: &str, exec_id: &str, signal: Signal, all: bool) -> Result<(), tonic::Status> {
        let request = KillRequest { container_id: id.into(), exec_id: exec_id.into(), signal: signal as u32, all };
        self.tasks().kill(in_namespace(request, NS)).await.map(drop)
    }

    pub async fn status(&self, id: &str, exec_id: &str) -> (i32, u32) {
        let request = GetRequest { container_id: id.into(), exec_id: exec_id.into() };
        let process = self.tasks().get(in_namespace(request, NS)).await.unwrap().into_inner().process.unwrap();
        (process.status, process.exit_status)
    }

    pub async fn delete(&self, id: &str) -> Result<u32, tonic::Status> {
        let request = DeleteTaskRequest { container_id: id.into() };
        self.tasks().delete(in_namespace(request, NS)).await.map(|r| r.into_inner().exit_status)
    }

    /// Waits for the task to exit, deletes it, and returns the exit status Delete reports.
    pub async fn delete_after_exit(&self, id: &str) -> u32 {
        self.wait(id, "").await;
        self.delete(id).await.unwrap_or_else(|e| panic!("delete {id}: {e}"))
    }

    /// Starts `ctr events` against the gateway; [`events_seen`] stops it and returns its lines.
    pub fn watch_events(&self) -> std::process::Child {
        Command::new(require_tool("ctr"))
            .arg("--address")
            .arg(&self.stack.socket)
            .arg("events")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs containerd's ctr in the test namespace.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--namespace", NS];
        all.extend_from_slice(args);
        self.stack.ctr(&all)
    }

    /// Bundles of every task the service has on disk.
    fn bundles(&self) -> Vec<(String, String, PathBuf)> {
        let mut found = Vec::new();
        let Ok(namespaces) = std::fs::read_dir(self.execution_root().join("tasks")) else { return found };
        for namespace in namespaces.flatten() {
            let Ok(tasks) = std::fs::read_dir(namespace.path()) else { continue };
            for task in tasks.flatten() {
                let ns = namespace.file_name().to_string_lossy().into_owned();
                found.push((ns, task.file_name().to_string_lossy().into_owned(), task.path()));
            }
        }
        found
    }

    /// PID of a task's shim, from its bundle.
    pub fn shim_pid(&self, id: &str) -> Option<u32> {
        let bundle = self.execution_root().join("tasks").join(NS).join(id);
        std::fs::read_to_string(bundle.join("shim.pid")).ok()?.trim().parse().ok()
    }
}

/// What `ctr events` printed, after a moment for the last events to arrive; stops it (by PID).
pub fn events_seen(events: std::process::Child) -> String {
    std::thread::sleep(Duration::from_millis(500));
    procs::signal(events.id(), Signal::SIGKILL);
    String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).into_owned()
}

/// Waits until `pid` handles `signal` (a shell's trap is set): signals from outside a PID
/// namespace reach its init only through a handler.
pub fn wait_for_handler(pid: u32, signal: Signal) {
    let bit = 1u64 << (signal as u32 - 1);
    let handled = procs::wait_until(Duration::from_secs(10), || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = status.lines().find_map(|l| l.strip_prefix("SigCgt:")).map(str::trim).unwrap_or("0");
        u64::from_str_radix(caught, 16).is_ok_and(|mask| mask & bit != 0)
    });
    assert!(handled, "pid {pid} never set a handler for {signal}");
}

fn pid_in(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

impl Drop for Host {
    /// Whatever a test left running: its containers (killed and deleted with runc), their
    /// shims (killed by PID) and rootfs mounts.
    fn drop(&mut self) {
        for (ns, id, bundle) in self.bundles() {
            if let Some(pid) = pid_in(&bundle.join("init.pid")) {
                procs::signal(pid, Signal::SIGKILL);
            }
            let root = self.execution_root().join("runc").join(&ns);
            let _ = Command::new("runc").arg("--root").arg(&root).args(["delete", "--force", &id]).output();
            if let Some(pid) = pid_in(&bundle.join("shim.pid"))
                && (comm(pid) == "berth-shim" || comm(pid).starts_with("containerd-shim"))
            {
                procs::signal(pid, Signal::SIGKILL);
            }
            let _ = Command::new("umount").arg("-l").arg(bundle.join("rootfs")).output();
        }
    }
}

/// Reads a FIFO to its end on a thread of its own; opened now, before the task exists, as
/// containerd's client does. The end is a read of nothing after a writer came and went
/// (POLLHUP): before the shim opens it, the FIFO just has no data.
pub fn read_fifo(path: &str) -> JoinHandle<String> {
    let mut fifo = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).unwrap();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let mut poll =
                libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&fifo), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, for the duration of the call.
            unsafe { libc::poll(&mut poll, 1, 100) };
            match fifo.read(&mut buffer) {
                Ok(0) if poll.revents & libc::POLLHUP != 0 => break,
                Ok(n) => out.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read {e}"),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Writes `data` to a stdin FIFO (the shim holds it open, so this does not block).
pub fn write_fifo(path: &str, data: &[u8]) {
    let mut fifo = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    fifo.write_all(data).unwrap();
}
