//! Tasks on real runc through the gateway with containerd's client crate: output and exit
//! codes through FIFOs, stdin and CloseIO, no descriptor leaks into the container, kill by
//! signal and `all`, exec, ps, pause/resume, delete refused while running, terminals, and the
//! runtime chosen per container, Update of a memory limit, and OOM kills published.

mod tasks_common;

use std::time::Duration;

use berth_e2e::content::in_namespace;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, ListPidsRequest, ListTasksRequest, PauseTaskRequest,
    ResizePtyRequest, ResumeTaskRequest,
};
use nix::sys::signal::Signal;
use tasks_common::{Host, NS, read_fifo, write_fifo};
use tonic::Code;

const RUNNING: i32 = 2;
const STOPPED: i32 = 3;
const PAUSED: i32 = 4;

#[tokio::test]
async fn output_exit_codes_and_stdin_go_through_fifos() {
    let host = Host::start().await;
    let script = "echo out; echo err >&2; read line; echo got $line; ls /proc/self/fd; exit 3";
    host.container("io", &["sh", "-c", script]).await;
    let stdio = host.fifos("io");
    let (stdout, stderr) = (read_fifo(&stdio.stdout), read_fifo(&stdio.stderr));
    let pid = host.create("io", &stdio).await;
    assert!(pid > 0);
    assert_eq!(host.status("io", "").await.0, 1, "created, not started");
    assert_eq!(host.start_task("io", "").await, pid);
    write_fifo(&stdio.stdin, b"hello\n");
    let close = CloseIoRequest { container_id: "io".into(), exec_id: String::new(), stdin: true };
    host.tasks().close_io(in_namespace(close, NS)).await.unwrap();

    assert_eq!(host.wait("io", "").await, 3);
    let out = stdout.join().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], ["out", "got hello"], "{out}");
    // ls lists its own stdio and the directory it reads: nothing else came in from the shim.
    assert_eq!(&lines[2..], ["0", "1", "2", "3"], "descriptors in the container: {out}");
    assert_eq!(stderr.join().unwrap(), "err\n");
    assert_eq!(host.status("io", "").await, (STOPPED, 3));
    assert_eq!(host.delete("io").await.unwrap(), 3);
    assert_eq!(host.delete("io").await.unwrap_err().code(), Code::NotFound, "deleted once");
    let bundle = host.execution_root().join("tasks").join(NS).join("io");
    assert!(!bundle.exists(), "bundle removed");
}

#[tokio::test]
async fn kill_by_signal_and_all() {
    let host = Host::start().await;
    let pid = host.run_detached("trap", &["sh", "-c", "trap 'exit 42' TERM; while true; do sleep 0.1; done"]).await;
    tasks_common::wait_for_handler(pid, Signal::SIGTERM);
    host.kill("trap", "", Signal::SIGTERM, false).await.unwrap();
    assert_eq!(host.wait("trap", "").await, 42, "the trap ran");
    let err = host.kill("trap", "", Signal::SIGTERM, false).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "already finished: {err:?}");
    host.delete("trap").await.unwrap();

    host.run_detached("family", &["sh", "-c", "sleep 1000 & sleep 1000 & wait"]).await;
    let pids = |host: &Host| {
        let request = ListPidsRequest { container_id: "family".into() };
        let mut tasks = host.tasks();
        async move { tasks.list_pids(in_namespace(request, NS)).await.unwrap().into_inner().processes }
    };
    let before = pids(&host).await;
    assert_eq!(before.len(), 3, "sh and two sleeps: {before:?}");
    host.kill("family", "", Signal::SIGKILL, true).await.unwrap();
    assert_eq!(host.wait("family", "").await, 137);
    for process in before {
        assert!(
            berth_e2e::procs::wait_until(Duration::from_secs(5), || !berth_e2e::procs::alive(process.pid)),
            "pid {} is gone",
            process.pid
        );
    }
    assert_eq!(host.delete("family").await.unwrap(), 137);
}

