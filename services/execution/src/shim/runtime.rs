//! Driving the OCI runtime (runc, or crun, which takes the same command line) through its CLI.
//!
//! Each call runs the runtime binary with `--root` (its state directory) and a log file of its
//! own in JSON, from which a failure's message is taken; the container's stdio are handed to
//! `create` and `exec`, which pass them on to the container's process.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;
use tokio::io::AsyncReadExt;

use super::reaper::Reaper;

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("{binary} not found: install it or choose another runtime")]
    Missing { binary: String },
    #[error("{command}: {message}")]
    Failed { command: String, message: String },
    #[error("{command}: {source}")]
    Io {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// The stdio a container process gets (None: /dev/null).
#[derive(Default)]
pub struct ProcessStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

fn stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

/// One OCI runtime binary with its state directory.
pub struct Runtime {
    binary: PathBuf,
    root: PathBuf,
    /// Where the per-call log files go (the bundle).
    logs: PathBuf,
    systemd_cgroup: bool,
    reaper: Reaper,
    calls: AtomicU64,
}

/// Options for `create`.
pub struct CreateOptions<'a> {
    pub bundle: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot_root: bool,
    pub no_new_keyring: bool,
}

/// What `checkpoint` asks CRIU for (containerd's runc checkpoint options).
pub struct CheckpointOptions<'a> {
    pub image_path: &'a Path,
    pub work_path: &'a Path,
    /// Keep the container running after the dump (the default; `exit` stops it).
    pub leave_running: bool,
    pub open_tcp: bool,
    pub external_unix_sockets: bool,
    pub terminal: bool,
    pub file_locks: bool,
    pub empty_namespaces: &'a [String],
    pub cgroups_mode: &'a str,
}

/// Options for `restore`.
pub struct RestoreOptions<'a> {
    pub bundle: &'a Path,
    pub image_path: &'a Path,
    pub work_path: &'a Path,
    pub pid_file: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub no_pivot_root: bool,
}

impl Runtime {
    /// `binary` is a name looked up in PATH (and /usr/sbin, /sbin) or a path.
    pub fn new(
        binary: &str,
        root: PathBuf,
        logs: PathBuf,
        systemd_cgroup: bool,
        reaper: Reaper,
    ) -> Result<Runtime, RuntimeError> {
        let binary = find_binary(binary).ok_or_else(|| RuntimeError::Missing { binary: binary.to_string() })?;
        Ok(Runtime { binary, root, logs, systemd_cgroup, reaper, calls: AtomicU64::new(0) })
    }

    pub fn binary(&self) -> &Path {
        &self.binary
    }

    fn name(&self) -> String {
        self.binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Runs the runtime with `args`; the container process's stdio (if any) become the
    /// command's. Returns what it printed on stdout when `capture` is set.
    async fn run(
        &self,
        args: Vec<OsString>,
        process: Option<ProcessStdio>,
        input: Option<Vec<u8>>,
        capture: bool,
    ) -> Result<Vec<u8>, RuntimeError> {
        let command_name =
            format!("{} {}", self.name(), args.first().map(|a| a.to_string_lossy().into_owned()).unwrap_or_default());
        let io = |source| RuntimeError::Io { command: command_name.clone(), source };
        let log = self.logs.join(format!(".runtime-{}.log", self.calls.fetch_add(1, Ordering::Relaxed)));
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.root).arg("--log").arg(&log).arg("--log-format").arg("json");
        if self.systemd_cgroup {
            command.arg("--systemd-cgroup");
        }
        command.args(&args);
        // Own stderr when it is not the container's, for messages that come before logging.
        let own_stderr = process.is_none();
        match process {
            Some(process) => {
                command.stdin(stdio(process.stdin)).stdout(stdio(process.stdout)).stderr(stdio(process.stderr));
            }
            None => {
                command
                    .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
                    .stdout(if capture { Stdio::piped() } else { Stdio::null() })
                    .stderr(Stdio::piped());
            }
        }
        let (mut child, exited) = self.reaper.spawn(&mut command).map_err(io)?;
        // The container's ends of its stdio now live in the child only.
        drop(command);
        if let Some(input) = input
            && let Some(mut stdin) = child.stdin.take()
        {
            // Small (a resources document); the runtime reads it all before anything else.
            tokio::task::spawn_blocking(move || std::io::Write::write_all(&mut stdin, &input));
        }
        let stdout = read_all(child.stdout.take().map(OwnedFd::from));
        let stderr = read_all(child.stderr.take().map(OwnedFd::from));
        let (stdout, stderr) = tokio::join!(stdout, stderr);
        let code = exited.await.map_err(|_| io(std::io::Error::other("the reaper stopped")))?;
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        if code == 0 {
            return Ok(stdout);
        }
        let mut message = last_error(&logged).unwrap_or_default();
        if message.is_empty() && own_stderr {
            message = String::from_utf8_lossy(&stderr).trim().to_string();
        }
        if message.is_empty() {
            message = format!("exited with status {code}");
        }
        Err(RuntimeError::Failed { command: command_name, message })
    }

