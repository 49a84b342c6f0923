//! `berth tasks ...`: the running side of containers (containerd.services.tasks.v1) — list,
//! start, kill, ps, pause, resume, exec, metrics, rm, attach, checkpoint — shaped like `ctr tasks`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use berth_api::containerd::runc::v1::ProcessDetails;
use berth_api::containerd::services::containers::v1::GetContainerRequest;
use berth_api::containerd::services::tasks::v1::{
    CreateTaskRequest, DeleteTaskRequest, ExecProcessRequest, GetRequest, KillRequest, ListPidsRequest,
    ListTasksRequest, MetricsRequest, PauseTaskRequest, ResumeTaskRequest, WaitRequest,
};
use berth_api::containerd::v1::types::{Process, ProcessInfo, Status as TaskStatus};
use berth_api::prost_types::Any;
use clap::Subcommand;
use prost::Message as _;
use serde::Serialize;
use serde_json::{Value, json};
use tonic::Code;

use crate::client::Client;
use crate::commands::remove_each;
use crate::commands::run::{Attach, attach_and_wait, delete_exec, start};
use crate::errors::Subject;
use crate::image_spec;
use crate::output::{self, Format, Table};
use crate::taskio::{Ends, Fifos};

/// A process ended with a non-zero status: `berth` exits with it, silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exited(pub u32);

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the process exited with status {}", self.0)
    }
}

impl std::error::Error for Exited {}

impl Exited {
    /// Ok for 0, otherwise this error carrying the status.
    pub fn result(status: u32) -> anyhow::Result<()> {
        if status == 0 { Ok(()) } else { Err(anyhow::Error::new(Exited(status))) }
    }

    /// The exit code of the `berth` process: the status, capped at 255.
    pub fn code(&self) -> u8 {
        u8::try_from(self.0).unwrap_or(255)
    }

    /// The exit status carried by `err`, if it is one.
    pub fn of(err: &anyhow::Error) -> Option<u8> {
        err.downcast_ref::<Exited>().map(Exited::code)
    }
}

