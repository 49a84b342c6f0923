//! containerd's `ctr task` commands against berth's gateway: start (attached and detached),
//! ls, ps, metrics, exec, pause, resume, kill, rm, and the events they publish.

mod tasks_common;

use std::time::Duration;

use tasks_common::Host;

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "ctr failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn listed(host: &Host, id: &str) -> String {
    let ls = stdout(&host.ctr(&["task", "ls"]));
    ls.lines().find(|l| l.split_whitespace().next() == Some(id)).unwrap_or_default().to_string()
}

#[tokio::test]
async fn ctr_task_commands_work_through_the_gateway() {
    let host = Host::start().await;
    let events = host.watch_events();

    // Attached: output on ctr's stdout, the container's exit code as ctr's, the task removed.
    host.container("once", &["sh", "-c", "echo hello from once; exit 3"]).await;
    let once = host.ctr(&["task", "start", "once"]);
    assert_eq!(String::from_utf8_lossy(&once.stdout), "hello from once\n", "{}", String::from_utf8_lossy(&once.stderr));
    assert_eq!(once.status.code(), Some(3));
    assert_eq!(listed(&host, "once"), "", "an attached start deletes the task when it ends");

    host.container("web", &["sleep", "1000"]).await;
    stdout(&host.ctr(&["task", "start", "-d", "web"]));
    let line = listed(&host, "web");
    assert!(line.contains("RUNNING"), "{line}");
    let pid = line.split_whitespace().nth(1).unwrap().to_string();
    let ps = stdout(&host.ctr(&["task", "ps", "web"]));
    assert!(ps.lines().any(|l| l.split_whitespace().next() == Some(pid.as_str())), "{ps}");

    // Metrics with real numbers from the container's cgroups.
    let metrics = stdout(&host.ctr(&["task", "metrics", "web"]));
    let value = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.split_whitespace().next() == Some(name));
        line.and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{metrics}"))
    };
    assert!(value("memory.usage_in_bytes") > 0, "{metrics}");
    assert!(value("cpuacct.usage") > 0, "{metrics}");
    assert_eq!(value("pids.current"), 1, "{metrics}");

    let exec = stdout(&host.ctr(&["task", "exec", "--exec-id", "e1", "web", "sh", "-c", "echo hi from $(hostname)"]));
    assert_eq!(exec, "hi from web\n");
    let failing = host.ctr(&["task", "exec", "--exec-id", "e2", "web", "sh", "-c", "exit 4"]);
    assert_eq!(failing.status.code(), Some(4), "{}", String::from_utf8_lossy(&failing.stderr));

    stdout(&host.ctr(&["task", "pause", "web"]));
    assert!(listed(&host, "web").contains("PAUSED"), "{}", listed(&host, "web"));
    stdout(&host.ctr(&["task", "resume", "web"]));
    assert!(listed(&host, "web").contains("RUNNING"), "{}", listed(&host, "web"));

    let refused = host.ctr(&["task", "rm", "web"]);
    assert!(!refused.status.success(), "a running task is not removed");
    stdout(&host.ctr(&["task", "kill", "-s", "SIGKILL", "web"]));
    assert!(
        berth_e2e::procs::wait_until(Duration::from_secs(10), || listed(&host, "web").contains("STOPPED")),
        "{}",
        listed(&host, "web")
    );
    stdout(&host.ctr(&["task", "rm", "web"]));
    assert_eq!(stdout(&host.ctr(&["task", "ls"])).lines().count(), 1, "only the header is left");

    // Every change was published, in containerd's topics.
    let events = tasks_common::events_seen(events);
    let topics = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ];
    for topic in topics {
        let seen = events.lines().any(|l| l.contains(&format!(" {topic} ")) && l.contains("\"web\""));
        assert!(seen, "{topic} for web in:\n{events}");
    }
    let exec_exit = events.lines().find(|l| l.contains("/tasks/exit") && l.contains("\"e2\""));
    assert!(exec_exit.is_some_and(|l| l.contains("\"exit_status\":4")), "the exec's exit:\n{events}");
}
