//! A container process's stdio, as containerd's shims do it.
//!
//! Clients name FIFOs (or `file://` paths); the process never gets those directly. Without a
//! terminal it gets pipes the shim made, and the shim copies between pipes and FIFOs, so that
//! CloseIO can end the process's stdin and a client that goes away never breaks the process's
//! output. With a terminal, the runtime sends the pty's master over a console socket and the
//! shim copies between the master and the FIFOs. Every descriptor is close-on-exec: only what
//! the runtime is handed on purpose reaches the container.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::runtime::ProcessStdio;

/// The stdio a client asked for: FIFO paths (empty: none) and whether to use a terminal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

const BUFFER: usize = 32 * 1024;

/// The shim's side of one process's stdio.
pub struct ProcessIo {
    /// Ends the stdin copy (CloseIO); None once sent or when there is no stdin.
    close_stdin: Mutex<Option<oneshot::Sender<()>>>,
    /// The pty's master, with a terminal.
    console: Option<std::sync::Arc<AsyncFd<OwnedFd>>>,
    /// Copies of the process's output, finished once it closed them.
    outputs: Mutex<Vec<JoinHandle<()>>>,
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

async fn open_output(path: &str) -> io::Result<Box<dyn AsyncWrite + Unpin + Send>> {
    if let Some(file) = path.strip_prefix("file://") {
        let file = tokio::fs::OpenOptions::new().create(true).append(true).open(file).await?;
        return Ok(Box::new(file));
    }
    // Read-write: opening never blocks for want of a reader, and writes never fail with EPIPE
    // when the client goes away.
    Ok(Box::new(pipe::OpenOptions::new().read_write(true).open_sender(path)?))
}

fn open_input(path: &str) -> io::Result<pipe::Receiver> {
    // Read-write, so that the FIFO never reads as ended between two writers: the end of
    // stdin is CloseIO, as in containerd.
    pipe::OpenOptions::new().read_write(true).open_receiver(path)
}

fn named(path: &str) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("open {path}: {e}"))
}

impl ProcessIo {
    /// Pipes for a process without a terminal: the copies start now; the returned stdio go
    /// to the runtime.
    pub async fn pipes(paths: &StdioPaths) -> io::Result<(ProcessIo, ProcessStdio)> {
        let mut stdio = ProcessStdio::default();
        let mut close_stdin = None;
        let mut outputs = Vec::new();
        if !paths.stdin.is_empty() {
            let fifo = open_input(&paths.stdin).map_err(named(&paths.stdin))?;
            let (read, write) = pipe_pair()?;
            let write = pipe::Sender::from_owned_fd(write)?;
            let (tell, told) = oneshot::channel();
            tokio::spawn(copy_input(fifo, write, told));
            close_stdin = Some(tell);
            stdio.stdin = Some(read);
        }
        for (path, slot) in [(&paths.stdout, &mut stdio.stdout), (&paths.stderr, &mut stdio.stderr)] {
            if path.is_empty() {
                continue;
            }
            let output = open_output(path).await.map_err(named(path))?;
            let (read, write) = pipe_pair()?;
            let read = pipe::Receiver::from_owned_fd(read)?;
            outputs.push(tokio::spawn(copy_output(read, output)));
            *slot = Some(write);
        }
        Ok((ProcessIo { close_stdin: Mutex::new(close_stdin), console: None, outputs: Mutex::new(outputs) }, stdio))
    }

    /// For a process with a terminal, once the runtime sent the pty's `master`.
    pub async fn console(master: OwnedFd, paths: &StdioPaths) -> io::Result<ProcessIo> {
        let flags = nix::fcntl::fcntl(master.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        nix::fcntl::fcntl(
            master.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK),
        )?;
        // SAFETY: the AsyncFd owns `master`, which stays open and the same descriptor until
        // the AsyncFd is dropped.
        let master = std::sync::Arc::new(unsafe { AsyncFd::register(master) }?);
        let mut close_stdin = None;
        if !paths.stdin.is_empty() {
            let fifo = open_input(&paths.stdin).map_err(named(&paths.stdin))?;
            let (tell, told) = oneshot::channel();
            tokio::spawn(copy_into_console(fifo, master.clone(), told));
            close_stdin = Some(tell);
        }
        let mut outputs = Vec::new();
        if !paths.stdout.is_empty() {
            let output = open_output(&paths.stdout).await.map_err(named(&paths.stdout))?;
            outputs.push(tokio::spawn(copy_from_console(master.clone(), output)));
        }
        Ok(ProcessIo { close_stdin: Mutex::new(close_stdin), console: Some(master), outputs: Mutex::new(outputs) })
    }