/// Explains a failed tasks call about container `id`.
pub fn task_error(client: &Client, status: tonic::Status, id: &str) -> anyhow::Error {
    let namespace = client.namespace();
    match status.code() {
        Code::NotFound if !status.message().contains("container") || status.message().contains("task") => {
            anyhow::anyhow!(
                "{} (list tasks with `berth -n {namespace} tasks ls`)",
                if status.message().is_empty() {
                    format!("no task {id} in namespace {namespace}")
                } else {
                    status.message().to_string()
                }
            )
        }
        Code::Unimplemented => anyhow::anyhow!("{}: not supported by this server yet", status.message()),
        _ => client.explain(status, Subject::Container(id)),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List tasks: TASK PID STATUS
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Create and start the task of an existing container, attached to this terminal
    Start(StartArgs),
    /// Send a signal to a task, one of its execs, or one of its processes
    Kill(KillArgs),
    /// List a task's processes: PID INFO (the exec a process belongs to)
    Ps(IdArg),
    /// Freeze every process of a task
    Pause(IdArg),
    /// Thaw a paused task
    Resume(IdArg),
    /// Run another process in a running task
    Exec(ExecArgs),
    /// Print a task's cgroup statistics
    Metrics(MetricsArgs),
    /// Delete stopped tasks (with -f, kill running ones first); prints each ID deleted
    #[command(visible_aliases = ["delete", "del", "remove"])]
    Rm(RmArgs),
    /// Attach this terminal to a running task's stdio (of a task started with -d); Ctrl-C detaches
    Attach(IdArg),
    /// Checkpoint a running task with CRIU into a checkpoint image (prints its name); restore
    /// it with `berth run --checkpoint NAME IMAGE ID`
    Checkpoint(CheckpointArgs),
}

#[derive(Debug, clap::Args)]
pub struct IdArg {
    /// Container ID
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct CheckpointArgs {
    /// Stop the task once it is checkpointed
    #[arg(long)]
    pub exit: bool,
    /// Name of the checkpoint image [default: containerd.io/checkpoint/ID:SECONDS, as ctr]
    #[arg(long)]
    pub name: Option<String>,
    /// Leave CRIU's image in this directory (on the server) instead of making a checkpoint image
    #[arg(long)]
    pub image_path: Option<String>,
    /// CRIU's work directory, where its log stays (on the server)
    #[arg(long)]
    pub work_path: Option<String>,
    /// Checkpoint established TCP connections
    #[arg(long)]
    pub tcp: bool,
    /// Checkpoint unix sockets connected outside the container
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Checkpoint file locks
    #[arg(long)]
    pub file_locks: bool,
    /// Container ID
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print only the IDs
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Start and return (attach later with `berth tasks attach`)
    #[arg(short = 'd', long)]
    pub detach: bool,
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal, by name (SIGTERM, TERM, KILL) or number
    #[arg(short, long, default_value = "SIGTERM", value_parser = parse_signal)]
    pub signal: i32,
    /// Send it to every process of the task
    #[arg(long, conflicts_with_all = ["pid", "exec_id"])]
    pub all: bool,
    /// Send it to one exec
    #[arg(long, conflicts_with = "pid")]
    pub exec_id: Option<String>,
    /// Send it to one process of the task (refused unless `tasks ps` lists it)
    #[arg(long)]
    pub pid: Option<u32>,
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// ID of the exec [default: a random one]
    #[arg(long)]
    pub exec_id: Option<String>,
    /// Give the process a terminal (this one, in raw mode)
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Start it and return without waiting
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Working directory [default: the container's]
    #[arg(long)]
    pub cwd: Option<String>,
    /// User: uid or uid:gid [default: the container's]
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Environment variable, KEY=VALUE, after the container's (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = image_spec::parse_env)]
    pub env: Vec<String>,
    /// Container ID
    pub id: String,
    /// Command to run
    #[arg(value_name = "COMMAND", required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct MetricsArgs {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Kill running tasks (SIGKILL) before deleting them
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ls(args) => ls(client, args).await,
        Command::Start(args) => start_task(client, args).await,
        Command::Kill(args) => kill(client, args).await,
        Command::Ps(args) => ps(client, &args.id).await,
        Command::Pause(args) => {
            let request = PauseTaskRequest { container_id: args.id.clone() };
            client.tasks().pause(request).await.map_err(|status| task_error(client, status, &args.id))?;
            Ok(())
        }
        Command::Resume(args) => {
            let request = ResumeTaskRequest { container_id: args.id.clone() };
            client.tasks().resume(request).await.map_err(|status| task_error(client, status, &args.id))?;
            Ok(())
        }
        Command::Exec(args) => exec(client, args).await,
        Command::Metrics(args) => metrics(client, args).await,
        Command::Rm(args) => rm(client, args).await,
        Command::Attach(args) => attach(client, &args.id).await,
        Command::Checkpoint(args) => checkpoint::run(client, args).await,
    }
}

/// The name ctr prints for a task status.
pub fn status_name(status: i32) -> &'static str {
    match TaskStatus::try_from(status).unwrap_or(TaskStatus::Unknown) {
        TaskStatus::Unknown => "UNKNOWN",
        TaskStatus::Created => "CREATED",
        TaskStatus::Running => "RUNNING",
        TaskStatus::Stopped => "STOPPED",
        TaskStatus::Paused => "PAUSED",
        TaskStatus::Pausing => "PAUSING",
    }
}

#[derive(Debug, Serialize)]
struct TaskRow {
    id: String,
    pid: u32,
    status: &'static str,
    exit_status: u32,
}

async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<()> {
    let response = client
        .tasks()
        .list(ListTasksRequest::default())
        .await
        .map_err(|status| client.explain(status, Subject::Server))?;
    let mut tasks = response.into_inner().tasks;
    tasks.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    let text = match (args.quiet, args.format) {
        (true, _) => tasks.iter().map(|task| format!("{}\n", task.container_id)).collect(),
        (false, Format::Table) => tasks_table(&tasks),
        (false, Format::Json) => output::json(
            &tasks
                .iter()
                .map(|task| TaskRow {
                    id: task.container_id.clone(),
                    pid: task.pid,
                    status: status_name(task.status),
                    exit_status: task.exit_status,
                })
                .collect::<Vec<_>>(),
        )?,
    };
    output::print(&text)?;
    Ok(())
}

/// `tasks ls` as ctr prints it.
pub fn tasks_table(tasks: &[Process]) -> String {
    let mut table = Table::new(&["TASK", "PID", "STATUS"]);
    for task in tasks {
        table.row(vec![task.container_id.clone(), task.pid.to_string(), status_name(task.status).to_string()]);
    }
    table.render()
}

async fn start_task(client: &Client, args: StartArgs) -> anyhow::Result<()> {
    let container = client
        .containers()
        .get(GetContainerRequest { id: args.id.clone() })
        .await
        .map_err(|status| client.explain(status, Subject::Container(&args.id)))?
        .into_inner()
        .container
        .with_context(|| format!("berth answered without the record of container {}", args.id))?;
    let terminal = container
        .spec
        .as_ref()
        .and_then(|any| serde_json::from_slice::<Value>(&any.value).ok())
        .is_some_and(|spec| spec["process"]["terminal"] == true);
    let fifos = Fifos::create(&format!("{}-{}", client.namespace(), args.id), terminal)?;
    let ends = if args.detach { None } else { Some(Ends::open(&fifos.stdin, &fifos.stdout, &fifos.stderr)?) };
    // No rootfs: the execution service mounts the container's snapshot itself.
    let request = CreateTaskRequest {
        container_id: args.id.clone(),
        stdin: fifos.stdin.clone(),
        stdout: fifos.stdout.clone(),
        stderr: fifos.stderr.clone(),
        terminal,
        ..Default::default()
    };
    if let Err(status) = client.tasks().create(request).await {
        fifos.remove();
        return Err(task_error(client, status, &args.id));
    }
    let Some(ends) = ends else {
        start(client, &args.id, "").await?;
        return Ok(());
    };
    let status = attach_and_wait(client, &args.id, "", ends, terminal, Attach::Start).await;
    let deleted = client.tasks().delete(DeleteTaskRequest { container_id: args.id.clone() }).await;
    fifos.remove();
    let status = status?.unwrap_or_default();
    deleted.map_err(|status| task_error(client, status, &args.id))?;
    Exited::result(status)
}

/// Parses a signal: `SIGTERM`, `TERM`, `term` or `15`.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    if let Ok(number) = text.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(number)
            .map(|signal| signal as i32)
            .map_err(|_| format!("unknown signal number {number}"));
    }
    let upper = text.to_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<nix::sys::signal::Signal>()
        .map(|signal| signal as i32)
        .map_err(|_| format!("unknown signal {text:?} (use e.g. SIGTERM, KILL or 9)"))
}

