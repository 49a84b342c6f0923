//! A real etcd server for tests: Debian's etcd-server on free loopback ports and a temp dir,
//! stopped by PID when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running etcd; `endpoint()` is its client address.
pub struct EtcdServer {
    child: Child,
    dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
}

/// Two distinct free loopback ports (both listeners held until both are chosen).
fn free_ports() -> (u16, u16) {
    let bind = || TcpListener::bind("127.0.0.1:0").expect("free loopback port");
    let (a, b) = (bind(), bind());
    let port = |l: &TcpListener| l.local_addr().expect("bound").port();
    (port(&a), port(&b))
}

fn find_etcd() -> std::path::PathBuf {
    for candidate in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("etcd is not installed: run scripts/install-deps.sh (Debian package etcd-server)");
}

impl EtcdServer {
    /// Starts etcd and waits until it accepts client connections.
    ///
    /// Another test may grab the chosen ports between choosing and binding them, so a start
    /// that fails is retried on new ports a few times.
    pub fn start() -> EtcdServer {
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("berth-etcd-").tempdir().expect("temp dir");
            let (client_port, peer_port) = free_ports();
            let mut server =
                EtcdServer { child: Self::spawn(&dir, client_port, peer_port), dir, client_port, peer_port };
            match server.wait_ready() {
                Ok(()) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("etcd did not start: {last_log}");
    }

    fn spawn(dir: &tempfile::TempDir, client_port: u16, peer_port: u16) -> Child {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
        Command::new(find_etcd())
            .args(["--name", "berth-test", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("berth-test={peer}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start etcd")
    }

    /// Waits until the client port accepts; the log when etcd exited or never listened.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("etcd exited with {status}: {}", self.logs()));
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        Err(format!("etcd did not listen within 30 s: {}", self.logs()))
    }

    /// `127.0.0.1:PORT` of the client listener.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Stops etcd (SIGKILL, by PID) keeping its data, e.g. to test outages.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts etcd again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(&self.dir, self.client_port, self.peer_port);
        if let Err(log) = self.wait_ready() {
            panic!("etcd did not restart: {log}");
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
