//! A process's stdio as containerd's clients give it: FIFOs in a directory of their own that
//! the shim opens, and that this client copies to and from its own stdio (or its terminal, put
//! in raw mode, with its size passed on).

use std::os::fd::AsRawFd as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// Where FIFO directories go.
pub fn fifo_base() -> PathBuf {
    std::env::temp_dir().join("berth-fifo")
}

/// The FIFOs of one process, in a directory only root can enter.
#[derive(Debug, Clone)]
pub struct Fifos {
    pub dir: PathBuf,
    pub stdin: String,
    pub stdout: String,
    /// Empty with a terminal: the terminal carries both outputs.
    pub stderr: String,
}

impl Fifos {
    /// Makes the FIFOs for process `name` (`<namespace>-<id>[-<exec>]`) in a new directory.
    pub fn create(name: &str, terminal: bool) -> anyhow::Result<Fifos> {
        let base = fifo_base();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&base)
            .with_context(|| format!("cannot create the FIFO directory {}", base.display()))?;
        let dir = base.join(format!("{name}-{:08x}", rand::random::<u32>()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create the FIFO directory {}", dir.display()))?;
        let make = |stream: &str| -> anyhow::Result<String> {
            let path = dir.join(stream);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .with_context(|| format!("cannot make the FIFO {}", path.display()))?;
            Ok(path.display().to_string())
        };
        let stdin = make("stdin")?;
        let stdout = make("stdout")?;
        let stderr = if terminal { String::new() } else { make("stderr")? };
        Ok(Fifos { dir, stdin, stdout, stderr })
    }

    /// Removes the FIFOs and their directory.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Removes the FIFO directory holding `path`, when it is one of ours.
    pub fn remove_dir_of(path: &str) {
        let path = Path::new(path);
        if let Some(dir) = path.parent()
            && dir.parent() == Some(fifo_base().as_path())
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// This client's ends of a process's FIFOs, opened before the shim opens its ends.
pub struct Ends {
    stdin: Option<pipe::Sender>,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
}

impl Ends {
    /// Opens our ends of the named FIFOs (empty names are skipped). Output ends are opened
    /// read-only and non-blocking: reading them only starts once the shim has its ends open
    /// (after Start), and then an empty read means the shim closed them. The input end is
    /// opened read-write so the open never waits for the shim.
    pub fn open(stdin: &str, stdout: &str, stderr: &str) -> anyhow::Result<Ends> {
        let receiver = |path: &str| -> anyhow::Result<Option<pipe::Receiver>> {
            if path.is_empty() {
                return Ok(None);
            }
            let fifo = pipe::OpenOptions::new().open_receiver(path).with_context(|| format!("cannot open {path}"))?;
            Ok(Some(fifo))
        };
        let stdin = if stdin.is_empty() {
            None
        } else {
            Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(stdin)
                    .with_context(|| format!("cannot open {stdin}"))?,
            )
        };
        Ok(Ends { stdin, stdout: receiver(stdout)?, stderr: receiver(stderr)? })
    }

    /// Starts copying: the process's output to our stdout and stderr until the shim closes the
    /// FIFOs, and our stdin into the process; when our stdin ends, `stdin_done` runs (CloseIO).
    pub fn start<F>(self, stdin_done: F) -> Copies
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut outputs = Vec::new();
        if let Some(fifo) = self.stdout {
            outputs.push(tokio::spawn(copy_out(fifo, false)));
        }
        if let Some(fifo) = self.stderr {
            outputs.push(tokio::spawn(copy_out(fifo, true)));
        }
        let input = self.stdin.map(|fifo| {
            tokio::spawn(async move {
                copy_in(fifo).await;
                stdin_done.await;
            })
        });
        Copies { outputs, input }
    }
}

/// Copies running for one process.
pub struct Copies {
    outputs: Vec<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
}

impl Copies {
    /// Waits (at most `limit`) for the output to be all written out, and stops copying input.
    pub async fn finish(self, limit: Duration) {
        if let Some(input) = self.input {
            input.abort();
        }
        let all = futures::future::join_all(self.outputs);
        let _ = tokio::time::timeout(limit, all).await;
    }
}

async fn copy_out(mut fifo: pipe::Receiver, to_stderr: bool) {
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let n = match fifo.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let written = if to_stderr {
            let mut out = tokio::io::stderr();
            match out.write_all(&buffer[..n]).await {
                Ok(()) => out.flush().await,
                Err(err) => Err(err),
            }
        } else {
            let mut out = tokio::io::stdout();
            match out.write_all(&buffer[..n]).await {
                Ok(()) => out.flush().await,
                Err(err) => Err(err),
            }
        };
        if written.is_err() {
            return;
        }
    }
}

async fn copy_in(mut fifo: pipe::Sender) {
    let mut stdin = tokio::io::stdin();
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        match stdin.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if fifo.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Our terminal in raw mode for as long as this lives: keys go to the container's terminal as
/// they are typed (Ctrl-C included), and the old mode comes back on drop.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Puts stdin's terminal in raw mode; None when stdin is not a terminal.
    pub fn enter() -> Option<RawTerminal> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid descriptor.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor and a pointer to a termios we own.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: valid descriptor and termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: restores the attributes read in `enter` on the same descriptor.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &self.saved) };
    }
}

/// The size (columns, rows) of the terminal on stdin or stdout, if there is one.
pub fn window_size() -> Option<(u32, u32)> {
    for fd in [std::io::stdin().as_raw_fd(), std::io::stdout().as_raw_fd()] {
        // SAFETY: winsize is plain data, filled by TIOCGWINSZ on success.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: TIOCGWINSZ writes one winsize into the pointer given.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0 && size.ws_col > 0 {
            return Some((u32::from(size.ws_col), u32::from(size.ws_row)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifos_are_made_private_and_removed() {
        let fifos = Fifos::create("unit-test", false).unwrap();
        use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
        let meta = std::fs::metadata(&fifos.dir).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        for path in [&fifos.stdin, &fifos.stdout, &fifos.stderr] {
            assert!(std::fs::metadata(path).unwrap().file_type().is_fifo(), "{path}");
        }
        let ends = Ends::open(&fifos.stdin, &fifos.stdout, &fifos.stderr).unwrap();
        drop(ends);
        let tty = Fifos::create("unit-test-tty", true).unwrap();
        assert!(tty.stderr.is_empty());
        Fifos::remove_dir_of(&tty.stdout);
        assert!(!tty.dir.exists());
        fifos.remove();
        assert!(!fifos.dir.exists());
    }
}
