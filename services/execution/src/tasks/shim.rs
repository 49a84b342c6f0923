//! The service's side of a shim: starting one for a task, connecting to it, and typed calls
//! of containerd's runtime v2 shim API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use tonic::Status;

use crate::protocol::TASK_SERVICE;
use crate::protocol::v2::*;
use crate::ttrpc::Client;

/// How long a short shim call may take (Wait has no limit).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a CRIU dump may take.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the shim's `start` may take to daemonize.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to one task's shim. Cheap to clone.
#[derive(Clone)]
pub struct Shim {
    client: Client,
}

/// Starts `binary` as the shim of task `namespace/id` in `bundle` and connects to it.
///
/// The command line is containerd's (`--namespace --id --address --publish-binary ... start`,
/// in the bundle, events to `TTRPC_ADDRESS`), which berth-shim and containerd's shims both
/// take; berth-shim also takes `--bundle` and `--socket` (where to serve). A shim prints the
/// address it serves on and daemonizes; the address it printed is returned.
pub async fn launch(
    binary: &Path,
    namespace: &str,
    id: &str,
    bundle: &Path,
    socket: &Path,
    events: &Path,
) -> Result<(Shim, PathBuf), Status> {
    let berth_shim = is_berth_shim(binary);
    let mut command = tokio::process::Command::new(binary);
    command.arg("--namespace").arg(namespace).arg("--id").arg(id).arg("--address").arg(events);
    // Unused by shims that publish over ttrpc (all of containerd 1.5 and later).
    command.args(["--publish-binary", "/bin/true"]);
    if berth_shim {
        command.arg("--bundle").arg(bundle).arg("--socket").arg(socket);
    } else {
        // containerd's shims log to a FIFO in the bundle, which someone must read.
        follow_log(bundle, id)?;
    }
    command
        .arg("start")
        .current_dir(bundle)
        .env(crate::protocol::EVENTS_ADDRESS_ENV, events)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // Shims export no traces: one exporter per task would cost more than it tells.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    let output = tokio::time::timeout(START_TIMEOUT, command.output())
        .await
        .map_err(|_| {
            Status::unavailable(format!("{} start did not finish within {START_TIMEOUT:?}", binary.display()))
        })?
        .map_err(|e| Status::failed_precondition(format!("start {}: {e}", binary.display())))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Status::internal(format!(
            "{} start for task {id} failed ({}): {}",
            binary.display(),
            output.status,
            stderr.trim()
        )));
    }
    let address = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let served = PathBuf::from(address.strip_prefix("unix://").unwrap_or(&address));
    if !served.is_absolute() {
        return Err(Status::internal(format!("{} start printed no socket address: {address:?}", binary.display())));
    }
    Ok((Shim::connect(&served).await?, served))
}

/// Passes the log a containerd shim writes to the FIFO `log` in its bundle on to ours, on a
/// thread of its own until the shim closes it.
pub fn follow_log(bundle: &Path, id: &str) -> Result<(), Status> {
    let fifo = bundle.join("log");
    if !fifo.exists() {
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| Status::internal(format!("create the shim log FIFO {}: {e}", fifo.display())))?;
    }
    let id = id.to_string();
    std::thread::Builder::new()
        .name("shim-log".into())
        .spawn(move || {
            // Blocks until the shim opens its end; ends when the shim exits.
            let Ok(log) = std::fs::File::open(&fifo) else { return };
            for line in std::io::BufRead::lines(std::io::BufReader::new(log)).map_while(Result::ok) {
                tracing::info!(task = id, "shim: {line}");
            }
        })
        .map(drop)
        .map_err(|e| Status::internal(format!("follow the shim log: {e}")))
}

/// Whether `binary` is berth's own shim (the others are containerd shims).
pub fn is_berth_shim(binary: &Path) -> bool {
    binary.file_name().is_some_and(|name| name == "berth-shim")
}

