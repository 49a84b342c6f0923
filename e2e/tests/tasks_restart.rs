//! Tasks outlive their service: kill -9 of berth-execution while tasks run leaves them
//! running; berthd restarts the service, which re-attaches to every shim, and an exit that
//! happened during the outage is reported by Get, Wait, Delete and a `/tasks/exit` event.

mod tasks_common;

use std::time::Duration;

use berth_e2e::procs;
use nix::sys::signal::Signal;
use tasks_common::{Host, NS};

const RUNNING: i32 = 2;
const STOPPED: i32 = 3;

#[tokio::test]
async fn tasks_keep_running_through_a_killed_service_and_their_exits_are_reported() {
    let host = Host::start().await;
    let events = host.watch_events();
    let steady = host.run_detached("steady", &["sleep", "1000"]).await;
    let doomed = host.run_detached("doomed", &["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.1; done"]).await;
    tasks_common::wait_for_handler(doomed, Signal::SIGTERM);

    let execution = host.stack.wait_service_pid("berth-execution", Duration::from_secs(5));
    procs::signal(execution, Signal::SIGKILL);
    assert!(procs::wait_until(Duration::from_secs(5), || !procs::alive(execution)));
    assert!(procs::alive(steady) && procs::alive(doomed), "the tasks run on without the service");
    // An exit while nobody watches: the shim collects it.
    procs::signal(doomed, Signal::SIGTERM);
    assert!(
        procs::wait_until(Duration::from_secs(5), || !procs::alive(doomed)),
        "the trap ended the task: {}",
        std::fs::read_to_string(format!("/proc/{doomed}/status")).unwrap_or_default()
    );

    // berthd starts the service again; it finds both shims.
    let restarted = procs::wait_until(Duration::from_secs(15), || {
        host.stack.service_pids("berth-execution").iter().any(|&pid| pid != execution)
    });
    assert!(restarted, "berthd restarted berth-execution; log:\n{}", host.stack.logs());
    let mut answered = false;
    for _ in 0..100 {
        if host
            .tasks()
            .list(berth_e2e::content::in_namespace(
                containerd_client::services::v1::ListTasksRequest { filter: String::new() },
                NS,
            ))
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "the restarted service answers; log:\n{}", host.stack.logs());
    assert_eq!(host.status("doomed", "").await, (STOPPED, 7), "the exit during the outage");
    assert_eq!(host.wait("doomed", "").await, 7);
    assert_eq!(host.status("steady", "").await.0, RUNNING);
    assert_eq!(host.delete("doomed").await.unwrap(), 7);

    // The re-attached task is fully controllable.
    host.kill("steady", "", Signal::SIGKILL, false).await.unwrap();
    assert_eq!(host.delete_after_exit("steady").await, 137);
    assert!(!procs::alive(steady));

    let events = tasks_common::events_seen(events);
    let exits: Vec<&str> = events.lines().filter(|l| l.contains("/tasks/exit") && l.contains("\"doomed\"")).collect();
    assert_eq!(exits.len(), 1, "one exit event for doomed, published after the restart:\n{events}");
    assert!(exits[0].contains("\"exit_status\":7"), "{}", exits[0]);
    for topic in ["/tasks/create", "/tasks/start", "/tasks/delete"] {
        assert!(events.lines().any(|l| l.contains(topic) && l.contains("\"doomed\"")), "{topic} in:\n{events}");
    }
}
