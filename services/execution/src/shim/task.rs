//! The one task a shim runs: its init process and its execs, their states and exits, each
//! method of the shim API as an operation on them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use berth_api::containerd::events::TaskOom;
use berth_api::containerd::runc::v1::{
    CheckpointOptions as RuncCheckpointOptions, Options as RuncOptions, ProcessDetails,
};
use berth_api::containerd::v1::types::{ProcessInfo, Status};
use prost::Message;
use tokio::sync::watch;
use tonic::Status as Error;

use super::events::Publisher;
use super::io::{ConsoleSocket, ProcessIo, StdioPaths};
use super::mount;
use super::reaper::Reaper;
use super::runtime::{
    CheckpointOptions, CreateOptions, ProcessStdio, RestoreOptions, Runtime, RuntimeError, criu_log_tail,
};
use crate::protocol::Exit;
use crate::protocol::v2::*;

/// How long the output of an exited process may take to reach its FIFOs before the exit is
/// reported anyway (a child it left behind may hold its stdout open).
const DRAIN: Duration = Duration::from_secs(1);
/// How long the runtime has to send a new terminal's master.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Created,
    Running,
    Stopped(Exit),
}

/// The init process or one exec.
struct Process {
    /// Empty for the init process.
    exec_id: String,
    paths: StdioPaths,
    pid: AtomicU32,
    life: watch::Sender<Life>,
    io: Mutex<Option<Arc<ProcessIo>>>,
    /// An exec's OCI process spec, written for the runtime.
    spec_file: Option<PathBuf>,
}

impl Process {
    fn new(exec_id: &str, paths: StdioPaths, spec_file: Option<PathBuf>) -> Arc<Process> {
        Arc::new(Process {
            exec_id: exec_id.to_string(),
            paths,
            pid: AtomicU32::new(0),
            life: watch::Sender::new(Life::Created),
            io: Mutex::new(None),
            spec_file,
        })
    }

    fn life(&self) -> Life {
        *self.life.borrow()
    }

    fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    fn io(&self) -> Option<Arc<ProcessIo>> {
        self.io.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_io(&self, io: ProcessIo) {
        *self.io.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(io));
    }

    fn name(&self, task: &str) -> String {
        if self.exec_id.is_empty() { format!("task {task}") } else { format!("exec {} of task {task}", self.exec_id) }
    }
}

#[derive(Default)]
struct State {
    init: Option<Arc<Process>>,
    execs: HashMap<String, Arc<Process>>,
    paused: bool,
    mounted: bool,
    /// A task created from a checkpoint: restored (instead of started) by Start.
    restore: Option<Restore>,
}

/// Where a checkpointed task comes back from.
#[derive(Clone, Debug)]
struct Restore {
    /// The CRIU image directory.
    image: PathBuf,
    /// CRIU's work directory (restore.log).
    work: PathBuf,
    no_pivot_root: bool,
}

/// One shim's task.
pub struct Task {
    id: String,
    namespace: String,
    bundle: PathBuf,
    /// Where console sockets go: beside the shim's own socket (short paths, private dir).
    socket_dir: PathBuf,
    reaper: Reaper,
    events: Publisher,
    runtime: OnceLock<Runtime>,
    state: Mutex<State>,
}

fn runtime_error(error: RuntimeError) -> Error {
    match &error {
        RuntimeError::Missing { .. } => Error::failed_precondition(error.to_string()),
        RuntimeError::Failed { message, .. } if message.contains("does not exist") || message.contains("not found") => {
            Error::not_found(error.to_string())
        }
        _ => Error::unknown(error.to_string()),
    }
}

/// A runtime error from a CRIU run, with the end of CRIU's `log` (of the `what` step: dump,
/// restore) added: the runtime itself says no more than "criu failed".
fn with_criu_log(error: Error, what: &str, log: &Path) -> Error {
    match criu_log_tail(log) {
        Some(tail) => Error::new(
            error.code(),
            format!("{}\nCRIU's {what} log ({}) ends:\n{tail}", error.message(), log.display()),
        ),
        None => error,
    }
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::internal(format!("{what}: {e}"))
}

