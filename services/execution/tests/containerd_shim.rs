//! Our ttrpc client and the shim API messages against containerd's own shim
//! (Debian's containerd-shim-runc-v2, containerd 1.6): started with containerd's shim command
//! line, it answers Connect and State, reports a missing task with containerd's error codes,
//! and shuts down when told to.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_execution::protocol::TASK_SERVICE;
use berth_execution::protocol::v2::{ConnectRequest, ConnectResponse, ShutdownRequest, StateRequest, StateResponse};
use berth_execution::ttrpc::Client;

const SHIM: &str = "/usr/bin/containerd-shim-runc-v2";

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').and_then(|(_, t)| t.split_whitespace().next()) != Some("Z"))
}

#[tokio::test]
async fn containerds_runc_shim_speaks_our_ttrpc() {
    if !Path::new(SHIM).exists() || !nix::unistd::geteuid().is_root() {
        println!("SKIPPED: needs root and {SHIM} (Debian's containerd)");
        return;
    }
    let bundle = tempfile::tempdir().unwrap();
    let dir = bundle.path();
    // containerd gives its shims a bundle with config.json and a FIFO for their log.
    std::fs::write(
        dir.join("config.json"),
        br#"{"ociVersion":"1.0.2","process":{"args":["true"],"cwd":"/"},"root":{"path":"rootfs"}}"#,
    )
    .unwrap();
    nix::unistd::mkfifo(&dir.join("log"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let log_path = dir.join("log");
    let log = std::thread::spawn(move || std::fs::read(log_path).unwrap_or_default());
    let id = format!("berth-interop-{}", std::process::id());
    let started = Command::new(SHIM)
        .args(["-namespace", "berth-test", "-id", &id, "-publish-binary", "/bin/true", "-address"])
        .arg(dir.join("containerd.sock"))
        .arg("start")
        .env("TTRPC_ADDRESS", dir.join("containerd.sock.ttrpc"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(started.status.success(), "start: {}", String::from_utf8_lossy(&started.stderr));
    let address = String::from_utf8(started.stdout).unwrap();
    let socket = address.trim().strip_prefix("unix://").expect("a unix address").to_string();

    let client = Client::connect(Path::new(&socket), TASK_SERVICE).await.unwrap();
    let timeout = Some(Duration::from_secs(10));
    let connected: ConnectResponse = client.call("Connect", &ConnectRequest { id: id.clone() }, timeout).await.unwrap();
    let shim_pid = connected.shim_pid;
    assert!(shim_pid > 0 && alive(shim_pid), "{connected:?}");

    let state = client
        .call::<_, StateResponse>("State", &StateRequest { id: id.clone(), exec_id: String::new() }, timeout)
        .await;
    let err = state.expect_err("no task was created");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");

    let unknown = client.call::<_, ()>("NoSuchMethod", &ConnectRequest { id: id.clone() }, timeout).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown:?}");

    let _ = client.call::<_, ()>("Shutdown", &ShutdownRequest { id: id.clone(), now: true }, timeout).await;
    let mut gone = false;
    for _ in 0..100 {
        if !alive(shim_pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !gone {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(shim_pid as i32), nix::sys::signal::Signal::SIGKILL);
    }
    assert!(gone, "the shim exits on Shutdown");
    let _ = std::fs::remove_file(&socket);
    let _ = log.join();
}