async fn list_pids(client: &Client, id: &str) -> anyhow::Result<Vec<ProcessInfo>> {
    let request = ListPidsRequest { container_id: id.to_string() };
    let response = client.tasks().list_pids(request).await.map_err(|status| task_error(client, status, id))?;
    Ok(response.into_inner().processes)
}

/// The exec a process belongs to, from ListPids' info (runc's ProcessDetails).
fn exec_of(info: Option<&Any>) -> Option<String> {
    let any = info?;
    if !any.type_url.ends_with("ProcessDetails") {
        return None;
    }
    ProcessDetails::decode(any.value.as_slice()).ok().map(|details| details.exec_id).filter(|id| !id.is_empty())
}

async fn kill(client: &Client, args: KillArgs) -> anyhow::Result<()> {
    let mut exec_id = args.exec_id.clone().unwrap_or_default();
    if let Some(pid) = args.pid {
        let processes = list_pids(client, &args.id).await?;
        let Some(process) = processes.iter().find(|process| process.pid == pid) else {
            let pids: Vec<String> = processes.iter().map(|p| p.pid.to_string()).collect();
            anyhow::bail!(
                "pid {pid} is not a process of task {} (its processes: {})",
                args.id,
                if pids.is_empty() { "none".to_string() } else { pids.join(", ") }
            );
        };
        let init = client
            .tasks()
            .get(GetRequest { container_id: args.id.clone(), exec_id: String::new() })
            .await
            .map_err(|status| task_error(client, status, &args.id))?
            .into_inner()
            .process
            .map(|process| process.pid);
        match exec_of(process.info.as_ref()) {
            Some(exec) => exec_id = exec,
            None if init == Some(pid) => {}
            None => {
                // A process the task's own processes started: the API has no call for it, so
                // signal it directly (it was listed by the task a moment ago).
                let signal = nix::sys::signal::Signal::try_from(args.signal)?;
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
                    .with_context(|| format!("cannot signal pid {pid} of task {}", args.id))?;
                return Ok(());
            }
        }
    }
    let request = KillRequest { container_id: args.id.clone(), exec_id, signal: args.signal as u32, all: args.all };
    client.tasks().kill(request).await.map_err(|status| task_error(client, status, &args.id))?;
    Ok(())
}

async fn ps(client: &Client, id: &str) -> anyhow::Result<()> {
    let processes = list_pids(client, id).await?;
    let mut table = Table::new(&["PID", "INFO"]);
    for process in &processes {
        let info = exec_of(process.info.as_ref()).map(|exec| format!("exec {exec}")).unwrap_or_else(|| "-".into());
        table.row(vec![process.pid.to_string(), info]);
    }
    output::print(&table.render())?;
    Ok(())
}

