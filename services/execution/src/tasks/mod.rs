//! The tasks of this machine: each one a shim process this service started (or found again
//! after a restart), reached over its socket.
//!
//! A task is created from its container record (metadata service) and the mounts of its
//! snapshot (snapshot service); everything after that is a call to its shim. Exits are
//! watched with the shim's Wait and published as `/tasks/exit` exactly once per process — a
//! marker file in the bundle remembers what was published, so an exit that happened while the
//! service was down is published when it comes back, and none is published twice.
//! Checkpoint and restore (CRIU through the runtime) are in [`checkpoint`].

pub mod blobs;
pub mod checkpoint;
pub mod events;
pub mod layout;
pub mod runtimes;
pub mod shim;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use berth_api::containerd::events::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIo, TaskPaused, TaskResumed, TaskStart,
};
use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_api::containerd::services::containers::v1::{Container, GetContainerRequest};
use berth_api::containerd::services::snapshots::v1::MountsRequest;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::tasks::v1 as api;
use berth_api::containerd::types::{Metric, Mount};
use berth_api::containerd::v1::types::{Process, Status as ProcessStatus};
use berth_peers::{Peers, Publisher, request};
use tonic::Status;

use crate::protocol::{Exit, v2};
use layout::{ExecRecord, Layout, Stdio, TaskRecord};
use shim::Shim;

type Key = (String, String);

/// One task: its record and (while reachable) its shim.
struct Task {
    record: TaskRecord,
    bundle: PathBuf,
    shim: tokio::sync::Mutex<Option<Shim>>,
}

impl Task {
    fn id(&self) -> &str {
        &self.record.id
    }

    fn namespace(&self) -> &str {
        &self.record.namespace
    }

    /// The shim, reconnecting once when the connection was lost; None when it is gone.
    async fn shim(&self) -> Option<Shim> {
        let mut shim = self.shim.lock().await;
        if let Some(current) = shim.as_ref()
            && current.is_connected()
        {
            return Some(current.clone());
        }
        *shim = Shim::connect(&self.record.socket).await.ok();
        shim.clone()
    }

    /// How the init process ended when its shim is gone: as the shim recorded it, or 255
    /// (recorded now, so that every caller sees the same).
    fn lost_exit(&self) -> Exit {
        Exit::load(&self.bundle).unwrap_or_else(|| {
            let exit = Exit::now(0, 255);
            let _ = exit.save(&self.bundle);
            exit
        })
    }

    fn gone(&self) -> Status {
        Status::failed_precondition(format!("task {} has exited (its shim is gone)", self.id()))
    }
}

enum Slot {
    /// A Create is in progress for this id.
    Creating,
    Ready(Arc<Task>),
}

/// Every task of this machine.
pub struct Tasks {
    layout: Layout,
    shim_binary: PathBuf,
    peers: Peers,
    events: Publisher,
    tasks: Mutex<HashMap<Key, Slot>>,
}

fn key(namespace: &str, id: &str) -> Key {
    (namespace.to_string(), id.to_string())
}

fn not_found(namespace: &str, id: &str) -> Status {
    Status::not_found(format!("task {id} not found in namespace {namespace}"))
}