    pub async fn create(
        &self,
        id: &str,
        options: CreateOptions<'_>,
        process: ProcessStdio,
    ) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = vec!["create".into(), "--bundle".into(), options.bundle.into()];
        args.extend(["--pid-file".into(), options.pid_file.into()]);
        if let Some(socket) = options.console_socket {
            args.extend(["--console-socket".into(), socket.into()]);
        }
        if options.no_pivot_root {
            args.push("--no-pivot".into());
        }
        if options.no_new_keyring {
            args.push("--no-new-keyring".into());
        }
        args.push(id.into());
        self.run(args, Some(process), None, false).await.map(drop)
    }

    pub async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(vec!["start".into(), id.into()], None, None, false).await.map(drop)
    }

    /// Starts the process described by the OCI process JSON at `process_file` in the container.
    pub async fn exec(
        &self,
        id: &str,
        process_file: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        process: ProcessStdio,
    ) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = vec!["exec".into(), "--detach".into(), "--process".into(), process_file.into()];
        args.extend(["--pid-file".into(), pid_file.into()]);
        if let Some(socket) = console_socket {
            args.extend(["--console-socket".into(), socket.into()]);
        }
        args.push(id.into());
        self.run(args, Some(process), None, false).await.map(drop)
    }

    pub async fn kill(&self, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = vec!["kill".into()];
        if all {
            args.push("--all".into());
        }
        args.extend([id.into(), signal.to_string().into()]);
        self.run(args, None, None, false).await.map(drop)
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = vec!["delete".into()];
        if force {
            args.push("--force".into());
        }
        args.push(id.into());
        self.run(args, None, None, false).await.map(drop)
    }

    pub async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(vec!["pause".into(), id.into()], None, None, false).await.map(drop)
    }

    pub async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.run(vec!["resume".into(), id.into()], None, None, false).await.map(drop)
    }

    /// Dumps the container with CRIU into `options.image_path`; CRIU's own log (dump.log)
    /// stays in `options.work_path`.
    pub async fn checkpoint(&self, id: &str, options: CheckpointOptions<'_>) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = vec!["checkpoint".into()];
        args.extend(["--image-path".into(), options.image_path.into()]);
        args.extend(["--work-path".into(), options.work_path.into()]);
        for (set, flag) in [
            (options.leave_running, "--leave-running"),
            (options.open_tcp, "--tcp-established"),
            (options.external_unix_sockets, "--ext-unix-sk"),
            (options.terminal, "--shell-job"),
            (options.file_locks, "--file-locks"),
        ] {
            if set {
                args.push(flag.into());
            }
        }
        for namespace in options.empty_namespaces {
            args.extend(["--empty-ns".into(), namespace.into()]);
        }
        if !options.cgroups_mode.is_empty() {
            args.extend(["--manage-cgroups-mode".into(), options.cgroups_mode.into()]);
        }
        args.push(id.into());
        self.run(args, None, None, false).await.map(drop)
    }

    /// Restores a container from the CRIU image at `options.image_path`, detached: its
    /// processes run on, with `process` as the stdio the dumped ones had.
    pub async fn restore(
        &self,
        id: &str,
        options: RestoreOptions<'_>,
        process: ProcessStdio,
    ) -> Result<(), RuntimeError> {
        let mut args: Vec<OsString> = vec!["restore".into(), "--detach".into(), "--no-subreaper".into()];
        args.extend(["--bundle".into(), options.bundle.into()]);
        args.extend(["--image-path".into(), options.image_path.into()]);
        args.extend(["--work-path".into(), options.work_path.into()]);
        args.extend(["--pid-file".into(), options.pid_file.into()]);
        if let Some(socket) = options.console_socket {
            args.extend(["--console-socket".into(), socket.into()]);
        }
        if options.no_pivot_root {
            args.push("--no-pivot".into());
        }
        args.push(id.into());
        self.run(args, Some(process), None, false).await.map(drop)
    }

    /// PIDs of every process in the container.
    pub async fn ps(&self, id: &str) -> Result<Vec<u32>, RuntimeError> {
        let out = self.run(vec!["ps".into(), "--format".into(), "json".into(), id.into()], None, None, true).await?;
        serde_json::from_slice::<Option<Vec<u32>>>(&out).map(Option::unwrap_or_default).map_err(|e| {
            RuntimeError::Failed { command: format!("{} ps", self.name()), message: format!("unreadable output: {e}") }
        })
    }

    /// Applies an OCI LinuxResources document (JSON) to the running container.
    pub async fn update(&self, id: &str, resources: Vec<u8>) -> Result<(), RuntimeError> {
        self.run(vec!["update".into(), "--resources".into(), "-".into(), id.into()], None, Some(resources), false)
            .await
            .map(drop)
    }
}

