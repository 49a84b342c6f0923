//! `berth run -d` then `berth tasks ls|ps|exec|pause|resume|metrics|kill|rm` on real runc,
//! with the image imported by ctr: what each prints, exit codes of execs, `kill --pid`
//! refused for a process that is not the task's, delete refused while running and forced.

mod tasks_common;

use std::process::Output;
use std::time::Duration;

use berth_e2e::images::{ArchiveFormat, busybox};
use berth_e2e::procs;
use nix::sys::signal::Signal;
use tasks_common::Host;

const NS: &str = "e2e-tasks-cli";
const IMAGE: &str = "docker.io/library/busybox:tasks-cli";

fn berth(host: &Host, args: &[&str]) -> Output {
    let mut all = vec!["-n", NS];
    all.extend_from_slice(args);
    host.stack.berth(&all)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(host: &Host, args: &[&str]) -> String {
    let out = berth(host, args);
    assert!(out.status.success(), "berth {args:?}: {}{}", text(&out.stderr), host.stack.logs());
    text(&out.stdout)
}

async fn import(host: &Host) {
    let archive = host.stack.dir.path().join("busybox.tar");
    busybox().write_archive(ArchiveFormat::Oci, &archive, IMAGE);
    let imported = host.stack.ctr(&["--namespace", NS, "images", "import", archive.to_str().unwrap()]);
    assert!(imported.status.success(), "import: {}", text(&imported.stderr));
}

fn status_of(host: &Host, id: &str) -> String {
    let listing = ok(host, &["tasks", "ls"]);
    let line = listing.lines().find(|line| line.starts_with(&format!("{id} "))).unwrap_or_default().to_string();
    line.split_whitespace().nth(2).unwrap_or_default().to_string()
}

#[tokio::test]
async fn detached_run_then_tasks_commands() {
    let host = Host::start().await;
    import(&host).await;
    let script = "trap 'exit 5' TERM; while true; do sleep 0.1; done";
    assert_eq!(ok(&host, &["run", "-d", IMAGE, "d1", "sh", "-c", script]), "d1\n");

    // ls: TASK PID STATUS, like ctr.
    let listing = ok(&host, &["tasks", "ls"]);
    assert!(listing.starts_with("TASK"), "{listing}");
    let pid: u32 = listing.lines().nth(1).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(status_of(&host, "d1"), "RUNNING");
    assert_eq!(ok(&host, &["tasks", "ls", "-q"]), "d1\n");
    tasks_common::wait_for_handler(pid, Signal::SIGTERM);

    // ps lists the init process.
    let ps = ok(&host, &["tasks", "ps", "d1"]);
    assert!(ps.lines().any(|line| line.split_whitespace().next() == Some(&pid.to_string())), "{ps}");

    // exec: output and exit code, then the exec is gone.
    let out = berth(&host, &["tasks", "exec", "--exec-id", "e1", "d1", "sh", "-c", "echo from exec; pwd; exit 4"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from exec\n/\n");
    let out = berth(&host, &["tasks", "exec", "--exec-id", "e1", "--cwd", "/tmp", "d1", "pwd"]);
    assert!(out.status.success(), "exec id reusable after its delete: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/tmp\n");

    // kill --pid: refused for a process that is not the task's.
    let out = berth(&host, &["tasks", "kill", "--pid", "1", "d1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("pid 1 is not a process of task d1"), "{}", text(&out.stderr));
    assert!(procs::alive(pid));

    // pause / resume.
    ok(&host, &["tasks", "pause", "d1"]);
    assert_eq!(status_of(&host, "d1"), "PAUSED");
    ok(&host, &["tasks", "resume", "d1"]);
    assert_eq!(status_of(&host, "d1"), "RUNNING");

    // metrics with real numbers.
    let metrics = ok(&host, &["tasks", "metrics", "d1"]);
    let usage: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("memory.usage_in_bytes"))
        .unwrap_or_else(|| panic!("{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(usage > 0, "{metrics}");

    // rm refuses a running task.
    let out = berth(&host, &["tasks", "rm", "d1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("-f"), "{}", text(&out.stderr));

    // kill --pid of the init process = kill of the task: the trap runs.
    ok(&host, &["tasks", "kill", "--pid", &pid.to_string(), "d1"]);
    assert!(procs::wait_until(Duration::from_secs(10), || status_of(&host, "d1") == "STOPPED"));
    assert_eq!(ok(&host, &["tasks", "rm", "d1"]), "d1\n");
    assert_eq!(ok(&host, &["tasks", "ls", "-q"]), "");
    ok(&host, &["containers", "rm", "d1"]);
}

#[tokio::test]
async fn kill_signals_all_and_forced_rm_and_start() {
    let host = Host::start().await;
    import(&host).await;
    ok(&host, &["run", "-d", IMAGE, "k1", "sh", "-c", "sleep 1000 & sleep 1000 & wait"]);
    assert!(procs::wait_until(Duration::from_secs(10), || ok(&host, &["tasks", "ps", "k1"]).lines().count() >= 4));
    let ps = ok(&host, &["tasks", "ps", "k1"]);
    let child: u32 = ps.lines().nth(2).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    // One of the task's own children by pid: signalled directly.
    ok(&host, &["tasks", "kill", "-s", "KILL", "--pid", &child.to_string(), "k1"]);
    assert!(procs::wait_until(Duration::from_secs(10), || !procs::alive(child)));
    ok(&host, &["tasks", "kill", "--signal", "9", "--all", "k1"]);
    assert!(procs::wait_until(Duration::from_secs(10), || status_of(&host, "k1") == "STOPPED"));
    ok(&host, &["tasks", "rm", "k1"]);

    // containers rm takes the container's snapshot with it, as ctr's does.
    ok(&host, &["containers", "rm", "k1"]);
    assert!(!ok(&host, &["snapshots", "ls"]).lines().any(|line| line.starts_with("k1 ")), "k1's snapshot is gone");

    // tasks start on an existing container: attached, exit code passed on, task deleted.
    let out = berth(&host, &["run", IMAGE, "s1", "sh", "-c", "echo started; exit 3"]);
    assert_eq!((text(&out.stdout).as_str(), out.status.code()), ("started\n", Some(3)));
    let out = berth(&host, &["tasks", "start", "s1"]);
    assert_eq!((text(&out.stdout).as_str(), out.status.code()), ("started\n", Some(3)), "{}", text(&out.stderr));
    assert_eq!(ok(&host, &["tasks", "ls", "-q"]), "");

    // attach to a detached task: its output comes, Ctrl-C only detaches.
    let script = "i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo tick $i; sleep 0.2; done";
    ok(&host, &["run", "-d", IMAGE, "a1", "sh", "-c", script]);
    let attach = std::process::Command::new(berth_e2e::binary("berth"))
        .arg("--address")
        .arg(&host.stack.socket)
        .args(["-n", NS, "tasks", "attach", "a1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    procs::signal(attach.id(), Signal::SIGINT);
    let out = attach.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("tick 3\n"), "{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("detached from task a1"), "{}", text(&out.stderr));
    assert_eq!(status_of(&host, "a1"), "RUNNING");
    assert_eq!(ok(&host, &["tasks", "rm", "-f", "a1"]), "a1\n");

    // rm -f kills a running task first.
    ok(&host, &["run", "-d", IMAGE, "f1", "sleep", "1000"]);
    assert_eq!(ok(&host, &["tasks", "rm", "-f", "f1"]), "f1\n");
    assert_eq!(ok(&host, &["tasks", "ls", "-q"]), "");
}