impl Tasks {
    /// The tasks kept under `root`, with shims started from `shim_binary`; serves the socket
    /// shims publish events to. Must run inside a tokio runtime. Call [`Tasks::recover`] to
    /// find the tasks a previous run left.
    pub fn new(root: PathBuf, shim_binary: PathBuf, peers: Peers, events: Publisher) -> std::io::Result<Arc<Tasks>> {
        let layout = Layout::new(root);
        layout.prepare()?;
        events::serve(&layout.events_socket(), events.clone())?;
        Ok(Arc::new(Tasks { layout, shim_binary, peers, events, tasks: Mutex::new(HashMap::new()) }))
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Slot>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn task(&self, namespace: &str, id: &str) -> Result<Arc<Task>, Status> {
        match self.slots().get(&key(namespace, id)) {
            Some(Slot::Ready(task)) => Ok(task.clone()),
            _ => Err(not_found(namespace, id)),
        }
    }

    /// Finds the tasks a previous run of the service left: re-attaches to every live shim,
    /// and reports exits that happened in between.
    pub async fn recover(self: &Arc<Self>) {
        for found in self.layout.tasks() {
            let (bundle, record) = match found {
                Ok(found) => found,
                Err(bundle) => {
                    tracing::warn!(bundle = %bundle.display(), "no readable task.json: a create that never finished; removing");
                    self.discard(&bundle, None).await;
                    continue;
                }
            };
            if !record.shim.as_os_str().is_empty()
                && !shim::is_berth_shim(&record.shim)
                && let Err(status) = shim::follow_log(&bundle, &record.id)
            {
                tracing::warn!(task = record.id, "{}", status.message());
            }
            let task = Arc::new(Task { record, bundle, shim: tokio::sync::Mutex::new(None) });
            match task.shim().await {
                Some(shim) => match shim.state(task.id(), "").await {
                    Ok(state) => {
                        tracing::info!(
                            namespace = task.namespace(),
                            task = task.id(),
                            pid = state.pid,
                            "re-attached to its shim"
                        );
                    }
                    Err(status) => {
                        tracing::warn!(
                            namespace = task.namespace(),
                            task = task.id(),
                            "the shim holds no task ({status}); removing"
                        );
                        let _ = shim.shutdown(task.id(), true).await;
                        self.discard(&task.bundle, Some(&task.record)).await;
                        continue;
                    }
                },
                None => {
                    tracing::warn!(
                        namespace = task.namespace(),
                        task = task.id(),
                        "its shim is gone; the task counts as exited"
                    );
                }
            }
            self.slots().insert(key(task.namespace(), task.id()), Slot::Ready(task.clone()));
            self.watch(task.clone(), String::new());
            for exec in self.layout.execs(&task.bundle) {
                self.watch(task.clone(), exec.exec_id);
            }
        }
    }

    /// Removes what is left of a task whose shim is gone or never served it.
    async fn discard(&self, bundle: &Path, record: Option<&TaskRecord>) {
        if let Some(record) = record {
            let deleted = tokio::process::Command::new(&record.runtime)
                .arg("--root")
                .arg(&record.runtime_root)
                .args(["delete", "--force", &record.id])
                .stdin(std::process::Stdio::null())
                .output()
                .await;
            if let Ok(output) = deleted
                && !output.status.success()
            {
                tracing::debug!(task = record.id, "runtime delete: {}", String::from_utf8_lossy(&output.stderr).trim());
            }
            let _ = std::fs::remove_file(&record.socket);
        }
        let rootfs = bundle.join("rootfs");
        if let Err(e) = crate::shim::mount::unmount_all(&rootfs) {
            tracing::warn!(rootfs = %rootfs.display(), "{e}");
        }
        remove_bundle(bundle);
    }

    /// Publishes the exit of `exec_id` (empty: init) of `task` unless it was published before.
    fn publish_exit(&self, task: &Task, exec_id: &str, exit: Exit) {
        if layout::mark_exit_published(&task.bundle, exec_id) {
            let id = if exec_id.is_empty() { task.id() } else { exec_id };
            let event = TaskExit {
                container_id: task.id().to_string(),
                id: id.to_string(),
                pid: exit.pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()),
            };
            self.events.publish(task.namespace(), "/tasks/exit", &event);
        }
    }

