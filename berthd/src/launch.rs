//! Bringing a stack up, keeping it up, and taking it down.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_api::containerd::services::version::v1::version_client::VersionClient;
use berth_core::connect::{Address, lazy_channel};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use crate::preflight;
use crate::services::{self, Options, Process};
use crate::supervisor::{State, Supervisor};

/// How long a child may take to stop after SIGTERM before it is killed: a little longer than
/// the services' own 5 s drain of open calls, so they get to exit cleanly.
const STOP_GRACE: Duration = Duration::from_secs(6);
/// How long a service may take from start until its socket accepts.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(20);

/// Runs the stack described by `options` until SIGTERM or SIGINT.
pub async fn run(options: Options) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("find berthd's own executable")?;
    let bin_dir = exe.parent().context("berthd's executable has no directory")?;
    let plan = services::plan(&options, bin_dir)?;
    let sockets = plan.sockets();
    preflight::run(&options, &sockets)?;
    for (service, program) in &plan.skipped {
        tracing::info!("{service}: {} not found; starting without it", program.display());
    }
    if plan.services.is_empty() {
        tracing::warn!("no berth service binaries in {}; the gateway will answer Version only", bin_dir.display());
    }
    let mut signals = Signals::new()?;

    let mut supervisor = Supervisor::new(STOP_GRACE);
    let started = tokio::select! {
        result = start(&mut supervisor, plan.services, plan.gateway, &options.address) => result.map(|()| true),
        name = signals.next() => {
            tracing::info!("{name} while starting: stopping");
            Ok(false)
        }
    };
    if let Ok(true) = started {
        tracing::info!("berth ready at {}", options.address.display());
        let name = signals.next().await;
        tracing::info!("{name}: stopping");
    }
    supervisor.stop().await;
    remove_sockets(&sockets);
    match started {
        Ok(_) => {
            tracing::info!("berth stopped");
            Ok(())
        }
        Err(err) => Err(err.context("berth did not start; everything started has been stopped again")),
    }
}

/// Starts the services, waits for their sockets, then starts the gateway and waits until it
/// answers Version.
async fn start(
    supervisor: &mut Supervisor,
    services: Vec<Process>,
    gateway: Process,
    address: &Path,
) -> anyhow::Result<()> {
    let mut waiting = Vec::new();
    for process in services {
        tracing::info!("starting {}: {}", process.name, command_line(&process));
        let (name, socket) = (process.name.clone(), process.socket.clone());
        waiting.push((name, socket, supervisor.start(process)));
    }
    for (name, socket, mut state) in waiting {
        wait_ready(&name, &mut state, || socket_accepts(&socket)).await?;
        tracing::info!("{name} ready at {}", socket.display());
    }

    tracing::info!("starting gateway: {}", command_line(&gateway));
    let mut state = supervisor.start(gateway);
    let channel = lazy_channel(&Address::Unix(address.to_path_buf()));
    wait_ready("gateway", &mut state, || {
        let mut client = VersionClient::new(channel.clone());
        async move { tokio::time::timeout(Duration::from_secs(1), client.version(())).await.is_ok_and(|r| r.is_ok()) }
    })
    .await
}

/// Polls `ready` until it holds; fails if the process dies first or takes too long.
async fn wait_ready<F: Future<Output = bool>>(
    name: &str,
    state: &mut watch::Receiver<State>,
    mut ready: impl FnMut() -> F,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let exited = state.borrow().last_exit.clone();
        if let Some(how) = exited {
            bail!("{name} {how} before it was ready; its log lines above (prefixed `{name} |`) say why");
        }
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} was not ready within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

async fn socket_accepts(path: &Path) -> bool {
    tokio::net::UnixStream::connect(path).await.is_ok()
}

fn command_line(process: &Process) -> String {
    std::iter::once(process.program.as_os_str())
        .chain(process.args.iter().map(|a| a.as_os_str()))
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes the stack's socket files that the children left behind (say, after SIGKILL).
fn remove_sockets(sockets: &[PathBuf]) {
    for socket in sockets {
        let is_socket = std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket());
        if is_socket && let Err(err) = std::fs::remove_file(socket) {
            tracing::warn!("could not remove {}: {err}", socket.display());
        }
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Signals {
            terminate: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
            interrupt: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
        })
    }

    /// Waits for the next one; returns its name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.interrupt.recv() => "SIGINT",
        }
    }
}