#[tokio::test]
async fn exec_runs_in_the_task_and_shows_in_ps() {
    let host = Host::start().await;
    let init = host.run_detached("host", &["sleep", "1000"]).await;
    let spec =
        host.spec("host", &["sh", "-c", "echo exec $(hostname); read x; echo read $x; exit 5"], false)["process"]
            .clone();
    let stdio = host.fifos("e1");
    let stdout = read_fifo(&stdio.stdout);
    let exec = ExecProcessRequest {
        container_id: "host".into(),
        stdin: stdio.stdin.clone(),
        stdout: stdio.stdout.clone(),
        stderr: stdio.stderr.clone(),
        terminal: false,
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&spec).unwrap(),
        }),
        exec_id: "e1".into(),
    };
    host.tasks().exec(in_namespace(exec.clone(), NS)).await.unwrap();
    let err = host.tasks().exec(in_namespace(exec, NS)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let pid = host.start_task("host", "e1").await;
    assert!(pid > 0 && pid != init);

    let listed = host.tasks().list_pids(in_namespace(ListPidsRequest { container_id: "host".into() }, NS)).await;
    let processes = listed.unwrap().into_inner().processes;
    assert!(processes.iter().any(|p| p.pid == init && p.info.is_none()), "{processes:?}");
    let exec_info = processes.iter().find(|p| p.pid == pid).and_then(|p| p.info.clone()).expect("the exec listed");
    assert_eq!(exec_info.type_url, "containerd.runc.v1.ProcessDetails");
    assert_eq!(exec_info.value, [&[10u8, 2][..], b"e1"].concat(), "exec_id e1");

    write_fifo(&stdio.stdin, b"it\n");
    assert_eq!(host.wait("host", "e1").await, 5);
    assert_eq!(stdout.join().unwrap(), "exec host\nread it\n");
    assert_eq!(host.status("host", "e1").await, (STOPPED, 5));
    assert_eq!(host.status("host", "").await.0, RUNNING, "the task goes on");
    let delete = DeleteProcessRequest { container_id: "host".into(), exec_id: "e1".into() };
    let deleted = host.tasks().delete_process(in_namespace(delete, NS)).await.unwrap();
    assert_eq!(deleted.into_inner().exit_status, 5);

    host.kill("host", "", Signal::SIGKILL, false).await.unwrap();
    assert_eq!(host.wait("host", "").await, 137);
    host.delete("host").await.unwrap();
}

#[tokio::test]
async fn pause_freezes_and_resume_thaws() {
    let host = Host::start().await;
    let pid = host.run_detached("frozen", &["sh", "-c", "while true; do sleep 0.05; done"]).await;
    host.tasks().pause(in_namespace(PauseTaskRequest { container_id: "frozen".into() }, NS)).await.unwrap();
    assert_eq!(host.status("frozen", "").await.0, PAUSED);
    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit_once(')').unwrap().1.split_whitespace().next().unwrap().to_string()
    };
    let freezer = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(berth_e2e::procs::wait_until(Duration::from_secs(2), || state() == "D"), "frozen: {} ({freezer})", state());
    host.tasks().resume(in_namespace(ResumeTaskRequest { container_id: "frozen".into() }, NS)).await.unwrap();
    assert_eq!(host.status("frozen", "").await.0, RUNNING);
    assert!(berth_e2e::procs::wait_until(Duration::from_secs(2), || state() != "D"), "thawed: {}", state());
    let listed = host.tasks().list(in_namespace(ListTasksRequest { filter: String::new() }, NS)).await.unwrap();
    let tasks = listed.into_inner().tasks;
    assert_eq!(tasks.len(), 1);
    assert_eq!((tasks[0].id.as_str(), tasks[0].pid, tasks[0].status), ("frozen", pid, RUNNING));
    host.kill("frozen", "", Signal::SIGKILL, false).await.unwrap();
    host.wait("frozen", "").await;
    host.delete("frozen").await.unwrap();
}

#[tokio::test]
async fn a_running_task_is_not_deleted_until_it_is_killed() {
    let host = Host::start().await;
    let pid = host.run_detached("busy", &["sleep", "1000"]).await;
    let shim = host.shim_pid("busy").expect("the shim wrote its pid");
    println!("berth-shim RSS with one running task: {} KiB", berth_e2e::peers::rss_bytes(shim) / 1024);
    let err = host.delete("busy").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("busy") && err.message().contains("running"), "{}", err.message());
    assert!(berth_e2e::procs::alive(pid), "still running after the refused delete");
    host.kill("busy", "", Signal::SIGKILL, false).await.unwrap();
    assert_eq!(host.delete_after_exit("busy").await, 137);
    assert!(!berth_e2e::procs::alive(pid));
    let gone = berth_e2e::procs::wait_until(Duration::from_secs(5), || !berth_e2e::procs::alive(shim));
    assert!(gone, "the shim left with the task");
}

