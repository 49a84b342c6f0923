//! berth-shim: the process that owns one task.
//!
//! berth-execution starts `berth-shim --namespace NS --id ID --bundle DIR --socket PATH start`;
//! the shim binds its socket (mode 0600, in a 0700 directory), forks a daemon in a session of
//! its own, prints the socket's address and returns. The daemon is the task's child subreaper:
//! it runs the OCI runtime, holds the stdio FIFOs, collects exits (recording the init
//! process's in the bundle), and serves containerd's runtime v2 shim API over ttrpc until it
//! is told to shut down. It does not depend on berth-execution staying up.

pub mod events;
pub mod io;
pub mod mount;
pub mod oom;
pub mod reaper;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod task;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

/// File in the bundle holding the shim daemon's PID.
pub const PID_FILE: &str = "shim.pid";
/// File in the bundle the shim daemon logs to.
pub const LOG_FILE: &str = "shim.log";

/// What one shim serves.
#[derive(Clone, Debug)]
pub struct Config {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    pub socket: PathBuf,
}

#[derive(Debug, Error)]
pub enum ShimError {
    #[error("a shim is already serving {0}")]
    InUse(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ShimError {
    let context = context.into();
    move |source| ShimError::Io { context, source }
}

/// Binds the socket, forks the daemon, and (in the parent) prints the socket's address.
/// Must be called while the process has a single thread.
pub fn start(config: Config) -> Result<(), ShimError> {
    let dir = config.socket.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(format!("create {}", dir.display())))?;
    if UnixStream::connect(&config.socket).is_ok() {
        return Err(ShimError::InUse(config.socket));
    }
    let _ = std::fs::remove_file(&config.socket);
    let listener = UnixListener::bind(&config.socket).map_err(io(format!("bind {}", config.socket.display())))?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", config.socket.display())))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.bundle.join(LOG_FILE))
        .map_err(io(format!("open {}", config.bundle.join(LOG_FILE).display())))?;

    // SAFETY: the process has one thread here (nothing has started any), so the child may
    // run anything after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| io("fork")(e.into()))? {
        nix::unistd::ForkResult::Parent { .. } => {
            println!("unix://{}", config.socket.display());
            let _ = std::io::stdout().flush();
            Ok(())
        }
        nix::unistd::ForkResult::Child => {
            let code = match daemon(config, listener, log) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("berth-shim: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// The daemon: a session of its own, stdio away from the caller, subreaper, then serve.
fn daemon(config: Config, listener: UnixListener, log: std::fs::File) -> Result<(), ShimError> {
    nix::unistd::setsid().map_err(|e| io("setsid")(e.into()))?;
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null").map_err(io("open /dev/null"))?;
    for (from, to) in [(null.as_raw_fd(), 0), (null.as_raw_fd(), 1), (log.as_raw_fd(), 2)] {
        // SAFETY: dup2 onto the standard descriptors; both descriptors are open and owned here.
        if unsafe { libc::dup2(from, to) } == -1 {
            return Err(io("redirect stdio")(std::io::Error::last_os_error()));
        }
    }
    drop((null, log));
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == -1 {
        return Err(io("become a subreaper")(std::io::Error::last_os_error()));
    }
    std::fs::write(config.bundle.join(PID_FILE), std::process::id().to_string()).map_err(io("write shim.pid"))?;
    let _telemetry = berth_telemetry::init("berth-shim");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(io("start tokio"))?;
    runtime.block_on(serve(config, listener))
}

async fn serve(config: Config, listener: UnixListener) -> Result<(), ShimError> {
    listener.set_nonblocking(true).map_err(io("socket"))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(io("socket"))?;
    let reaper = reaper::Reaper::start().map_err(io("watch SIGCHLD"))?;
    let socket_dir = config.socket.parent().map(PathBuf::from).unwrap_or_default();
    let events =
        events::Publisher::new(std::env::var(crate::protocol::EVENTS_ADDRESS_ENV).ok(), config.namespace.clone());
    let task =
        task::Task::new(config.id.clone(), config.namespace.clone(), config.bundle.clone(), socket_dir, reaper, events);
    let stop = Arc::new(tokio::sync::Notify::new());
    let service = Arc::new(server::ShimService { task, stop: stop.clone() });
    tracing::info!(task = config.id, namespace = config.namespace, socket = %config.socket.display(), "berth-shim serving");
    tokio::select! {
        served = crate::ttrpc::serve(listener, service) => served.map_err(io("serve"))?,
        _ = stop.notified() => {}
    }
    // Let the Shutdown answer reach the caller.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _ = std::fs::remove_file(&config.socket);
    let _ = std::fs::remove_file(config.bundle.join(PID_FILE));
    tracing::info!(task = config.id, "berth-shim stopped");
    Ok(())
}