async fn exec(client: &Client, args: ExecArgs) -> anyhow::Result<()> {
    let container = client
        .containers()
        .get(GetContainerRequest { id: args.id.clone() })
        .await
        .map_err(|status| client.explain(status, Subject::Container(&args.id)))?
        .into_inner()
        .container
        .with_context(|| format!("berth answered without the record of container {}", args.id))?;
    let spec: Value = container
        .spec
        .as_ref()
        .and_then(|any| serde_json::from_slice(&any.value).ok())
        .with_context(|| format!("container {} has no OCI spec to take the process from", args.id))?;
    let process = exec_process(&spec["process"], &args)?;
    let exec_id = args.exec_id.clone().unwrap_or_else(|| format!("exec-{:08x}", rand::random::<u32>()));
    let fifos = Fifos::create(&format!("{}-{}-{exec_id}", client.namespace(), args.id), args.tty)?;
    let ends = if args.detach { None } else { Some(Ends::open(&fifos.stdin, &fifos.stdout, &fifos.stderr)?) };
    let request = ExecProcessRequest {
        container_id: args.id.clone(),
        stdin: fifos.stdin.clone(),
        stdout: fifos.stdout.clone(),
        stderr: fifos.stderr.clone(),
        terminal: args.tty,
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".to_string(),
            value: serde_json::to_vec(&process)?,
        }),
        exec_id: exec_id.clone(),
    };
    if let Err(status) = client.tasks().exec(request).await {
        fifos.remove();
        return Err(task_error(client, status, &args.id));
    }
    let Some(ends) = ends else {
        start(client, &args.id, &exec_id).await?;
        output::print(&format!("{exec_id}\n"))?;
        return Ok(());
    };
    let status = attach_and_wait(client, &args.id, &exec_id, ends, args.tty, Attach::Start).await;
    let deleted = delete_exec(client, &args.id, &exec_id).await;
    fifos.remove();
    let status = status?.unwrap_or_default();
    deleted?;
    Exited::result(status)
}

/// The container's process with the exec's args, terminal, and overrides.
pub fn exec_process(base: &Value, args: &ExecArgs) -> anyhow::Result<Value> {
    let mut process = if base.is_object() { base.clone() } else { json!({"cwd": "/", "user": {"uid": 0, "gid": 0}}) };
    process["args"] = json!(args.args);
    process["terminal"] = json!(args.tty);
    if let Some(cwd) = &args.cwd {
        if !cwd.starts_with('/') {
            anyhow::bail!("working directory {cwd:?} must be an absolute path");
        }
        process["cwd"] = json!(cwd);
    }
    if let Some(user) = &args.user {
        let (uid, gid) = image_spec::resolve_user(user, &image_spec::Accounts::default())?;
        process["user"] = json!({"uid": uid, "gid": gid});
    }
    if !args.env.is_empty() {
        let current: Vec<String> = process["env"]
            .as_array()
            .map(|env| env.iter().filter_map(|e| e.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut env = current.clone();
        for entry in &args.env {
            env = image_spec::environment(&env, std::slice::from_ref(entry));
        }
        process["env"] = json!(env);
    }
    Ok(process)
}

/// cgroup v1 statistics as the execution service sends them (`io.containerd.cgroups.v1.Metrics`);
/// only the fields printed here.
mod cgroups_v1 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "2")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "3")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub limit: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuStat {
        #[prost(message, optional, tag = "1")]
        pub usage: Option<CpuUsage>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CpuUsage {
        #[prost(uint64, tag = "1")]
        pub total: u64,
        #[prost(uint64, tag = "2")]
        pub kernel: u64,
        #[prost(uint64, tag = "3")]
        pub user: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "1")]
        pub cache: u64,
        #[prost(uint64, tag = "2")]
        pub rss: u64,
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
        #[prost(uint64, tag = "3")]
        pub max: u64,
        #[prost(uint64, tag = "4")]
        pub failcnt: u64,
    }
}

/// The metrics ctr prints, name → value, from a cgroup v1 Metrics message.
pub fn metric_values(any: &Any) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    if !any.type_url.ends_with("io.containerd.cgroups.v1.Metrics") {
        anyhow::bail!("metrics of type {} cannot be shown (only io.containerd.cgroups.v1.Metrics)", any.type_url);
    }
    let metrics = cgroups_v1::Metrics::decode(any.value.as_slice()).context("malformed cgroup v1 metrics")?;
    let memory = metrics.memory.unwrap_or_default();
    let usage = memory.usage.unwrap_or_default();
    let cpu = metrics.cpu.and_then(|cpu| cpu.usage).unwrap_or_default();
    let pids = metrics.pids.unwrap_or_default();
    Ok(BTreeMap::from([
        ("memory.usage_in_bytes", usage.usage),
        ("memory.limit_in_bytes", usage.limit),
        ("memory.max_usage_in_bytes", usage.max),
        ("memory.failcnt", usage.failcnt),
        ("memory.stat.cache", memory.cache),
        ("memory.stat.rss", memory.rss),
        ("cpuacct.usage", cpu.total),
        ("cpuacct.usage_user", cpu.user),
        ("cpuacct.usage_sys", cpu.kernel),
        ("pids.current", pids.current),
        ("pids.limit", pids.limit),
    ]))
}