#[tokio::test]
async fn a_terminal_task_gets_a_pty_that_resizes() {
    let host = Host::start().await;
    let spec = host.spec("tty", &["sh", "-c", "busybox stty size; busybox tty; exit 9"], true);
    host.container_with("tty", spec, "io.containerd.runc.v2").await;
    let stdio = host.fifos("tty");
    let stdout = read_fifo(&stdio.stdout);
    let request = containerd_client::services::v1::CreateTaskRequest {
        container_id: "tty".into(),
        stdin: stdio.stdin.clone(),
        stdout: stdio.stdout.clone(),
        terminal: true,
        ..Default::default()
    };
    host.tasks().create(in_namespace(request, NS)).await.unwrap_or_else(|e| panic!("create: {e}"));
    let resize = ResizePtyRequest { container_id: "tty".into(), exec_id: String::new(), width: 100, height: 30 };
    host.tasks().resize_pty(in_namespace(resize, NS)).await.unwrap();
    host.start_task("tty", "").await;
    assert_eq!(host.wait("tty", "").await, 9);
    let out = stdout.join().unwrap();
    assert_eq!(out.replace('\r', ""), "30 100\n/dev/pts/0\n", "{out:?}");
    host.delete("tty").await.unwrap();

    // Without a terminal there is nothing to resize.
    host.run_detached("plain", &["sleep", "1000"]).await;
    let resize = ResizePtyRequest { container_id: "plain".into(), exec_id: String::new(), width: 1, height: 1 };
    let err = host.tasks().resize_pty(in_namespace(resize, NS)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    host.kill("plain", "", Signal::SIGKILL, false).await.unwrap();
    host.delete_after_exit("plain").await;
}

#[tokio::test]
async fn the_runtime_is_chosen_per_container_and_a_missing_one_is_named() {
    let host = Host::start().await;
    let missing = host.spec("missing", &["true"], false);
    host.container_with("missing", missing, "io.containerd.kata.v2").await;
    let request =
        containerd_client::services::v1::CreateTaskRequest { container_id: "missing".into(), ..Default::default() };
    let err = host.tasks().create(in_namespace(request, NS)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("io.containerd.kata.v2"), "{}", err.message());

    assert!(which("crun").is_some(), "crun is not installed: run scripts/install-deps.sh (Debian package crun)");
    match run_on_crun(&host, "crun", None).await {
        Ok(()) => {}
        // crun refuses hosts whose cgroup v2 hierarchy has controllers beside v1 (as here):
        // then it runs as a binary named in the runtime options (as `ctr run --runc-binary`),
        // a wrapper giving crun a mount namespace without the v2 hierarchy, i.e. plain v1.
        Err(err) if err.contains("hybrid mode") => {
            assert!(err.starts_with("crun create"), "crun ran: {err}");
            println!("crun refuses this host's hybrid cgroups ({err}); running it without the v2 hierarchy");
            let wrapper = host.stack.dir.path().join("crun-cgroup-v1");
            std::fs::write(
                &wrapper,
                "#!/bin/sh\nexec unshare -m --propagation private sh -c \
                 'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun \"$@\"' crun \"$@\"\n",
            )
            .unwrap();
            std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            // containerd.runc.v1.Options { binary_name (field 6) }, encoded by hand.
            let path = wrapper.to_str().unwrap().as_bytes();
            assert!(path.len() < 128, "one-byte length: {}", wrapper.display());
            let mut value = vec![0x32, path.len() as u8];
            value.extend_from_slice(path);
            let options = prost_types::Any { type_url: "containerd.runc.v1.Options".into(), value };
            run_on_crun(&host, "crun-v1", Some(options)).await.unwrap_or_else(|err| panic!("crun without v2: {err}"));
        }
        Err(err) => panic!("create on crun: {err}"),
    }
}

/// Runs `echo from crun` in container `id` on the crun runtime; the create error's message
/// when the task cannot be created.
async fn run_on_crun(host: &Host, id: &str, options: Option<prost_types::Any>) -> Result<(), String> {
    host.container_with_options(id, host.spec(id, &["sh", "-c", "echo from crun"], false), "crun", options).await;
    let stdio = host.fifos(id);
    let stdout = read_fifo(&stdio.stdout);
    let request = containerd_client::services::v1::CreateTaskRequest {
        container_id: id.into(),
        stdout: stdio.stdout.clone(),
        ..Default::default()
    };
    match host.tasks().create(in_namespace(request, NS)).await {
        Ok(_) => {
            host.start_task(id, "").await;
            assert_eq!(host.wait(id, "").await, 0);
            assert_eq!(stdout.join().unwrap(), "from crun\n");
            host.delete(id).await.unwrap();
            Ok(())
        }
        Err(err) => {
            write_fifo_closed(&stdio.stdout);
            let _ = stdout.join();
            Err(err.message().to_string())
        }
    }
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Ends a reader waiting on a FIFO nobody will write to (if it still waits).
fn write_fifo_closed(path: &str) {
    use std::os::unix::fs::OpenOptionsExt;
    drop(std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path));
}

#[tokio::test]
async fn update_changes_the_memory_limit() {
    let host = Host::start().await;
    let pid = host.run_detached("limited", &["sleep", "1000"]).await;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory =
        cgroup.lines().find_map(|l| l.split_once(":memory:").map(|(_, path)| path.to_string())).expect("memory cgroup");
    let limit_file = format!("/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes");
    let resources = serde_json::json!({"memory": {"limit": 64 * 1024 * 1024}});
    let update = containerd_client::services::v1::UpdateTaskRequest {
        container_id: "limited".into(),
        resources: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: serde_json::to_vec(&resources).unwrap(),
        }),
        annotations: Default::default(),
    };
    host.tasks().update(in_namespace(update, NS)).await.unwrap();
    assert_eq!(std::fs::read_to_string(&limit_file).unwrap().trim(), (64 * 1024 * 1024).to_string());

    let bad = containerd_client::services::v1::UpdateTaskRequest {
        container_id: "limited".into(),
        resources: Some(prost_types::Any { type_url: "x".into(), value: b"not json".to_vec() }),
        annotations: Default::default(),
    };
    assert_eq!(host.tasks().update(in_namespace(bad, NS)).await.unwrap_err().code(), Code::InvalidArgument);
    host.kill("limited", "", Signal::SIGKILL, false).await.unwrap();
    host.delete_after_exit("limited").await;
}