fn read_pid(file: &Path) -> Result<u32, Error> {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| Error::internal(format!("the runtime left no pid in {}", file.display())))
}

impl Task {
    pub fn new(
        id: String,
        namespace: String,
        bundle: PathBuf,
        socket_dir: PathBuf,
        reaper: Reaper,
        events: Publisher,
    ) -> Arc<Task> {
        Arc::new(Task {
            id,
            namespace,
            bundle,
            socket_dir,
            reaper,
            events,
            runtime: OnceLock::new(),
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn runtime(&self) -> Result<&Runtime, Error> {
        self.runtime.get().ok_or_else(|| Error::not_found(format!("task {} is not created", self.id)))
    }

    fn check_id(&self, id: &str) -> Result<(), Error> {
        if id == self.id {
            Ok(())
        } else {
            Err(Error::not_found(format!("task {id}: this shim runs task {}", self.id)))
        }
    }

    /// The init process (exec_id empty) or an exec.
    fn process(&self, exec_id: &str) -> Result<Arc<Process>, Error> {
        let state = self.state();
        let found = if exec_id.is_empty() { state.init.clone() } else { state.execs.get(exec_id).cloned() };
        found.ok_or_else(|| {
            if exec_id.is_empty() {
                Error::not_found(format!("task {} is not created", self.id))
            } else {
                Error::not_found(format!("exec {exec_id} of task {} does not exist", self.id))
            }
        })
    }

    /// The PID of the task's init process (0 before Create).
    pub fn init_pid(&self) -> u32 {
        self.state().init.as_ref().map(|p| p.pid()).unwrap_or(0)
    }

    /// Whether a task was created and not deleted yet.
    pub fn is_live(&self) -> bool {
        self.state().init.is_some()
    }

    fn status_of(&self, process: &Process) -> Status {
        match process.life() {
            Life::Created => Status::Created,
            Life::Running if process.exec_id.is_empty() && self.state().paused => Status::Paused,
            Life::Running => Status::Running,
            Life::Stopped(_) => Status::Stopped,
        }
    }

    /// Sets up stdio, runs `call` (create or exec) with it, and returns the process's PID.
    async fn launch<F, Fut>(&self, process: &Arc<Process>, pid_file: PathBuf, call: F) -> Result<u32, Error>
    where
        F: FnOnce(Option<PathBuf>, ProcessStdio) -> Fut,
        Fut: std::future::Future<Output = Result<(), RuntimeError>>,
    {
        let name = process.name(&self.id);
        if process.paths.terminal {
            let key = format!("{}-{}", std::process::id(), process.exec_id);
            let socket = ConsoleSocket::bind(self.socket_dir.join(format!("{:x}.pty", short_hash(&key))))
                .map_err(io_error("console socket"))?;
            let path = socket.path().to_path_buf();
            let mut receiving = std::pin::pin!(socket.receive(CONSOLE_TIMEOUT));
            let mut calling = std::pin::pin!(call(Some(path), ProcessStdio::default()));
            // The runtime sends the master while it runs; a runtime that fails sends nothing.
            let master: OwnedFd = tokio::select! {
                called = &mut calling => {
                    called.map_err(runtime_error)?;
                    receiving.await.map_err(io_error(&name))?
                }
                master = &mut receiving => {
                    calling.await.map_err(runtime_error)?;
                    master.map_err(io_error(&name))?
                }
            };
            process.set_io(ProcessIo::console(master, &process.paths).await.map_err(io_error(&name))?);
        } else {
            let (io, stdio) =
                ProcessIo::pipes(&process.paths).await.map_err(|e| Error::invalid_argument(format!("{name}: {e}")))?;
            process.set_io(io);
            call(None, stdio).await.map_err(runtime_error)?;
        }
        let pid = read_pid(&pid_file)?;
        process.pid.store(pid, Ordering::Relaxed);
        Ok(pid)
    }

    /// Records `process`'s exit when the reaper sees it.
    fn watch_exit(self: &Arc<Self>, process: Arc<Process>) {
        let pid = process.pid();
        let exited = self.reaper.watch(pid);
        let task = self.clone();
        tokio::spawn(async move {
            let status = exited.await.unwrap_or(255);
            if let Some(io) = process.io() {
                io.drained(DRAIN).await;
            }
            let exit = Exit::now(pid, status);
            if process.exec_id.is_empty() {
                if let Err(e) = exit.save(&task.bundle) {
                    tracing::warn!(task = task.id, "recording the exit: {e}");
                }
                task.state().paused = false;
            }
            tracing::info!(task = task.id, exec = process.exec_id, pid, status, "process exited");
            process.life.send_replace(Life::Stopped(exit));
        });
    }

    pub async fn create(self: &Arc<Self>, request: CreateTaskRequest) -> Result<CreateTaskResponse, Error> {
        self.check_id(&request.id)?;
        if !request.checkpoint.is_empty() && !Path::new(&request.checkpoint).is_dir() {
            return Err(Error::invalid_argument(format!(
                "checkpoint {}: no CRIU image directory there",
                request.checkpoint
            )));
        }
        if Path::new(&request.bundle) != self.bundle {
            return Err(Error::invalid_argument(format!(
                "bundle {}: this shim's bundle is {}",
                request.bundle,
                self.bundle.display()
            )));
        }
        let paths = StdioPaths {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        };
        let process = {
            let mut state = self.state();
            if state.init.is_some() {
                return Err(Error::already_exists(format!("task {} already exists", self.id)));
            }
            let process = Process::new("", paths, None);
            state.init = Some(process.clone());
            process
        };
        let created = self.create_init(&request, &process).await;
        if created.is_err() {
            let mounted = {
                let mut state = self.state();
                state.init = None;
                std::mem::take(&mut state.mounted)
            };
            if mounted {
                let _ = mount::unmount_all(&self.bundle.join("rootfs"));
            }
        }
        let pid = created?;
        // A restored task's process appears at Start.
        if request.checkpoint.is_empty() {
            self.watch_init(process, pid);
        }
        Ok(CreateTaskResponse { pid })
    }

    /// Watches the init process `pid` for its exit and for OOM kills.
    fn watch_init(self: &Arc<Self>, process: Arc<Process>, pid: u32) {
        self.watch_exit(process);
        let (events, id) = (self.events.clone(), self.id.clone());
        let oom = super::oom::watch(pid, move || {
            tracing::info!(task = id, "OOM kill in the container");
            events.publish("/tasks/oom", &TaskOom { container_id: id.clone() });
        });
        if let Err(e) = oom {
            tracing::warn!(task = self.id, "cannot watch for OOM kills: {e}");
        }
    }

    async fn create_init(&self, request: &CreateTaskRequest, process: &Arc<Process>) -> Result<u32, Error> {
        let options = match &request.options {
            Some(any) if any.type_url.ends_with("containerd.runc.v1.Options") => {
                RuncOptions::decode(any.value.as_slice())
                    .map_err(|e| Error::invalid_argument(format!("runtime options: {e}")))?
            }
            Some(any) if !any.type_url.is_empty() => {
                return Err(Error::invalid_argument(format!(
                    "runtime options of type {} are not understood",
                    any.type_url
                )));
            }
            _ => RuncOptions::default(),
        };
        let binary = if options.binary_name.is_empty() { "runc" } else { options.binary_name.as_str() };
        let root = if options.root.is_empty() {
            PathBuf::from("/run/berth/runc").join(&self.namespace)
        } else {
            PathBuf::from(&options.root)
        };
        let runtime = Runtime::new(binary, root, self.bundle.clone(), options.systemd_cgroup, self.reaper.clone())
            .map_err(runtime_error)?;
        let runtime = match self.runtime.set(runtime) {
            Ok(()) => self.runtime()?,
            Err(_) => return Err(Error::already_exists(format!("task {} was created before", self.id))),
        };

        if !request.rootfs.is_empty() {
            let rootfs = self.bundle.join("rootfs");
            std::fs::create_dir_all(&rootfs).map_err(io_error("create the rootfs mount point"))?;
            let mounts: Vec<mount::Mount> = request.rootfs.iter().map(mount::Mount::from).collect();
            mount::mount_all(&mounts, &rootfs).map_err(|e| Error::internal(format!("mount the rootfs: {e}")))?;
            self.state().mounted = true;
        }
        if !request.checkpoint.is_empty() {
            let work = if options.criu_work_path.is_empty() {
                self.bundle.join("criu-restore")
            } else {
                PathBuf::from(&options.criu_work_path)
            };
            self.state().restore =
                Some(Restore { image: PathBuf::from(&request.checkpoint), work, no_pivot_root: options.no_pivot_root });
            return Ok(0);
        }
        let pid_file = self.bundle.join("init.pid");
        let bundle = self.bundle.clone();
        let id = self.id.clone();
        self.launch(process, pid_file.clone(), |console, stdio| async move {
            let options = CreateOptions {
                bundle: &bundle,
                pid_file: &pid_file,
                console_socket: console.as_deref(),
                no_pivot_root: options.no_pivot_root,
                no_new_keyring: options.no_new_keyring,
            };
            runtime.create(&id, options, stdio).await
        })
        .await
    }

    pub async fn start(self: &Arc<Self>, request: StartRequest) -> Result<StartResponse, Error> {
        self.check_id(&request.id)?;
        let process = self.process(&request.exec_id)?;
        if process.life() != Life::Created {
            return Err(Error::failed_precondition(format!("{} was started before", process.name(&self.id))));
        }
        let runtime = self.runtime()?;
        let restore = if process.exec_id.is_empty() { self.state().restore.take() } else { None };
        if let Some(restore) = restore {
            let restored = self.restore_init(&process, &restore).await;
            let pid = match restored {
                Ok(pid) => pid,
                Err(error) => {
                    // Still created: a later Start may try again.
                    self.state().restore = Some(restore);
                    return Err(error);
                }
            };
            process.life.send_replace(Life::Running);
            self.watch_init(process, pid);
            return Ok(StartResponse { pid });
        }
        if process.exec_id.is_empty() {
            runtime.start(&self.id).await.map_err(runtime_error)?;
            process.life.send_if_modified(|life| {
                let created = *life == Life::Created;
                if created {
                    *life = Life::Running;
                }
                created
            });
            return Ok(StartResponse { pid: process.pid() });
        }
        let init = self.process("")?;
        if !matches!(init.life(), Life::Running) {
            return Err(Error::failed_precondition(format!("task {} is not running", self.id)));
        }
        let spec = process.spec_file.clone().unwrap_or_default();
        let pid_file = self.bundle.join(format!(".exec-{}.pid", process.exec_id));
        let id = self.id.clone();
        let pid = self
            .launch(&process, pid_file.clone(), |console, stdio| async move {
                runtime.exec(&id, &spec, &pid_file, console.as_deref(), stdio).await
            })
            .await?;
        process.life.send_replace(Life::Running);
        self.watch_exit(process);
        Ok(StartResponse { pid })
    }

    /// Brings the init process (and the rest of the container) back from a CRIU image.
    async fn restore_init(&self, process: &Arc<Process>, restore: &Restore) -> Result<u32, Error> {
        let runtime = self.runtime()?;
        std::fs::create_dir_all(&restore.work).map_err(io_error("create the CRIU work directory"))?;
        let log = restore.work.join("restore.log");
        let _ = std::fs::remove_file(&log);
        let pid_file = self.bundle.join("init.pid");
        let bundle = self.bundle.clone();
        let id = self.id.clone();
        let restored = self
            .launch(process, pid_file.clone(), |console, stdio| async move {
                let options = RestoreOptions {
                    bundle: &bundle,
                    image_path: &restore.image,
                    work_path: &restore.work,
                    pid_file: &pid_file,
                    console_socket: console.as_deref(),
                    no_pivot_root: restore.no_pivot_root,
                };
                runtime.restore(&id, options, stdio).await
            })
            .await;
        restored.map_err(|error| with_criu_log(error, "restore", &log))
    }

    /// Dumps the running (or paused) task with CRIU into the request's path (or the options'
    /// image path). The task keeps running unless the options say `exit`; when CRIU fails,
    /// the error carries the end of its log and the task stays as it was.
    pub async fn checkpoint(&self, request: CheckpointTaskRequest) -> Result<(), Error> {
        self.check_id(&request.id)?;
        self.running_init()?;
        let options = match &request.options {
            Some(any) if any.type_url.ends_with("containerd.runc.v1.CheckpointOptions") => {
                RuncCheckpointOptions::decode(any.value.as_slice())
                    .map_err(|e| Error::invalid_argument(format!("checkpoint options: {e}")))?
            }
            Some(any) if !any.type_url.is_empty() => {
                return Err(Error::invalid_argument(format!(
                    "checkpoint options of type {} are not understood (containerd.runc.v1.CheckpointOptions are)",
                    any.type_url
                )));
            }
            _ => RuncCheckpointOptions::default(),
        };
        let image = if options.image_path.is_empty() {
            PathBuf::from(&request.path)
        } else {
            PathBuf::from(&options.image_path)
        };
        if image.as_os_str().is_empty() || !image.is_absolute() {
            return Err(Error::invalid_argument(format!(
                "checkpoint of task {}: an absolute image path is needed, not {:?}",
                self.id,
                image.display()
            )));
        }
        let work = if options.work_path.is_empty() {
            self.bundle.join("criu-work")
        } else {
            PathBuf::from(&options.work_path)
        };
        for dir in [&image, &work] {
            std::fs::create_dir_all(dir).map_err(|e| Error::internal(format!("create {}: {e}", dir.display())))?;
        }
        let log = work.join("dump.log");
        let _ = std::fs::remove_file(&log);
        let checkpoint = CheckpointOptions {
            image_path: &image,
            work_path: &work,
            leave_running: !options.exit,
            open_tcp: options.open_tcp,
            external_unix_sockets: options.external_unix_sockets,
            terminal: options.terminal,
            file_locks: options.file_locks,
            empty_namespaces: &options.empty_namespaces,
            cgroups_mode: &options.cgroups_mode,
        };
        let runtime = self.runtime()?;
        runtime
            .checkpoint(&self.id, checkpoint)
            .await
            .map_err(|error| with_criu_log(runtime_error(error), "dump", &log))?;
        tracing::info!(task = self.id, image = %image.display(), exit = options.exit, "checkpointed");
        Ok(())
    }

    pub async fn exec(&self, request: ExecProcessRequest) -> Result<(), Error> {
        self.check_id(&request.id)?;
        berth_core::identifiers::validate("exec id", &request.exec_id)?;
        let init = self.process("")?;
        if matches!(init.life(), Life::Stopped(_)) {
            return Err(Error::failed_precondition(format!("task {} has exited", self.id)));
        }
        let spec = request.spec.as_ref().map(|any| any.value.as_slice()).unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(spec).map(|v| !v.is_object()).unwrap_or(true) {
            return Err(Error::invalid_argument(format!(
                "exec {}: the process spec is not an OCI process (JSON)",
                request.exec_id
            )));
        }
        let spec_file = self.bundle.join(format!(".exec-{}.json", request.exec_id));
        let paths = StdioPaths {
            stdin: request.stdin,
            stdout: request.stdout,
            stderr: request.stderr,
            terminal: request.terminal,
        };
        let mut state = self.state();
        if state.execs.contains_key(&request.exec_id) {
            return Err(Error::already_exists(format!("exec {} of task {} already exists", request.exec_id, self.id)));
        }
        std::fs::write(&spec_file, spec).map_err(io_error("write the exec's process spec"))?;
        state.execs.insert(request.exec_id.clone(), Process::new(&request.exec_id, paths, Some(spec_file)));
        Ok(())
    }

    pub async fn delete(&self, request: DeleteRequest) -> Result<DeleteResponse, Error> {
        self.check_id(&request.id)?;
        let process = self.process(&request.exec_id)?;
        let name = process.name(&self.id);
        let exit = match process.life() {
            Life::Stopped(exit) => exit,
            Life::Running => {
                return Err(Error::failed_precondition(format!("{name} is running: kill it before deleting it")));
            }
            // Created from a checkpoint and never restored: nothing runs yet.
            Life::Created if process.exec_id.is_empty() && self.state().restore.is_some() => Exit::now(0, 0),
            Life::Created if process.exec_id.is_empty() => {
                // Never started: the runtime kills the waiting init process.
                self.runtime()?.delete(&self.id, true).await.map_err(runtime_error)?;
                let mut life = process.life.subscribe();
                let stopped =
                    tokio::time::timeout(Duration::from_secs(5), life.wait_for(|l| matches!(l, Life::Stopped(_))));
                match stopped.await {
                    Ok(Ok(life)) => match *life {
                        Life::Stopped(exit) => exit,
                        _ => Exit::now(process.pid(), 255),
                    },
                    _ => Exit::now(process.pid(), 255),
                }
            }
            Life::Created => Exit::now(0, 0),
        };
        if process.exec_id.is_empty() {
            if let Ok(runtime) = self.runtime() {
                // Force: a container whose init exited may still have processes (shared PID namespace).
                if let Err(e) = runtime.delete(&self.id, true).await {
                    tracing::warn!(task = self.id, "{e}");
                }
            }
            let mounted = {
                let mut state = self.state();
                state.init = None;
                state.execs.clear();
                std::mem::take(&mut state.mounted)
            };
            if mounted {
                mount::unmount_all(&self.bundle.join("rootfs"))
                    .map_err(|e| Error::internal(format!("unmount the rootfs: {e}")))?;
            }
        } else {
            self.state().execs.remove(&process.exec_id);
            if let Some(spec) = &process.spec_file {
                let _ = std::fs::remove_file(spec);
            }
        }
        Ok(DeleteResponse { pid: exit.pid, exit_status: exit.status, exited_at: Some(exit.timestamp()) })
    }

    pub async fn kill(&self, request: KillRequest) -> Result<(), Error> {
        self.check_id(&request.id)?;
        let process = self.process(&request.exec_id)?;
        if let Life::Stopped(_) = process.life() {
            return Err(Error::not_found(format!("{}: process already finished", process.name(&self.id))));
        }
        if process.exec_id.is_empty() {
            return self.runtime()?.kill(&self.id, request.signal, request.all).await.map_err(runtime_error);
        }
        if process.life() == Life::Created {
            return Err(Error::failed_precondition(format!("{} is not started", process.name(&self.id))));
        }
        let signal = nix::sys::signal::Signal::try_from(request.signal as i32)
            .map_err(|_| Error::invalid_argument(format!("signal {} is not a signal", request.signal)))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.pid() as i32), signal)
            .map_err(|e| Error::not_found(format!("{}: {e}", process.name(&self.id))))
    }

    pub async fn pids(&self, request: PidsRequest) -> Result<PidsResponse, Error> {
        self.check_id(&request.id)?;
        let pids = self.runtime()?.ps(&self.id).await.map_err(runtime_error)?;
        let execs: HashMap<u32, String> =
            self.state().execs.values().map(|p| (p.pid(), p.exec_id.clone())).filter(|(pid, _)| *pid != 0).collect();
        let processes = pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                info: execs
                    .get(&pid)
                    .map(|exec_id| berth_peers::events::any_of(&ProcessDetails { exec_id: exec_id.clone() })),
            })
            .collect();
        Ok(PidsResponse { processes })
    }

    fn running_init(&self) -> Result<(), Error> {
        let init = self.process("")?;
        match init.life() {
            Life::Running => Ok(()),
            _ => Err(Error::failed_precondition(format!("task {} is not running", self.id))),
        }
    }

    pub async fn pause(&self, request: PauseRequest) -> Result<(), Error> {
        self.check_id(&request.id)?;
        self.running_init()?;
        self.runtime()?.pause(&self.id).await.map_err(runtime_error)?;
        self.state().paused = true;
        Ok(())
    }

    pub async fn resume(&self, request: ResumeRequest) -> Result<(), Error> {
        self.check_id(&request.id)?;
        self.running_init()?;
        self.runtime()?.resume(&self.id).await.map_err(runtime_error)?;
        self.state().paused = false;
        Ok(())
    }

    pub async fn close_io(&self, request: CloseIoRequest) -> Result<(), Error> {
        self.check_id(&request.id)?;
        let process = self.process(&request.exec_id)?;
        if request.stdin
            && let Some(io) = process.io()
        {
            io.close_stdin();
        }
        Ok(())
    }

    pub async fn resize_pty(&self, request: ResizePtyRequest) -> Result<(), Error> {
        self.check_id(&request.id)?;
        let process = self.process(&request.exec_id)?;
        let name = process.name(&self.id);
        let io = process.io().ok_or_else(|| Error::failed_precondition(format!("{name} is not started")))?;
        io.resize(request.width, request.height).map_err(|e| Error::failed_precondition(format!("{name}: {e}")))
    }

    pub async fn update(&self, request: UpdateTaskRequest) -> Result<(), Error> {
        self.check_id(&request.id)?;
        self.running_init()?;
        let resources = request.resources.map(|any| any.value).unwrap_or_default();
        if serde_json::from_slice::<serde_json::Value>(&resources).map(|v| !v.is_object()).unwrap_or(true) {
            return Err(Error::invalid_argument("resources are not an OCI LinuxResources document (JSON)"));
        }
        self.runtime()?.update(&self.id, resources).await.map_err(runtime_error)
    }

    pub async fn wait(&self, request: WaitRequest) -> Result<WaitResponse, Error> {
        self.check_id(&request.id)?;
        let process = self.process(&request.exec_id)?;
        let mut life = process.life.subscribe();
        let stopped = life.wait_for(|l| matches!(l, Life::Stopped(_))).await.map(|l| *l);
        match stopped {
            Ok(Life::Stopped(exit)) => Ok(WaitResponse { exit_status: exit.status, exited_at: Some(exit.timestamp()) }),
            _ => Err(Error::unavailable(format!("{}: the shim is stopping", process.name(&self.id)))),
        }
    }

    pub async fn state_of(&self, request: StateRequest) -> Result<StateResponse, Error> {
        self.check_id(&request.id)?;
        let process = self.process(&request.exec_id)?;
        let exit = match process.life() {
            Life::Stopped(exit) => Some(exit),
            _ => None,
        };
        Ok(StateResponse {
            id: self.id.clone(),
            bundle: self.bundle.display().to_string(),
            pid: process.pid(),
            status: self.status_of(&process) as i32,
            stdin: process.paths.stdin.clone(),
            stdout: process.paths.stdout.clone(),
            stderr: process.paths.stderr.clone(),
            terminal: process.paths.terminal,
            exit_status: exit.map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.timestamp()),
            exec_id: process.exec_id.clone(),
        })
    }

    pub async fn stats(&self, request: StatsRequest) -> Result<StatsResponse, Error> {
        self.check_id(&request.id)?;
        let init = self.process("")?;
        if !matches!(init.life(), Life::Running) {
            return Err(Error::failed_precondition(format!("task {} is not running", self.id)));
        }
        let metrics = super::stats::of(init.pid()).map_err(|e| match e {
            super::stats::StatsError::Gone(_) => Error::not_found(format!("task {}: {e}", self.id)),
            super::stats::StatsError::CgroupV2 => Error::unimplemented(e.to_string()),
        })?;
        Ok(StatsResponse { stats: Some(berth_peers::events::any_of(&metrics)) })
    }

    pub fn connect(&self, request: ConnectRequest) -> Result<ConnectResponse, Error> {
        self.check_id(&request.id)?;
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.init_pid(),
            version: format!("berth-shim {}", env!("CARGO_PKG_VERSION")),
        })
    }
}

/// A short stable name for `key` (socket file names must stay short).
pub fn short_hash(key: &str) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}
