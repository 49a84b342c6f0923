//! Running child processes: each is restarted when it dies (with backoff), prefixes its output
//! with its name, dies with berthd, and is stopped with SIGTERM then SIGKILL.

use std::io::{IsTerminal as _, Write as _};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::services::Process;

/// First restart delay; it doubles with every quick death up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A child that ran this long before dying is restarted at once again (backoff reset).
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a child's exit may precede berthd's own stop and still count as part of it.
const STOP_RACE: Duration = Duration::from_millis(50);
/// How long output forwarding may lag behind a child's exit.
const OUTPUT_DRAIN: Duration = Duration::from_secs(1);

/// What a supervised child is doing; watch it through [`Supervisor::start`]'s receiver.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// The running process, if any.
    pub pid: Option<u32>,
    /// How often it has died (or failed to start) so far.
    pub exits: u32,
    /// How the last run ended.
    pub last_exit: Option<String>,
}

pub struct Supervisor {
    stop: watch::Sender<bool>,
    grace: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Supervisor {
    /// `grace`: how long a child may take to stop after SIGTERM before it gets SIGKILL.
    pub fn new(grace: Duration) -> Self {
        Supervisor { stop: watch::channel(false).0, grace, tasks: Vec::new() }
    }

    /// Starts `process` and keeps it running until [`Supervisor::stop`].
    pub fn start(&mut self, process: Process) -> watch::Receiver<State> {
        let (state, watch) = watch::channel(State::default());
        let stop = self.stop.subscribe();
        self.tasks.push(tokio::spawn(supervise(process, state, stop, self.grace)));
        watch
    }

    /// Stops every child: SIGTERM to all at once, SIGKILL to those still running after the
    /// grace period. Returns when all have exited.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn supervise(process: Process, state: watch::Sender<State>, mut stop: watch::Receiver<bool>, grace: Duration) {
    let name = process.name.as_str();
    let mut backoff = INITIAL_BACKOFF;
    loop {
        let started = Instant::now();
        let ended = match spawn(&process) {
            Ok((mut child, pid, output)) => {
                tracing::info!("{name} started (pid {pid})");
                state.send_modify(|s| s.pid = Some(pid));
                tokio::select! {
                    status = child.wait() => {
                        drain(output).await;
                        describe(status)
                    }
                    () = stopped(&mut stop) => {
                        terminate(name, &mut child, pid, grace).await;
                        drain(output).await;
                        state.send_modify(|s| s.pid = None);
                        return;
                    }
                }
            }
            Err(err) => format!("could not be started: {err}"),
        };
        // A terminal's Ctrl-C reaches the children as well as berthd: give berthd's own stop
        // a moment to arrive, so that is not reported as a crash.
        if tokio::time::timeout(STOP_RACE, stopped(&mut stop)).await.is_ok() {
            tracing::info!("{name} {ended}");
            state.send_modify(|s| s.pid = None);
            return;
        }
        if started.elapsed() >= STABLE_AFTER {
            backoff = INITIAL_BACKOFF;
        }
        tracing::warn!("{name} {ended} after {:.1?}; restarting in {backoff:?}", started.elapsed());
        state.send_modify(|s| {
            s.pid = None;
            s.exits += 1;
            s.last_exit = Some(ended);
        });
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Resolves once a stop is asked for.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(status) => format!("exited ({status})"),
        Err(err) => format!("could not be waited for ({err})"),
    }
}

/// Starts one run of `process`, its output forwarded to berthd's stderr line by line.
fn spawn(process: &Process) -> std::io::Result<(Child, u32, Vec<JoinHandle<()>>)> {
    let mut command = Command::new(&process.program);
    command.args(&process.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if !std::io::stderr().is_terminal() {
        // Children log through pipes; keep colour codes out of log files.
        command.env("NO_COLOR", "1");
    }
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes two system
    // calls (prctl, getppid) and builds an io::Error from an errno, all async-signal-safe; it
    // touches no memory shared with the parent.
    unsafe {
        command.pre_exec(move || {
            // Children die with berthd, even when it is SIGKILLed. berthd runs a
            // current-thread runtime, so the spawning thread (which the kernel watches
            // here) lives as long as the process.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // berthd died between fork and prctl: the signal will never come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id().ok_or_else(|| std::io::Error::other("the child exited before its pid was known"))?;
    let mut output = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        output.push(forward_lines(process.name.clone(), stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        output.push(forward_lines(process.name.clone(), stderr));
    }
    Ok((child, pid, output))
}

/// Copies `stream` to berthd's stderr, each line prefixed with `name`.
fn forward_lines(name: String, stream: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let prefix = format!("{name} | ");
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            line.extend_from_slice(prefix.as_bytes());
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            // One write per line so lines from several children never interleave.
            let _ = std::io::stderr().lock().write_all(&line);
        }
    })
}

/// Waits (briefly) for the last output of a run to be forwarded.
async fn drain(output: Vec<JoinHandle<()>>) {
    let _ = tokio::time::timeout(OUTPUT_DRAIN, futures::future::join_all(output)).await;
}

/// SIGTERM, then SIGKILL after `grace`; both by PID.
async fn terminate(name: &str, child: &mut Child, pid: u32, grace: Duration) {
    let target = Pid::from_raw(pid as i32);
    if let Err(err) = kill(target, Signal::SIGTERM) {
        tracing::warn!("{name}: SIGTERM to pid {pid}: {err}");
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => tracing::info!("{name} stopped ({})", describe(status)),
        Err(_) => {
            tracing::warn!("{name} did not stop within {grace:?} of SIGTERM; sending SIGKILL to pid {pid}");
            let _ = kill(target, Signal::SIGKILL);
            let _ = child.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn shell(name: &str, script: &str) -> Process {
        Process {
            name: name.to_string(),
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            socket: PathBuf::new(),
        }
    }

    async fn wait_until(state: &mut watch::Receiver<State>, done: impl Fn(&State) -> bool) -> State {
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| done(s))).await.unwrap().unwrap().clone()
    }

    fn alive(pid: u32) -> bool {
        // Signal 0 checks existence; a zombie (exited, not yet reaped) counts as gone here
        // because the supervisor reaps its children.
        kill(Pid::from_raw(pid as i32), None).is_ok()
    }

    #[tokio::test]
    async fn a_dying_child_is_restarted_with_growing_delays() {
        let mut supervisor = Supervisor::new(Duration::from_secs(5));
        let mut state = supervisor.start(shell("flaky", "exit 3"));
        let started = Instant::now();
        let after = wait_until(&mut state, |s| s.exits >= 4).await;
        // 100 + 200 + 400 ms of backoff between the four runs.
        assert!(started.elapsed() >= Duration::from_millis(700), "{:?}", started.elapsed());
        assert!(after.last_exit.unwrap().contains("exit status: 3"));
        supervisor.stop().await;
    }

    #[tokio::test]
    async fn stop_terminates_children_and_kills_those_that_ignore_sigterm() {
        let mut supervisor = Supervisor::new(Duration::from_millis(300));
        let mut polite = supervisor.start(shell("polite", "exec sleep 60"));
        // SIG_IGN survives exec: this sleep ignores SIGTERM.
        let mut stubborn = supervisor.start(shell("stubborn", "trap '' TERM; exec sleep 60"));
        let polite_pid = wait_until(&mut polite, |s| s.pid.is_some()).await.pid.unwrap();
        let stubborn_pid = wait_until(&mut stubborn, |s| s.pid.is_some()).await.pid.unwrap();
        // Let the shells reach exec (and the trap) before signalling.
        tokio::time::sleep(Duration::from_millis(100)).await;

        let started = Instant::now();
        supervisor.stop().await;
        assert!(!alive(polite_pid) && !alive(stubborn_pid));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "{took:?}");
        assert_eq!(polite.borrow().exits, 0);
    }

    #[tokio::test]
    async fn a_missing_program_counts_as_a_failed_run() {
        let mut supervisor = Supervisor::new(Duration::from_secs(1));
        let mut process = shell("missing", "");
        process.program = PathBuf::from("/nonexistent/berth-nothing");
        let mut state = supervisor.start(process);
        let after = wait_until(&mut state, |s| s.exits >= 1).await;
        assert!(after.last_exit.unwrap().starts_with("could not be started"));
        supervisor.stop().await;
    }
}
