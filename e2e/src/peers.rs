//! containerd as a peer for benchmarks: a daemon on temp paths, started and stopped by PID.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::procs;

/// A containerd daemon with its root, state and socket in a temp dir.
pub struct Containerd {
    pub dir: TempDir,
    pub socket: PathBuf,
    child: Child,
}

impl Containerd {
    /// Starts `containerd --config FILE` and waits until its socket answers `ctr version`.
    pub fn start() -> Containerd {
        let binary = crate::require_tool("containerd");
        let dir = tempfile::Builder::new().prefix("berth-peer-containerd-").tempdir().expect("temp dir");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{socket}\"\n[ttrpc]\n  address = \"{socket}.ttrpc\"\n",
                root = dir.path().join("root").display(),
                state = dir.path().join("state").display(),
                socket = socket.display(),
            ),
        )
        .expect("write containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log file");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let peer = Containerd { dir, socket, child };
        let ctr = crate::require_tool("ctr");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = Command::new(&ctr)
                .arg("--address")
                .arg(&peer.socket)
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success());
            if ready {
                return peer;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd did not start; log:\n{}", peer.logs());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        procs::signal(self.child.id(), Signal::SIGTERM);
        if !procs::wait_until(Duration::from_secs(10), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Resident memory of `pid` in bytes (VmRSS), 0 when it is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}