async fn metrics(client: &Client, args: MetricsArgs) -> anyhow::Result<()> {
    let request = MetricsRequest { filters: vec![format!("id=={}", args.id)] };
    let response = client.tasks().metrics(request).await.map_err(|status| task_error(client, status, &args.id))?;
    let metric = response
        .into_inner()
        .metrics
        .into_iter()
        .find(|metric| metric.id == args.id)
        .with_context(|| format!("no metrics for task {}: is it running? (see `berth tasks ls`)", args.id))?;
    let data = metric.data.with_context(|| format!("the metrics of task {} came without data", args.id))?;
    let values = metric_values(&data)?;
    let text = match args.format {
        Format::Json => output::json(&json!({
            "id": args.id,
            "timestamp": output::rfc3339(metric.timestamp.as_ref()),
            "metrics": values,
        }))?,
        Format::Table => {
            let mut head = Table::new(&["ID", "TIMESTAMP"]);
            head.row(vec![args.id.clone(), output::rfc3339(metric.timestamp.as_ref()).unwrap_or_default()]);
            let mut table = Table::new(&["METRIC", "VALUE"]);
            for (name, value) in &values {
                table.row(vec![name.to_string(), value.to_string()]);
            }
            format!("{}\n{}", head.render(), table.render())
        }
    };
    output::print(&text)?;
    Ok(())
}

async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<()> {
    let force = args.force;
    remove_each("tasks", &args.ids, |id| async move { delete_task(client, &id, force).await }).await
}

async fn delete_task(client: &Client, id: &str, force: bool) -> anyhow::Result<()> {
    let process = client
        .tasks()
        .get(GetRequest { container_id: id.to_string(), exec_id: String::new() })
        .await
        .map_err(|status| task_error(client, status, id))?
        .into_inner()
        .process;
    let running = process
        .as_ref()
        .is_some_and(|p| p.status != TaskStatus::Stopped as i32 && p.status != TaskStatus::Created as i32);
    if running {
        if !force {
            anyhow::bail!(
                "task {id} is {}: stop it first (`berth tasks kill {id}`) or delete it with -f",
                status_name(process.as_ref().map_or(0, |p| p.status)).to_lowercase()
            );
        }
        let kill = KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: true,
        };
        client.tasks().kill(kill).await.map_err(|status| task_error(client, status, id))?;
        let wait = WaitRequest { container_id: id.to_string(), exec_id: String::new() };
        tokio::time::timeout(Duration::from_secs(10), client.tasks().wait(wait))
            .await
            .with_context(|| format!("task {id} did not exit within 10 s of SIGKILL"))?
            .map_err(|status| task_error(client, status, id))?;
    }
    client
        .tasks()
        .delete(DeleteTaskRequest { container_id: id.to_string() })
        .await
        .map_err(|status| task_error(client, status, id))?;
    if let Some(process) = process {
        Fifos::remove_dir_of(&process.stdout);
    }
    Ok(())
}