/// Reads a pipe (a child's stdout or stderr) to its end without blocking the runtime.
async fn read_all(fd: Option<OwnedFd>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(fd) = fd {
        match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            Ok(mut pipe) => {
                let _ = pipe.read_to_end(&mut out).await;
            }
            Err(e) => tracing::warn!("reading the runtime's output: {e}"),
        }
    }
    out
}

/// The message of the last error the runtime logged (JSON lines with `level` and `msg`).
fn last_error(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| entry.get("level").and_then(|l| l.as_str()) == Some("error"))
        .filter_map(|entry| entry.get("msg").and_then(|m| m.as_str()).map(str::to_string))
        .next_back()
}

/// Lines of a CRIU log kept in an error: CRIU writes its errors where they happen, often
/// followed by lines about what it was doing meanwhile, so a plain tail may miss them.
const CRIU_LOG_ERRORS: usize = 8;
const CRIU_LOG_TAIL: usize = 6;

/// What a failed CRIU run left in its log `path` (dump.log, restore.log), for an error
/// message: its `Error` lines, then its last lines; None when there is no log.
pub fn criu_log_tail(path: &Path) -> Option<String> {
    let log = std::fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = log.lines().map(str::trim_end).filter(|l| !l.is_empty()).collect();
    let tail_from = lines.len().saturating_sub(CRIU_LOG_TAIL);
    let errors: Vec<&str> =
        lines[..tail_from].iter().copied().filter(|l| l.contains("Error") || l.contains("error")).collect();
    let mut kept: Vec<&str> = errors[errors.len().saturating_sub(CRIU_LOG_ERRORS)..].to_vec();
    if !kept.is_empty() && tail_from > 0 {
        kept.push("...");
    }
    kept.extend(&lines[tail_from..]);
    Some(kept.join("\n"))
}

/// Finds a runtime binary: a path as given, else a name in PATH, /usr/local/sbin, /usr/sbin, /sbin.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = PathBuf::from(name);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_last_logged_error() {
        let log = r#"{"level":"warning","msg":"meh","time":"x"}
{"level":"error","msg":"first","time":"x"}
not json
{"level":"error","msg":"container \"x\" does not exist","time":"x"}"#;
        assert_eq!(last_error(log).as_deref(), Some("container \"x\" does not exist"));
        assert_eq!(last_error(""), None);
    }

    #[test]
    fn criu_logs_keep_their_errors_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        assert_eq!(criu_log_tail(&log), None);
        let mut text = String::from("(00.01) Version: 3.17.1\n(00.02) Error (criu/vdso.c:613): vdso: failed\n");
        for i in 0..20 {
            text.push_str(&format!("(00.{i:02}) line {i}\n"));
        }
        std::fs::write(&log, text).unwrap();
        let tail = criu_log_tail(&log).unwrap();
        assert!(tail.starts_with("(00.02) Error (criu/vdso.c:613)"), "{tail}");
        assert!(tail.ends_with("line 19") && tail.contains("line 14") && !tail.contains("line 13"), "{tail}");
        assert!(!tail.contains("Version"), "{tail}");
    }

    #[test]
    fn missing_binaries_are_named() {
        assert!(find_binary("sh").is_some());
        let err =
            Runtime::new("no-such-runtime", "/tmp".into(), "/tmp".into(), false, Reaper::default()).err().unwrap();
        assert_eq!(err.to_string(), "no-such-runtime not found: install it or choose another runtime");
    }
}