    /// Waits for `exec_id` (empty: init) of `task` to exit, then publishes it.
    fn watch(self: &Arc<Self>, task: Arc<Task>, exec_id: String) {
        let tasks = self.clone();
        tokio::spawn(async move {
            let Some(shim) = task.shim().await else {
                if exec_id.is_empty() {
                    tasks.publish_exit(&task, "", task.lost_exit());
                }
                return;
            };
            let pid = match shim.state(task.id(), &exec_id).await {
                Ok(state) => state.pid,
                Err(_) => return,
            };
            match shim.wait(task.id(), &exec_id).await {
                Ok(waited) => {
                    // A task restored from a checkpoint has its pid from Start on.
                    let pid = match pid {
                        0 => shim.state(task.id(), &exec_id).await.map(|state| state.pid).unwrap_or(0),
                        pid => pid,
                    };
                    let at = waited.exited_at.unwrap_or_default();
                    let exit = Exit { pid, status: waited.exit_status, seconds: at.seconds, nanos: at.nanos };
                    tasks.publish_exit(&task, &exec_id, exit);
                }
                // Deleted meanwhile.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => {
                    tracing::warn!(task = task.id(), exec = exec_id, "waiting for the exit: {status}");
                    if exec_id.is_empty() && task.shim().await.is_none() {
                        tasks.publish_exit(&task, "", task.lost_exit());
                    }
                }
            }
        });
    }

    /// Creates the task of a container (from a checkpoint when `req.checkpoint` is set;
    /// `lease` holds what that brings into content and snapshots meanwhile).
    pub async fn create(
        self: &Arc<Self>,
        namespace: &str,
        lease: Option<String>,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, Status> {
        berth_core::identifiers::validate("container id", &req.container_id)?;
        let id = req.container_id.clone();
        {
            let mut slots = self.slots();
            if slots.contains_key(&key(namespace, &id)) {
                return Err(Status::already_exists(format!("task {id} already exists in namespace {namespace}")));
            }
            slots.insert(key(namespace, &id), Slot::Creating);
        }
        let created = self.create_task(namespace, lease.as_deref(), req).await;
        let mut slots = self.slots();
        match created {
            Ok((task, pid)) => {
                slots.insert(key(namespace, &id), Slot::Ready(task.clone()));
                drop(slots);
                self.watch(task, String::new());
                Ok(api::CreateTaskResponse { container_id: id, pid })
            }
            Err(status) => {
                slots.remove(&key(namespace, &id));
                Err(status)
            }
        }
    }

    /// The record of container `id`.
    async fn container(&self, namespace: &str, id: &str) -> Result<Container, Status> {
        let metadata = self.peers.channel("metadata").ok_or_else(|| {
            Status::failed_precondition("berth-execution runs without a metadata service (--peer metadata=ADDR)")
        })?;
        ContainersClient::new(metadata)
            .get(request(namespace, GetContainerRequest { id: id.to_string() }))
            .await?
            .into_inner()
            .container
            .ok_or_else(|| Status::not_found(format!("container {id} not found in namespace {namespace}")))
    }

    async fn create_task(
        &self,
        namespace: &str,
        lease: Option<&str>,
        req: api::CreateTaskRequest,
    ) -> Result<(Arc<Task>, u32), Status> {
        let id = req.container_id.clone();
        let container = self.container(namespace, &id).await?;
        let spec = container
            .spec
            .as_ref()
            .filter(|spec| !spec.value.is_empty())
            .ok_or_else(|| Status::failed_precondition(format!("container {id} has no runtime spec")))?;
        let rootfs = if !req.rootfs.is_empty() {
            req.rootfs.clone()
        } else if !container.snapshot_key.is_empty() {
            self.snapshot_mounts(namespace, &container.snapshotter, &container.snapshot_key).await?
        } else {
            Vec::new()
        };
        let runtime_name = container.runtime.as_ref().map(|r| r.name.as_str()).unwrap_or_default();
        let mut options = match req.options.as_ref() {
            Some(options) => runtimes::options(Some(options))?,
            None => runtimes::options(container.runtime.as_ref().and_then(|r| r.options.as_ref()))?,
        };
        let runtime = runtimes::binary(runtime_name, &options)?;
        let shim_binary = if req.runtime_path.is_empty() {
            self.shim_binary.clone()
        } else {
            let path = PathBuf::from(&req.runtime_path);
            if !path.is_absolute() || !path.is_file() {
                return Err(Status::failed_precondition(format!(
                    "runtime path {}: no shim binary there (an absolute path is needed)",
                    req.runtime_path
                )));
            }
            path
        };
        let runtime_root = self.layout.runtime_root(namespace);
        options.binary_name = runtime.display().to_string();
        options.root = runtime_root.display().to_string();

        let bundle = self.layout.bundle(namespace, &id);
        let socket = self.layout.socket(namespace, &id);
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut record = TaskRecord {
            namespace: namespace.to_string(),
            id: id.clone(),
            socket: socket.clone(),
            shim: shim_binary.clone(),
            runtime,
            runtime_root,
            stdio,
        };
        if bundle.exists() {
            // Left by a create that never finished.
            self.discard(&bundle, Some(&record)).await;
        }
        let prepared = (|| {
            std::fs::create_dir_all(&bundle)?;
            std::fs::write(bundle.join("config.json"), &spec.value)?;
            layout::save_task(&bundle, &record)
        })();
        prepared.map_err(|e| Status::internal(format!("prepare the bundle {}: {e}", bundle.display())))?;
        // An empty descriptor is no checkpoint (some clients send one rather than none).
        let restore_from = req.checkpoint.clone().filter(|d| !d.digest.is_empty() || !d.media_type.is_empty());
        let checkpoint = match &restore_from {
            Some(descriptor) => match self.prepare_restore(namespace, lease, descriptor, &bundle, &rootfs).await {
                Ok(dir) => dir.display().to_string(),
                Err(status) => {
                    self.discard(&bundle, None).await;
                    return Err(status);
                }
            },
            None => String::new(),
        };

        let events = self.layout.events_socket();
        let shim = match shim::launch(&shim_binary, namespace, &id, &bundle, &socket, &events).await {
            Ok((shim, served)) => {
                // A containerd shim chooses its socket itself.
                record.socket = served;
                if let Err(e) = layout::save_task(&bundle, &record) {
                    let _ = shim.shutdown(&id, true).await;
                    self.discard(&bundle, Some(&record)).await;
                    return Err(Status::internal(format!("record task {id}: {e}")));
                }
                shim
            }
            Err(status) => {
                self.discard(&bundle, None).await;
                return Err(status);
            }
        };
        let create = v2::CreateTaskRequest {
            id: id.clone(),
            bundle: bundle.display().to_string(),
            rootfs: rootfs.clone(),
            terminal: req.terminal,
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            checkpoint: checkpoint.clone(),
            parent_checkpoint: String::new(),
            options: Some(berth_peers::events::any_of(&options)),
        };
        let pid = match shim.create(create).await {
            Ok(created) => created.pid,
            Err(status) => {
                let _ = shim.shutdown(&id, true).await;
                self.discard(&bundle, Some(&record)).await;
                return Err(status);
            }
        };
        let event = TaskCreate {
            container_id: id.clone(),
            bundle: bundle.display().to_string(),
            rootfs,
            io: Some(TaskIo { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, terminal: req.terminal }),
            checkpoint: restore_from.map(|d| d.digest).unwrap_or_default(),
            pid,
        };
        self.events.publish(namespace, "/tasks/create", &event);
        tracing::info!(namespace, task = id, pid, runtime = %record.runtime.display(), "task created");
        Ok((Arc::new(Task { record, bundle, shim: tokio::sync::Mutex::new(Some(shim)) }), pid))
    }

    async fn snapshot_mounts(&self, namespace: &str, snapshotter: &str, key: &str) -> Result<Vec<Mount>, Status> {
        let snapshots = self.peers.channel("snapshot").ok_or_else(|| {
            Status::failed_precondition("berth-execution runs without a snapshot service (--peer snapshot=ADDR)")
        })?;
        let mounts = SnapshotsClient::new(snapshots)
            .mounts(request(namespace, MountsRequest { snapshotter: snapshotter.to_string(), key: key.to_string() }))
            .await
            .map_err(|status| {
                Status::new(status.code(), format!("mounts of snapshot {key} ({snapshotter}): {}", status.message()))
            })?;
        Ok(mounts.into_inner().mounts)
    }

    pub async fn start(
        self: &Arc<Self>,
        namespace: &str,
        req: api::StartRequest,
    ) -> Result<api::StartResponse, Status> {
        let task = self.task(namespace, &req.container_id)?;
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        let started = shim.start(task.id(), &req.exec_id).await?;
        if req.exec_id.is_empty() {
            self.events.publish(
                namespace,
                "/tasks/start",
                &TaskStart { container_id: req.container_id, pid: started.pid },
            );
        } else {
            let event =
                TaskExecStarted { container_id: req.container_id, exec_id: req.exec_id.clone(), pid: started.pid };
            self.events.publish(namespace, "/tasks/exec-started", &event);
            self.watch(task, req.exec_id);
        }
        Ok(api::StartResponse { pid: started.pid })
    }

    pub async fn delete(&self, namespace: &str, req: api::DeleteTaskRequest) -> Result<api::DeleteResponse, Status> {
        let task = self.task(namespace, &req.container_id)?;
        // Whether the shim removed the container from the runtime itself.
        let mut runtime_deleted = false;
        let exit = match task.shim().await {
            Some(shim) => {
                let exit = match shim.delete(task.id(), "").await {
                    Ok(deleted) => {
                        runtime_deleted = true;
                        let at = deleted.exited_at.unwrap_or_default();
                        Exit { pid: deleted.pid, status: deleted.exit_status, seconds: at.seconds, nanos: at.nanos }
                    }
                    // Deleted in the shim by an earlier Delete that failed after it: finish the job.
                    Err(status) if status.code() == tonic::Code::NotFound => task.lost_exit(),
                    Err(status) => return Err(status),
                };
                let _ = shim.shutdown(task.id(), true).await;
                exit
            }
            None => task.lost_exit(),
        };
        // Clients may wait for the exit event; it comes before the delete.
        self.publish_exit(&task, "", exit);
        self.slots().remove(&key(namespace, task.id()));
        if runtime_deleted {
            // No second `runtime delete`: one runtime run less per task.
            let _ = std::fs::remove_file(&task.record.socket);
            self.discard(&task.bundle, None).await;
        } else {
            self.discard(&task.bundle, Some(&task.record)).await;
        }
        let event = TaskDelete {
            container_id: task.id().to_string(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()),
            id: String::new(),
        };
        self.events.publish(namespace, "/tasks/delete", &event);
        tracing::info!(namespace, task = task.id(), status = exit.status, "task deleted");
        Ok(api::DeleteResponse {
            id: task.id().to_string(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()),
        })
    }

    pub async fn delete_process(
        &self,
        namespace: &str,
        req: api::DeleteProcessRequest,
    ) -> Result<api::DeleteResponse, Status> {
        if req.exec_id.is_empty() {
            return Err(Status::invalid_argument("delete process: an exec id is required (Delete removes the task)"));
        }
        let task = self.task(namespace, &req.container_id)?;
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        let deleted = shim.delete(task.id(), &req.exec_id).await?;
        let at = deleted.exited_at.unwrap_or_default();
        let exit = Exit { pid: deleted.pid, status: deleted.exit_status, seconds: at.seconds, nanos: at.nanos };
        self.publish_exit(&task, &req.exec_id, exit);
        layout::remove_exec(&task.bundle, &req.exec_id);
        let event = TaskDelete {
            container_id: task.id().to_string(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()),
            id: req.exec_id.clone(),
        };
        self.events.publish(namespace, "/tasks/delete", &event);
        Ok(api::DeleteResponse {
            id: req.exec_id,
            pid: exit.pid,
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()),
        })
    }

    async fn process(&self, task: &Task, exec_id: &str) -> Result<Process, Status> {
        match task.shim().await {
            Some(shim) => {
                let state = shim.state(task.id(), exec_id).await?;
                Ok(Process {
                    container_id: task.id().to_string(),
                    id: if state.exec_id.is_empty() { task.id().to_string() } else { state.exec_id },
                    pid: state.pid,
                    status: state.status,
                    stdin: state.stdin,
                    stdout: state.stdout,
                    stderr: state.stderr,
                    terminal: state.terminal,
                    exit_status: state.exit_status,
                    exited_at: state.exited_at,
                })
            }
            None if exec_id.is_empty() => {
                let exit = task.lost_exit();
                let stdio = &task.record.stdio;
                Ok(Process {
                    container_id: task.id().to_string(),
                    id: task.id().to_string(),
                    pid: exit.pid,
                    status: ProcessStatus::Stopped as i32,
                    stdin: stdio.stdin.clone(),
                    stdout: stdio.stdout.clone(),
                    stderr: stdio.stderr.clone(),
                    terminal: stdio.terminal,
                    exit_status: exit.status,
                    exited_at: Some(exit.timestamp()),
                })
            }
            None => Err(Status::not_found(format!("exec {exec_id} of task {}: the task's shim is gone", task.id()))),
        }
    }

    pub async fn get(&self, namespace: &str, req: api::GetRequest) -> Result<api::GetResponse, Status> {
        let task = self.task(namespace, &req.container_id)?;
        Ok(api::GetResponse { process: Some(self.process(&task, &req.exec_id).await?) })
    }

    /// The tasks of `namespace`, by id.
    fn in_namespace(&self, namespace: &str) -> Vec<Arc<Task>> {
        let mut tasks: Vec<Arc<Task>> = self
            .slots()
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .filter_map(|(_, slot)| match slot {
                Slot::Ready(task) => Some(task.clone()),
                Slot::Creating => None,
            })
            .collect();
        tasks.sort_by(|a, b| a.id().cmp(b.id()));
        tasks
    }

    /// cgroup statistics of the running tasks of `namespace` that match the filters (field
    /// `id`); tasks that are not running are left out.
    pub async fn metrics(&self, namespace: &str, req: api::MetricsRequest) -> Result<api::MetricsResponse, Status> {
        let filters = berth_core::filters::AnyOf::parse(&req.filters)
            .map_err(|e| Status::invalid_argument(format!("metrics filters: {e}")))?;
        let mut metrics = Vec::new();
        for task in self.in_namespace(namespace) {
            if !filters.matches(&ById(task.id())) {
                continue;
            }
            let Some(shim) = task.shim().await else { continue };
            match shim.stats(task.id()).await {
                Ok(stats) => metrics.push(Metric {
                    timestamp: Some(std::time::SystemTime::now().into()),
                    id: task.id().to_string(),
                    data: stats.stats,
                }),
                Err(status) => tracing::debug!(task = task.id(), "no metrics: {status}"),
            }
        }
        Ok(api::MetricsResponse { metrics })
    }

    pub async fn list(&self, namespace: &str, _req: api::ListTasksRequest) -> Result<api::ListTasksResponse, Status> {
        let tasks = self.in_namespace(namespace);
        let mut processes = Vec::with_capacity(tasks.len());
        for task in tasks {
            match self.process(&task, "").await {
                Ok(process) => processes.push(process),
                // Deleted while listing.
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(status),
            }
        }
        Ok(api::ListTasksResponse { tasks: processes })
    }

    pub async fn kill(&self, namespace: &str, req: api::KillRequest) -> Result<(), Status> {
        let task = self.task(namespace, &req.container_id)?;
        let shim = task
            .shim()
            .await
            .ok_or_else(|| Status::not_found(format!("task {}: process already finished", task.id())))?;
        let kill = v2::KillRequest { id: req.container_id, exec_id: req.exec_id, signal: req.signal, all: req.all };
        shim.kill(kill).await
    }

    pub async fn exec(&self, namespace: &str, req: api::ExecProcessRequest) -> Result<(), Status> {
        berth_core::identifiers::validate("exec id", &req.exec_id)?;
        let task = self.task(namespace, &req.container_id)?;
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let exec = v2::ExecProcessRequest {
            id: req.container_id.clone(),
            exec_id: req.exec_id.clone(),
            terminal: req.terminal,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
            spec: req.spec,
        };
        shim.exec(exec).await?;
        layout::save_exec(&task.bundle, &ExecRecord { exec_id: req.exec_id.clone(), stdio })
            .map_err(|e| Status::internal(format!("record exec {}: {e}", req.exec_id)))?;
        let event = TaskExecAdded { container_id: req.container_id, exec_id: req.exec_id };
        self.events.publish(namespace, "/tasks/exec-added", &event);
        Ok(())
    }

    pub async fn resize_pty(&self, namespace: &str, req: api::ResizePtyRequest) -> Result<(), Status> {
        let task = self.task(namespace, &req.container_id)?;
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        shim.resize_pty(v2::ResizePtyRequest {
            id: req.container_id,
            exec_id: req.exec_id,
            width: req.width,
            height: req.height,
        })
        .await
    }

    pub async fn close_io(&self, namespace: &str, req: api::CloseIoRequest) -> Result<(), Status> {
        let task = self.task(namespace, &req.container_id)?;
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        shim.close_io(v2::CloseIoRequest { id: req.container_id, exec_id: req.exec_id, stdin: req.stdin }).await
    }

    pub async fn pause(&self, namespace: &str, req: api::PauseTaskRequest) -> Result<(), Status> {
        let task = self.task(namespace, &req.container_id)?;
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        shim.pause(task.id()).await?;
        self.events.publish(namespace, "/tasks/paused", &TaskPaused { container_id: req.container_id });
        Ok(())
    }

    pub async fn resume(&self, namespace: &str, req: api::ResumeTaskRequest) -> Result<(), Status> {
        let task = self.task(namespace, &req.container_id)?;
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        shim.resume(task.id()).await?;
        self.events.publish(namespace, "/tasks/resumed", &TaskResumed { container_id: req.container_id });
        Ok(())
    }

    pub async fn list_pids(&self, namespace: &str, req: api::ListPidsRequest) -> Result<api::ListPidsResponse, Status> {
        let task = self.task(namespace, &req.container_id)?;
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        Ok(api::ListPidsResponse { processes: shim.pids(task.id()).await?.processes })
    }

    pub async fn update(&self, namespace: &str, req: api::UpdateTaskRequest) -> Result<(), Status> {
        let task = self.task(namespace, &req.container_id)?;
        let shim = task.shim().await.ok_or_else(|| task.gone())?;
        shim.update(v2::UpdateTaskRequest {
            id: req.container_id,
            resources: req.resources,
            annotations: req.annotations,
        })
        .await
    }

    pub async fn wait(&self, namespace: &str, req: api::WaitRequest) -> Result<api::WaitResponse, Status> {
        let task = self.task(namespace, &req.container_id)?;
        if let Some(shim) = task.shim().await {
            match shim.wait(task.id(), &req.exec_id).await {
                Ok(waited) => {
                    return Ok(api::WaitResponse { exit_status: waited.exit_status, exited_at: waited.exited_at });
                }
                // The shim went away while waiting: answer from what it left.
                Err(status) if status.code() == tonic::Code::Unavailable && task.shim().await.is_none() => {}
                Err(status) => return Err(status),
            }
        }
        if !req.exec_id.is_empty() {
            return Err(Status::not_found(format!(
                "exec {} of task {}: the task's shim is gone",
                req.exec_id,
                task.id()
            )));
        }
        let exit = task.lost_exit();
        Ok(api::WaitResponse { exit_status: exit.status, exited_at: Some(exit.timestamp()) })
    }
}

/// Metrics filters see a task by its id.
struct ById<'a>(&'a str);

impl berth_core::filters::Adaptor for ById<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        match fieldpath.first().map(String::as_str) {
            Some("id") if fieldpath.len() == 1 => Some(self.0.to_string()),
            _ => None,
        }
    }
}

/// Removes a task's bundle without ever descending into a rootfs that is still mounted: the
/// mount point is removed with rmdir, which fails (and leaves it) unless it is empty.
fn remove_bundle(bundle: &Path) {
    let Ok(entries) = std::fs::read_dir(bundle) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let result = if entry.file_name() == "rootfs" {
            std::fs::remove_dir(&path)
        } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), "removing the bundle: {e}");
        }
    }
    let _ = std::fs::remove_dir(bundle);
}
