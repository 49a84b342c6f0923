//! One berth stack (`berthd` and the services it starts) on temp dirs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::procs;

/// A running berthd; stopped (SIGTERM, then SIGKILL by PID) and its dirs removed on drop.
pub struct Stack {
    pub dir: TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Stack {
    /// Starts berthd with default options and waits until the gateway answers Version.
    pub async fn start() -> Stack {
        Self::start_with(&[]).await
    }

    /// Starts berthd with extra command-line arguments.
    pub async fn start_with(extra_args: &[&str]) -> Stack {
        let dir = tempfile::Builder::new().prefix("berth-e2e-").tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("berth.sock");
        let log = dir.path().join("berthd.log");
        let mut stack = Stack { root, state, socket, log, child: None, dir };
        stack.spawn(extra_args);
        stack.wait_ready().await;
        stack
    }

    fn spawn(&mut self, extra_args: &[&str]) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new(crate::binary("berthd"))
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.socket)
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start berthd");
        self.child = Some(child);
    }

    /// Waits up to 30 s for a Version call through the gateway to answer.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("berthd exited early with {status}; its log:\n{}", self.logs());
            }
            if self.socket.exists() && self.version().await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("berthd did not answer Version within 30 s; its log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn version(&self) -> Result<String, tonic::Status> {
        use berth_api::containerd::services::version::v1::version_client::VersionClient;
        let mut client = VersionClient::new(self.channel());
        let response = client.version(()).await?;
        Ok(response.into_inner().version)
    }

    /// A channel to the gateway socket (connects lazily, reconnects after failures).
    pub fn channel(&self) -> Channel {
        berth_core::connect::lazy_channel(&berth_core::connect::Address::Unix(self.socket.clone()))
    }

    /// A containerd-client channel to the gateway, as a containerd user would make one.
    pub async fn containerd_channel(&self) -> Channel {
        containerd_client::connect(&self.socket).await.expect("containerd_client::connect to the gateway")
    }

    /// PID of berthd itself.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("berthd running").id()
    }

    /// PIDs of berthd's children running `binary` (e.g. "berth-content").
    pub fn service_pids(&self, binary: &str) -> Vec<u32> {
        procs::children_named(self.pid(), binary)
    }

    /// Waits until exactly one child runs `binary` and returns its PID.
    pub fn wait_service_pid(&self, binary: &str, timeout: Duration) -> u32 {
        let mut pid = None;
        let found = procs::wait_until(timeout, || {
            let pids = self.service_pids(binary);
            pid = pids.first().copied();
            pids.len() == 1
        });
        assert!(found, "no {binary} process under berthd; log:\n{}", self.logs());
        pid.expect("found")
    }

    /// berthd's (and its services') log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs containerd's `ctr` against the gateway and returns its output.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.ctr_with_stdin(args, None)
    }

    /// Runs `ctr` with `stdin` fed from the given file.
    pub fn ctr_with_stdin(&self, args: &[&str], stdin: Option<&Path>) -> std::process::Output {
        let ctr = crate::require_tool("ctr");
        let input = match stdin {
            Some(path) => Stdio::from(std::fs::File::open(path).expect("stdin file")),
            None => Stdio::null(),
        };
        Command::new(ctr).arg("--address").arg(&self.socket).args(args).stdin(input).output().expect("run ctr")
    }

    /// Runs our `berth` CLI against the gateway.
    pub fn berth(&self, args: &[&str]) -> std::process::Output {
        Command::new(crate::binary("berth"))
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run berth")
    }

    /// Sends SIGTERM to berthd and waits for it to exit; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        procs::signal(child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let services = service_children(child.id());
                let _ = child.kill();
                for pid in services {
                    procs::signal(pid, Signal::SIGKILL);
                }
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // Remember the services so that none outlive the test even if berthd misbehaves.
            let services = service_children(child.id());
            self.stop();
            for pid in services {
                if procs::alive(pid) {
                    procs::signal(pid, Signal::SIGKILL);
                }
            }
        }
    }
}

/// Binaries berthd may start.
const SERVICE_BINARIES: [&str; 6] =
    ["berth-content", "berth-gateway", "berth-snapshot", "berth-image", "berth-metadata", "berth-execution"];

/// PIDs of every service process berthd started.
fn service_children(berthd: u32) -> Vec<u32> {
    SERVICE_BINARIES.iter().flat_map(|name| procs::children_named(berthd, name)).collect()
}