async fn attach(client: &Client, id: &str) -> anyhow::Result<()> {
    let process = client
        .tasks()
        .get(GetRequest { container_id: id.to_string(), exec_id: String::new() })
        .await
        .map_err(|status| task_error(client, status, id))?
        .into_inner()
        .process
        .with_context(|| format!("berth answered without the process of task {id}"))?;
    if process.stdout.is_empty() && process.stdin.is_empty() {
        anyhow::bail!("task {id} has no stdio to attach to (it was created without FIFOs)");
    }
    let ends = Ends::open(&process.stdin, &process.stdout, &process.stderr)?;
    match attach_and_wait(client, id, "", ends, process.terminal, Attach::Running).await? {
        Some(status) => Exited::result(status),
        None => {
            eprintln!("berth: detached from task {id}; it keeps running");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    use crate::args::{Cli, Command as Top};

    fn tasks(args: &[&str]) -> Result<Command, clap::Error> {
        let cli = Cli::try_parse_from(["berth", "tasks"].iter().chain(args.iter()).copied())?;
        match cli.command {
            Top::Tasks(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn checkpoint_flags_become_runc_options() {
        let Command::Checkpoint(args) = tasks(&["checkpoint", "--exit", "--tcp", "--name", "ck:1", "c1"]).unwrap()
        else {
            panic!("not a checkpoint");
        };
        assert_eq!((args.id.as_str(), args.name.as_deref()), ("c1", Some("ck:1")));
        let any = checkpoint::options(&args);
        assert_eq!(any.type_url, "containerd.runc.v1.CheckpointOptions");
        let options = berth_api::containerd::runc::v1::CheckpointOptions::decode(any.value.as_slice()).unwrap();
        assert!(options.exit && options.open_tcp && !options.file_locks && options.image_path.is_empty());
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(checkpoint::default_name("c1", now), "containerd.io/checkpoint/c1:1700000000");
        assert!(tasks(&["checkpoint"]).is_err(), "ID is required");
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("kill").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("HUP").unwrap(), libc::SIGHUP);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn kill_flags() {
        let Command::Kill(args) = tasks(&["kill", "-s", "KILL", "--all", "c1"]).unwrap() else { panic!() };
        assert_eq!((args.signal, args.all, args.id.as_str()), (libc::SIGKILL, true, "c1"));
        let Command::Kill(args) = tasks(&["kill", "--pid", "42", "c1"]).unwrap() else { panic!() };
        assert_eq!((args.signal, args.pid), (libc::SIGTERM, Some(42)));
        assert!(tasks(&["kill", "--pid", "42", "--all", "c1"]).is_err());
    }

    #[test]
    fn exec_takes_the_rest_as_the_command() {
        let Command::Exec(args) = tasks(&["exec", "--exec-id", "e1", "-t", "c1", "sh", "-c", "ls -l"]).unwrap() else {
            panic!()
        };
        assert_eq!(args.exec_id.as_deref(), Some("e1"));
        assert!(args.tty);
        assert_eq!(args.args, ["sh", "-c", "ls -l"]);
        assert!(tasks(&["exec", "c1"]).is_err(), "a command is required");

        let base = json!({"args": ["sh"], "env": ["PATH=/bin", "A=1"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
        let Command::Exec(args) = tasks(&["exec", "-e", "A=2", "--cwd", "/tmp", "-u", "5:6", "c1", "id"]).unwrap()
        else {
            panic!()
        };
        let process = exec_process(&base, &args).unwrap();
        assert_eq!(process["args"], json!(["id"]));
        assert_eq!(process["env"], json!(["PATH=/bin", "A=2"]));
        assert_eq!(process["cwd"], "/tmp");
        assert_eq!(process["user"], json!({"uid": 5, "gid": 6}));
        assert_eq!(process["terminal"], false);
    }

    #[test]
    fn table_like_ctr() {
        let process = |id: &str, pid, status: TaskStatus| Process {
            container_id: id.into(),
            pid,
            status: status as i32,
            ..Default::default()
        };
        let text = tasks_table(&[process("web", 1234, TaskStatus::Running), process("db", 7, TaskStatus::Paused)]);
        assert_eq!(text, "TASK   PID    STATUS\nweb    1234   RUNNING\ndb     7      PAUSED\n");
    }

    #[test]
    fn metrics_decode_cgroup_v1() {
        let metrics = cgroups_v1::Metrics {
            pids: Some(cgroups_v1::PidsStat { current: 3, limit: 0 }),
            cpu: Some(cgroups_v1::CpuStat { usage: Some(cgroups_v1::CpuUsage { total: 99, kernel: 9, user: 90 }) }),
            memory: Some(cgroups_v1::MemoryStat {
                cache: 1,
                rss: 2,
                usage: Some(cgroups_v1::MemoryEntry { limit: 100, usage: 50, max: 60, failcnt: 0 }),
            }),
        };
        let any = Any { type_url: "io.containerd.cgroups.v1.Metrics".into(), value: metrics.encode_to_vec() };
        let values = metric_values(&any).unwrap();
        assert_eq!(values["memory.usage_in_bytes"], 50);
        assert_eq!(values["cpuacct.usage"], 99);
        assert_eq!(values["pids.current"], 3);
        let other = Any { type_url: "io.containerd.cgroups.v2.Metrics".into(), value: vec![] };
        assert!(metric_values(&other).is_err());
    }

    #[test]
    fn exit_statuses_become_exit_codes() {
        assert!(Exited::result(0).is_ok());
        let err = Exited::result(3).unwrap_err();
        assert_eq!(Exited::of(&err), Some(3));
        assert_eq!(Exited(300).code(), 255);
        assert_eq!(Exited::of(&anyhow::anyhow!("other")), None);
    }
}

/// `berth tasks checkpoint`: what ctr's task checkpoint does, client-side. The task is paused
/// while everything is taken (unless it was paused already); the server dumps it with CRIU
/// and stores the CRIU image and the spec; the read-write layer is diffed through the Diff
/// service; an OCI index of all that (with the image the container runs, named in the
/// `image.name` annotation) becomes the image record `containerd.io/checkpoint=true`.
pub mod checkpoint {
    use std::time::{SystemTime, UNIX_EPOCH};

    use berth_api::containerd::runc::v1::CheckpointOptions;
    use berth_api::containerd::services::containers::v1::{Container, GetContainerRequest};
    use berth_api::containerd::services::content::v1::content_client::ContentClient;
    use berth_api::containerd::services::content::v1::{WriteAction, WriteContentRequest};
    use berth_api::containerd::services::diff::v1::DiffRequest;
    use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
    use berth_api::containerd::services::images::v1::images_client::ImagesClient;
    use berth_api::containerd::services::images::v1::{CreateImageRequest, GetImageRequest, Image};
    use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
    use berth_api::containerd::services::snapshots::v1::{
        MountsRequest, RemoveSnapshotRequest, StatSnapshotRequest, ViewSnapshotRequest,
    };
    use berth_api::containerd::services::tasks::v1::tasks_client::TasksClient;
    use berth_api::containerd::services::tasks::v1::{
        CheckpointTaskRequest, GetRequest, PauseTaskRequest, ResumeTaskRequest,
    };
    use berth_api::containerd::types::Descriptor;
    use berth_api::containerd::v1::types::Status as TaskStatus;
    use berth_api::prost_types::Any;
    use prost::Message as _;
    use serde_json::{Value, json};
    use sha2::{Digest as _, Sha256};

    use super::{CheckpointArgs, task_error};
    use crate::client::Client;
    use crate::errors::Subject;
    use crate::rootfs::Lease;

    /// containerd's checkpoint media types.
    pub const CRIU_MEDIA_TYPE: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
    pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.containerd.container.checkpoint.config.v1+proto";
    pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
    /// The label containerd puts on checkpoint images, and the index annotation naming the
    /// image the container ran.
    pub const CHECKPOINT_LABEL: &str = "containerd.io/checkpoint";
    pub const IMAGE_NAME_ANNOTATION: &str = "image.name";
    /// The checkpoint options as the runc shim takes them.
    pub fn options(args: &CheckpointArgs) -> Any {
        let options = CheckpointOptions {
            exit: args.exit,
            open_tcp: args.tcp,
            external_unix_sockets: args.ext_unix_sk,
            file_locks: args.file_locks,
            image_path: args.image_path.clone().unwrap_or_default(),
            work_path: args.work_path.clone().unwrap_or_default(),
            ..Default::default()
        };
        Any { type_url: "containerd.runc.v1.CheckpointOptions".into(), value: options.encode_to_vec() }
    }

    /// The name ctr gives a checkpoint of `id` made now.
    pub fn default_name(id: &str, now: SystemTime) -> String {
        format!("containerd.io/checkpoint/{id}:{}", now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
    }

    pub async fn run(client: &Client, args: CheckpointArgs) -> anyhow::Result<()> {
        let id = args.id.clone();
        let container = client
            .containers()
            .get(GetContainerRequest { id: id.clone() })
            .await
            .map_err(|status| client.explain(status, Subject::Container(&id)))?
            .into_inner()
            .container
            .ok_or_else(|| anyhow::anyhow!("container {id}: the server sent no record"))?;
        let process = client
            .tasks()
            .get(GetRequest { container_id: id.clone(), exec_id: String::new() })
            .await
            .map_err(|status| task_error(client, status, &id))?
            .into_inner()
            .process
            .unwrap_or_default();
        let paused_here = match TaskStatus::try_from(process.status).unwrap_or(TaskStatus::Unknown) {
            TaskStatus::Running => {
                let pause = PauseTaskRequest { container_id: id.clone() };
                client.tasks().pause(pause).await.map_err(|status| task_error(client, status, &id))?;
                true
            }
            TaskStatus::Paused => false,
            _ => anyhow::bail!("task {id} is not running: only a running (or paused) task can be checkpointed"),
        };
        let lease = match Lease::create(client).await {
            Ok(lease) => lease,
            Err(err) => {
                resume(client, &id, paused_here).await;
                return Err(err);
            }
        };
        let made = take(client, &lease, &args, &container).await;
        // A task that was asked to exit is gone; the others run on (or stay paused, as they were).
        if !(args.exit && made.is_ok()) {
            resume(client, &id, paused_here).await;
        }
        lease.release().await;
        crate::output::print(&format!("{}\n", made?))?;
        Ok(())
    }

    async fn resume(client: &Client, id: &str, paused_here: bool) {
        if paused_here {
            let request = ResumeTaskRequest { container_id: id.to_string() };
            if let Err(status) = client.tasks().resume(request).await {
                eprintln!("berth: task {id} stays paused: {:#}", task_error(client, status, id));
            }
        }
    }

    /// Checkpoints the task and makes its checkpoint image; returns what to print: the image's
    /// name, or the directory CRIU's image was left in.
    async fn take(
        client: &Client,
        lease: &Lease<'_>,
        args: &CheckpointArgs,
        container: &Container,
    ) -> anyhow::Result<String> {
        let id = args.id.as_str();
        let request = CheckpointTaskRequest {
            container_id: id.to_string(),
            parent_checkpoint: String::new(),
            options: Some(options(args)),
        };
        let descriptors = TasksClient::new(lease.transport())
            .checkpoint(request)
            .await
            .map_err(|status| task_error(client, status, id))?
            .into_inner()
            .descriptors;
        if let Some(path) = &args.image_path {
            return Ok(path.clone());
        }
        let architecture = crate::rootfs::host_architecture();
        let entry = |d: &Descriptor| {
            let mut entry = json!({
                "mediaType": d.media_type,
                "digest": d.digest,
                "size": d.size,
                "platform": {"os": "linux", "architecture": architecture},
            });
            if !d.annotations.is_empty() {
                entry["annotations"] = json!(d.annotations);
            }
            entry
        };
        let mut manifests: Vec<Value> = descriptors.iter().map(entry).collect();
        let mut annotations = serde_json::Map::new();
        if !container.image.is_empty() {
            let image = ImagesClient::new(lease.transport())
                .get(GetImageRequest { name: container.image.clone() })
                .await
                .ok()
                .and_then(|found| found.into_inner().image)
                .and_then(|image| image.target);
            match image {
                Some(target) => {
                    manifests.push(entry(&target));
                    annotations.insert(IMAGE_NAME_ANNOTATION.into(), container.image.clone().into());
                }
                None => eprintln!(
                    "berth: image {} of container {id} is not stored: left out of the checkpoint",
                    container.image
                ),
            }
        }
        if !container.snapshot_key.is_empty() {
            manifests.push(entry(&rw_layer(client, lease, container).await?));
        }
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": manifests,
            "annotations": annotations,
        });
        let data = serde_json::to_vec(&index)?;
        let labels = manifests
            .iter()
            .enumerate()
            .map(|(i, m)| {
                (format!("containerd.io/gc.ref.content.m.{i}"), m["digest"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        let target =
            write_blob(client, lease, &format!("checkpoint-index-{id}"), INDEX_MEDIA_TYPE, data, labels).await?;
        let name = args.name.clone().unwrap_or_else(|| default_name(id, SystemTime::now()));
        let image = Image {
            name: name.clone(),
            labels: [(CHECKPOINT_LABEL.to_string(), "true".to_string())].into(),
            target: Some(target),
            ..Default::default()
        };
        ImagesClient::new(lease.transport())
            .create(CreateImageRequest { image: Some(image), ..Default::default() })
            .await
            .map_err(|status| anyhow::anyhow!("store checkpoint image {name}: {}", status.message()))?;
        Ok(name)
    }

    /// The container's read-write layer: its snapshot diffed against a view of its parent.
    async fn rw_layer(client: &Client, lease: &Lease<'_>, container: &Container) -> anyhow::Result<Descriptor> {
        let (snapshotter, key) = (container.snapshotter.as_str(), container.snapshot_key.as_str());
        let explain = |status| client.explain(status, Subject::Snapshot { key, snapshotter });
        let mut snapshots = SnapshotsClient::new(lease.transport());
        let info = snapshots
            .stat(StatSnapshotRequest { snapshotter: snapshotter.into(), key: key.into() })
            .await
            .map_err(explain)?
            .into_inner()
            .info
            .unwrap_or_default();
        let view_key = format!(
            "{key}-parent-view-{}",
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        let view = ViewSnapshotRequest {
            snapshotter: snapshotter.into(),
            key: view_key.clone(),
            parent: info.parent.clone(),
            labels: Default::default(),
        };
        let lower = snapshots.view(view).await.map_err(explain)?.into_inner().mounts;
        let diffed = async {
            let upper = snapshots
                .clone()
                .mounts(MountsRequest { snapshotter: snapshotter.into(), key: key.into() })
                .await
                .map_err(explain)?
                .into_inner()
                .mounts;
            let request = DiffRequest {
                left: lower,
                right: upper,
                media_type: String::new(),
                r#ref: format!("checkpoint-rw-{key}"),
                labels: Default::default(),
                source_date_epoch: None,
            };
            DiffClient::new(lease.transport())
                .diff(request)
                .await
                .map_err(|status| anyhow::anyhow!("diff the read-write layer of {key}: {}", status.message()))?
                .into_inner()
                .diff
                .ok_or_else(|| anyhow::anyhow!("diff of {key}: the server returned no layer"))
        }
        .await;
        let _ = snapshots.remove(RemoveSnapshotRequest { snapshotter: snapshotter.into(), key: view_key }).await;
        diffed
    }

    /// Writes a small blob (the index) with `labels`; an existing one counts as written.
    async fn write_blob(
        client: &Client,
        lease: &Lease<'_>,
        reference: &str,
        media_type: &str,
        data: Vec<u8>,
        labels: std::collections::HashMap<String, String>,
    ) -> anyhow::Result<Descriptor> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        let size = data.len() as i64;
        let requests = vec![
            WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: reference.into(),
                data,
                ..Default::default()
            },
            WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: reference.into(),
                offset: size,
                total: size,
                expected: digest.clone(),
                labels,
                ..Default::default()
            },
        ];
        let explain = |status| client.explain(status, Subject::Ingest(reference));
        let written = ContentClient::new(lease.transport()).write(tokio_stream::iter(requests)).await;
        match written {
            Ok(responses) => {
                let mut responses = responses.into_inner();
                loop {
                    match responses.message().await {
                        Ok(Some(r)) if r.action == WriteAction::Commit as i32 => break,
                        Ok(Some(_)) => {}
                        Ok(None) => anyhow::bail!("write {reference}: content ended without a commit"),
                        Err(status) if status.code() == tonic::Code::AlreadyExists => break,
                        Err(status) => return Err(explain(status)),
                    }
                }
            }
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) => return Err(explain(status)),
        }
        Ok(Descriptor { media_type: media_type.into(), digest, size, annotations: Default::default() })
    }
}
