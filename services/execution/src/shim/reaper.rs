//! The shim is a child subreaper: the container's processes (which the runtime's short-lived
//! commands leave behind) become its children, and it collects every exit with
//! `waitpid(-1)`. So nothing here may wait for a particular child on its own (std's
//! `Child::wait`, tokio's process module): all exits go through this one reaper, which hands
//! each to whoever registered for that pid — even when the exit came before the registration.

use std::collections::HashMap;
use std::io;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;

/// How long an exit nobody asked for is kept (a registration may come just after it).
const KEEP_UNCLAIMED: Duration = Duration::from_secs(60);

/// An exit status as containerd reports it: the code, or 128 + the signal that killed it.
pub type ExitCode = u32;

#[derive(Default)]
struct Exits {
    waiting: HashMap<i32, oneshot::Sender<ExitCode>>,
    unclaimed: HashMap<i32, (ExitCode, Instant)>,
}

/// Collects exits of the shim's children. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    exits: Arc<Mutex<Exits>>,
}

impl Reaper {
    /// Starts reaping on SIGCHLD; must run inside a tokio runtime.
    pub fn start() -> io::Result<Reaper> {
        let reaper = Reaper::default();
        let mut children = signal(SignalKind::child())?;
        let this = reaper.clone();
        tokio::spawn(async move {
            loop {
                this.reap();
                if children.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn exits(&self) -> std::sync::MutexGuard<'_, Exits> {
        self.exits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects every child that has exited.
    fn reap(&self) {
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code as ExitCode),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, 128 + signal as ExitCode),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(errno) => {
                    tracing::warn!("waitpid: {errno}");
                    return;
                }
            };
            self.exited(pid.as_raw(), code);
        }
    }

    fn exited(&self, pid: i32, code: ExitCode) {
        let mut exits = self.exits();
        match exits.waiting.remove(&pid) {
            Some(waiter) => {
                let _ = waiter.send(code);
            }
            None => {
                let now = Instant::now();
                exits.unclaimed.retain(|_, (_, at)| now.duration_since(*at) < KEEP_UNCLAIMED);
                exits.unclaimed.insert(pid, (code, now));
            }
        }
    }

    /// Resolves with `pid`'s exit code once it exits (at once when it already has).
    pub fn watch(&self, pid: u32) -> oneshot::Receiver<ExitCode> {
        let (tell, told) = oneshot::channel();
        let mut exits = self.exits();
        match exits.unclaimed.remove(&(pid as i32)) {
            Some((code, _)) => {
                let _ = tell.send(code);
            }
            None => {
                exits.waiting.insert(pid as i32, tell);
            }
        }
        told
    }

    /// Spawns `command` and registers for its exit in one step, so that the reaper cannot
    /// collect it unseen in between.
    pub fn spawn(&self, command: &mut Command) -> io::Result<(Child, oneshot::Receiver<ExitCode>)> {
        let mut exits = self.exits();
        let child = command.spawn()?;
        let (tell, told) = oneshot::channel();
        exits.waiting.insert(child.id() as i32, tell);
        Ok((child, told))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exits_reach_their_waiters_even_when_registered_late() {
        let reaper = Reaper::start().unwrap();
        let (_child, exited) = reaper.spawn(Command::new("sh").args(["-c", "exit 7"])).unwrap();
        assert_eq!(exited.await.unwrap(), 7);

        let (child, exited) = reaper.spawn(Command::new("sleep").arg("10").stdin(std::process::Stdio::null())).unwrap();
        nix::sys::signal::kill(Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        assert_eq!(exited.await.unwrap(), 128 + 9);

        // A child nobody registered for: its exit waits for a late `watch`.
        #[allow(clippy::zombie_processes)] // the reaper collects it: that is the point
        let child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(reaper.watch(pid).await.unwrap(), 0);
    }
}
