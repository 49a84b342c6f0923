//! berthd as a user meets it: ready when Version answers, introspection lists its services,
//! absent services answer Unavailable quickly, SIGTERM stops everything and removes sockets,
//! and bad start conditions give clear errors.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_e2e::{Stack, binary, procs};
use containerd_client::services::v1::ListTasksRequest;
use containerd_client::services::v1::PluginsRequest;
use containerd_client::services::v1::introspection_client::IntrospectionClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::version_client::VersionClient;

#[tokio::test]
async fn version_and_plugins_answer_through_the_gateway() {
    let stack = Stack::start().await;
    let channel = stack.containerd_channel().await;
    let version = VersionClient::new(channel.clone()).version(()).await.unwrap().into_inner();
    assert!(!version.version.is_empty());

    let plugins = IntrospectionClient::new(channel)
        .plugins(PluginsRequest { filters: vec![] })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    let content = plugins.iter().find(|p| p.id == "content").expect("content service listed");
    assert!(content.init_err.is_none(), "content is up: {content:?}");

    let ctr = stack.ctr(&["version"]);
    assert!(ctr.status.success(), "{}", String::from_utf8_lossy(&ctr.stderr));
    assert!(String::from_utf8_lossy(&ctr.stdout).contains(&version.version));
}

#[tokio::test]
async fn a_service_that_is_not_running_is_unavailable_within_a_second() {
    // Every service is built now: a gateway started alone, with only a content backend,
    // has no execution service behind it.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gateway.sock");
    let mut gateway = Command::new(binary("berth-gateway"))
        .arg("--address")
        .arg(&socket)
        .arg("--backend")
        .arg(format!("content={}", dir.path().join("content.sock").display()))
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(procs::wait_until(Duration::from_secs(10), || socket.exists()), "the gateway serves");
    let channel = containerd_client::connect(&socket).await.unwrap();
    let mut tasks = TasksClient::new(channel);
    let started = Instant::now();
    let result = tasks.list(ListTasksRequest { filter: String::new() }).await;
    let elapsed = started.elapsed();
    let _ = gateway.kill();
    let _ = gateway.wait();
    let err = result.expect_err("no execution service behind this gateway");
    assert!(elapsed < Duration::from_millis(1500), "took {elapsed:?}");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("execution"), "names the service: {}", err.message());
}

#[tokio::test]
async fn sigterm_stops_every_service_and_removes_sockets() {
    let mut stack = Stack::start().await;
    let content = stack.wait_service_pid("berth-content", Duration::from_secs(5));
    let gateway = stack.wait_service_pid("berth-gateway", Duration::from_secs(5));
    let status = stack.stop().expect("berthd was running");
    assert!(status.success(), "berthd exits 0 on SIGTERM: {status}");
    assert!(procs::wait_until(Duration::from_secs(5), || !procs::alive(content) && !procs::alive(gateway)));
    assert!(!stack.socket.exists(), "gateway socket removed");
    let leftovers: Vec<_> = std::fs::read_dir(&stack.state)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "sock")).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "sockets left: {leftovers:?}");
}

#[tokio::test]
async fn a_second_berthd_on_a_live_socket_refuses_to_start() {
    let stack = Stack::start().await;
    let other = tempfile::tempdir().unwrap();
    let output = Command::new(binary("berthd"))
        .arg("--root")
        .arg(other.path().join("root"))
        .arg("--state")
        .arg(other.path().join("state"))
        .arg("--address")
        .arg(&stack.socket)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listening") || stderr.contains("in use"), "says why: {stderr}");
    // The first stack is unharmed.
    assert!(stack.ctr(&["version"]).status.success());
}

#[tokio::test]
async fn an_unwritable_root_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Root bypasses permission bits, so make the root a file instead when running as root.
    let root = if nix::unistd::geteuid().is_root() {
        let file = dir.path().join("root-file");
        std::fs::write(&file, b"").unwrap();
        file
    } else {
        root
    };
    let output = Command::new(binary("berthd"))
        .arg("--root")
        .arg(&root)
        .arg("--state")
        .arg(dir.path().join("state"))
        .arg("--address")
        .arg(dir.path().join("berth.sock"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&root.display().to_string()), "names the root: {stderr}");
    assert!(!dir.path().join("berth.sock").exists());
}