impl Shim {
    pub async fn connect(socket: &Path) -> Result<Shim, Status> {
        let client = tokio::time::timeout(Duration::from_secs(2), Client::connect(socket, TASK_SERVICE))
            .await
            .map_err(|_| Status::unavailable(format!("connect to shim {}: timed out", socket.display())))?
            .map_err(|e| Status::unavailable(format!("connect to shim {}: {e}", socket.display())))?;
        Ok(Shim { client })
    }

    pub fn is_connected(&self) -> bool {
        self.client.is_connected()
    }

    async fn call<Req: Message, Resp: Message + Default>(&self, method: &str, request: Req) -> Result<Resp, Status> {
        self.client.call(method, &request, Some(CALL_TIMEOUT)).await
    }

    pub async fn create(&self, request: CreateTaskRequest) -> Result<CreateTaskResponse, Status> {
        // Mounting, starting the runtime and a terminal may take a while.
        self.client.call("Create", &request, Some(Duration::from_secs(60))).await
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<StartResponse, Status> {
        self.call("Start", StartRequest { id: id.into(), exec_id: exec_id.into() }).await
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse, Status> {
        self.call("Delete", DeleteRequest { id: id.into(), exec_id: exec_id.into() }).await
    }

    pub async fn state(&self, id: &str, exec_id: &str) -> Result<StateResponse, Status> {
        self.call("State", StateRequest { id: id.into(), exec_id: exec_id.into() }).await
    }

    pub async fn pids(&self, id: &str) -> Result<PidsResponse, Status> {
        self.call("Pids", PidsRequest { id: id.into() }).await
    }

    pub async fn pause(&self, id: &str) -> Result<(), Status> {
        self.call("Pause", PauseRequest { id: id.into() }).await
    }

    pub async fn resume(&self, id: &str) -> Result<(), Status> {
        self.call("Resume", ResumeRequest { id: id.into() }).await
    }

    pub async fn kill(&self, request: KillRequest) -> Result<(), Status> {
        self.call("Kill", request).await
    }

    pub async fn exec(&self, request: ExecProcessRequest) -> Result<(), Status> {
        self.call("Exec", request).await
    }

    pub async fn resize_pty(&self, request: ResizePtyRequest) -> Result<(), Status> {
        self.call("ResizePty", request).await
    }

    pub async fn close_io(&self, request: CloseIoRequest) -> Result<(), Status> {
        self.call("CloseIO", request).await
    }

    pub async fn update(&self, request: UpdateTaskRequest) -> Result<(), Status> {
        self.call("Update", request).await
    }

    /// Dumps the task with CRIU; as long as it takes (a large memory takes a while).
    pub async fn checkpoint(&self, request: CheckpointTaskRequest) -> Result<(), Status> {
        self.client.call("Checkpoint", &request, Some(CHECKPOINT_TIMEOUT)).await
    }

    pub async fn stats(&self, id: &str) -> Result<StatsResponse, Status> {
        self.call("Stats", StatsRequest { id: id.into() }).await
    }

    /// Waits, as long as it takes, for a process to exit.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse, Status> {
        self.client.call("Wait", &WaitRequest { id: id.into(), exec_id: exec_id.into() }, None).await
    }

    pub async fn connect_info(&self, id: &str) -> Result<ConnectResponse, Status> {
        self.call("Connect", ConnectRequest { id: id.into() }).await
    }

    /// Asks the shim to exit (with `now`, even while it still has a task).
    pub async fn shutdown(&self, id: &str, now: bool) -> Result<(), Status> {
        match self.call::<_, ()>("Shutdown", ShutdownRequest { id: id.into(), now }).await {
            // The shim may exit before its answer is read.
            Err(status) if status.code() == tonic::Code::Unavailable => Ok(()),
            other => other,
        }
    }
}

/// The shim binary installed beside berth-execution.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("berth-shim")))
        .unwrap_or_else(|| PathBuf::from("berth-shim"))
}