    /// Ends the process's stdin once what the client already wrote is passed on.
    pub fn close_stdin(&self) {
        if let Some(tell) = self.close_stdin.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = tell.send(());
        }
    }

    /// Sets the terminal's size; fails for a process without one.
    pub fn resize(&self, width: u32, height: u32) -> io::Result<()> {
        let Some(master) = &self.console else {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "the process has no terminal"));
        };
        let size = libc::winsize {
            ws_row: height.min(u16::MAX as u32) as u16,
            ws_col: width.min(u16::MAX as u32) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call; the
        // descriptor is the pty master this struct owns.
        let result = unsafe { libc::ioctl(master.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if result == -1 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Waits (at most `limit`) until the process's output has all been passed on.
    pub async fn drained(&self, limit: Duration) {
        let outputs: Vec<_> = std::mem::take(&mut *self.outputs.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::time::timeout(limit, futures::future::join_all(outputs)).await;
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.close_stdin();
        for copy in self.outputs.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            copy.abort();
        }
    }
}

async fn copy_input(mut fifo: pipe::Receiver, mut pipe: pipe::Sender, mut close: oneshot::Receiver<()>) {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        tokio::select! {
            biased;
            read = fifo.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if pipe.write_all(&buffer[..n]).await.is_err() { return },
            },
            _ = &mut close => break,
        }
    }
    // CloseIO: pass on what is already in the FIFO, then close the process's stdin.
    while let Ok(n) = read_now(&fifo, &mut buffer) {
        if n == 0 || pipe.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
}

/// Reads what the FIFO holds right now (it is non-blocking), whatever tokio last saw of its
/// readiness: WouldBlock when it is empty.
fn read_now(fifo: &pipe::Receiver, buffer: &mut [u8]) -> io::Result<usize> {
    Ok(nix::unistd::read(fifo.as_fd(), buffer)?)
}

async fn copy_output(mut pipe: pipe::Receiver, mut output: Box<dyn AsyncWrite + Unpin + Send>) {
    let mut buffer = vec![0u8; BUFFER];
    while let Ok(n) = pipe.read(&mut buffer).await {
        if n == 0 || output.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = output.flush().await;
}

async fn read_console(master: &AsyncFd<OwnedFd>, buffer: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = master.readable().await?;
        match ready.try_io(|fd| nix::unistd::read(fd.get_ref(), buffer).map_err(io::Error::from)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

async fn write_console(master: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut ready = master.writable().await?;
        match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

async fn copy_from_console(master: std::sync::Arc<AsyncFd<OwnedFd>>, mut output: Box<dyn AsyncWrite + Unpin + Send>) {
    let mut buffer = vec![0u8; BUFFER];
    // EIO once every process holding the terminal is gone: the end of output.
    while let Ok(n) = read_console(&master, &mut buffer).await {
        if n == 0 || output.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = output.flush().await;
}

async fn copy_into_console(
    mut fifo: pipe::Receiver,
    master: std::sync::Arc<AsyncFd<OwnedFd>>,
    mut close: oneshot::Receiver<()>,
) {
    let mut buffer = vec![0u8; BUFFER];
    loop {
        tokio::select! {
            biased;
            read = fifo.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => if write_console(&master, &buffer[..n]).await.is_err() { return },
            },
            _ = &mut close => break,
        }
    }
    while let Ok(n) = read_now(&fifo, &mut buffer) {
        if n == 0 || write_console(&master, &buffer[..n]).await.is_err() {
            break;
        }
    }
    // A terminal's stdin ends with EOT, not by closing (the master carries output too).
    let _ = write_console(&master, &[4]).await;
}

/// The unix socket the runtime sends a new terminal's master to (`--console-socket`).
pub struct ConsoleSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: PathBuf) -> io::Result<ConsoleSocket> {
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(ConsoleSocket { listener: tokio::net::UnixListener::from_std(listener)?, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The master the runtime sends, waiting at most `limit`.
    pub async fn receive(&self, limit: Duration) -> io::Result<OwnedFd> {
        tokio::time::timeout(limit, async {
            let (stream, _) = self.listener.accept().await?;
            loop {
                stream.readable().await?;
                match stream.try_io(tokio::io::Interest::READABLE, || receive_fd(stream.as_raw_fd())) {
                    Ok(fd) => return Ok(fd),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the runtime sent no terminal"))?
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one descriptor passed with SCM_RIGHTS.
fn receive_fd(socket: RawFd) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut data = [0u8; 4096];
    let mut iov = [io::IoSliceMut::new(&mut data)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<()>(socket, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for control in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = control
            && let Some(&fd) = fds.first()
        {
            for &extra in &fds[1..] {
                // SAFETY: the kernel installed these descriptors for us; nobody else owns them.
                drop(unsafe { OwnedFd::from_raw_fd(extra) });
            }
            // SAFETY: as above: a fresh descriptor from SCM_RIGHTS, owned from here on.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "the console socket message carried no descriptor"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path, name: &str) -> String {
        let path = dir.join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        path.display().to_string()
    }

    #[tokio::test]
    async fn pipes_carry_stdio_and_close_io_ends_stdin_after_pending_data() {
        let dir = tempfile::tempdir().unwrap();
        let paths = StdioPaths {
            stdin: fifo(dir.path(), "in"),
            stdout: fifo(dir.path(), "out"),
            stderr: String::new(),
            terminal: false,
        };
        // The client's ends, opened as containerd's client does before Create.
        let mut client_out = pipe::OpenOptions::new().open_receiver(&paths.stdout).unwrap();
        let (io, stdio) = ProcessIo::pipes(&paths).await.unwrap();
        let mut client_in = pipe::OpenOptions::new().open_sender(&paths.stdin).unwrap();
        assert!(stdio.stderr.is_none());

        // The "process": copies its stdin to its stdout, like cat.
        let mut process_in = pipe::Receiver::from_owned_fd(stdio.stdin.unwrap()).unwrap();
        let mut process_out = pipe::Sender::from_owned_fd(stdio.stdout.unwrap()).unwrap();
        client_in.write_all(b"hello\n").await.unwrap();
        io.close_stdin();
        let mut got = Vec::new();
        process_in.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello\n", "data written before CloseIO arrives, then EOF");
        process_out.write_all(&got).await.unwrap();
        drop(process_out);
        io.drained(Duration::from_secs(5)).await;
        let mut out = Vec::new();
        client_out.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"hello\n");
    }

    #[tokio::test]
    async fn a_missing_fifo_is_named_in_the_error() {
        let paths = StdioPaths { stdout: "/nonexistent/out".into(), ..Default::default() };
        let err = ProcessIo::pipes(&paths).await.err().unwrap();
        assert!(err.to_string().contains("/nonexistent/out"), "{err}");
    }
}