#[tokio::test]
async fn an_oom_kill_under_a_tiny_memory_limit_is_published() {
    let host = Host::start().await;
    let events = host.watch_events();
    let mut spec = host.spec("hungry", &["sh", "-c", "tail /dev/zero"], false);
    let limit = 8 * 1024 * 1024;
    spec["linux"]["resources"]["memory"] = serde_json::json!({"limit": limit, "swap": limit});
    host.container_with("hungry", spec, "io.containerd.runc.v2").await;
    let request =
        containerd_client::services::v1::CreateTaskRequest { container_id: "hungry".into(), ..Default::default() };
    host.tasks().create(in_namespace(request, NS)).await.unwrap_or_else(|e| panic!("create: {e}"));
    host.start_task("hungry", "").await;
    assert_eq!(host.wait("hungry", "").await, 137, "killed by the OOM killer");
    host.delete("hungry").await.unwrap();
    let seen = tasks_common::events_seen(events);
    let oom = seen.lines().find(|l| l.contains(" /tasks/oom ")).unwrap_or_else(|| panic!("no /tasks/oom in:\n{seen}"));
    assert!(oom.contains("\"hungry\"") && oom.contains(NS), "{oom}");
}

#[tokio::test]
async fn containerds_runc_shim_serves_as_a_runtime_too() {
    const SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
    assert!(
        std::path::Path::new(SHIM).exists(),
        "{SHIM} is not installed: run scripts/install-deps.sh (Debian package containerd)"
    );
    let host = Host::start().await;
    host.container("foreign", &["sh", "-c", "echo from runc-v2; read x; echo got $x; exit 4"]).await;
    let stdio = host.fifos("foreign");
    // containerd's shim waits for a reader on each output FIFO, as containerd's clients open them.
    let (stdout, stderr) = (read_fifo(&stdio.stdout), read_fifo(&stdio.stderr));
    let request = containerd_client::services::v1::CreateTaskRequest {
        container_id: "foreign".into(),
        stdin: stdio.stdin.clone(),
        stdout: stdio.stdout.clone(),
        stderr: stdio.stderr.clone(),
        runtime_path: SHIM.into(),
        ..Default::default()
    };
    let created = host.tasks().create(in_namespace(request, NS)).await;
    let pid = created.unwrap_or_else(|e| panic!("create on {SHIM}: {e}\n{}", host.stack.logs())).into_inner().pid;
    assert_eq!(host.start_task("foreign", "").await, pid);
    let listed = host.tasks().list_pids(in_namespace(ListPidsRequest { container_id: "foreign".into() }, NS)).await;
    assert!(listed.unwrap().into_inner().processes.iter().any(|p| p.pid == pid));
    write_fifo(&stdio.stdin, b"it\n");
    let close = CloseIoRequest { container_id: "foreign".into(), exec_id: String::new(), stdin: true };
    host.tasks().close_io(in_namespace(close, NS)).await.unwrap();
    assert_eq!(host.wait("foreign", "").await, 4);
    assert_eq!(stdout.join().unwrap(), "from runc-v2\ngot it\n");
    assert_eq!(stderr.join().unwrap(), "");
    assert_eq!(host.delete("foreign").await.unwrap(), 4);
    assert!(!host.execution_root().join("tasks").join(NS).join("foreign").exists(), "bundle removed");
}
