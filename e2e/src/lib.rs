//! Harness for berth's end-to-end tests.
//!
//! Each test starts its own stack (`berthd` on temp --root/--state and a temp socket) with
//! the binaries cargo built, talks to it through the gateway socket exactly as a user would,
//! and stops everything it started by PID when dropped. Tools a test needs (`ctr`, root) are
//! checked with [`require_tool`], which fails the test with a message naming what is missing.

pub mod content;
pub mod images;
pub mod outcome;
pub mod peers;
pub mod procs;
pub mod registry;
pub mod stack;

pub use stack::Stack;

use std::path::PathBuf;

/// Directory holding the workspace's binaries (target/debug or target/release).
///
/// `BERTH_BIN_DIR` overrides it; otherwise it is the parent of the test executable's `deps/`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("test executable has a parent dir");
    deps.parent().expect("deps dir has a parent").to_path_buf()
}

/// Path of a workspace binary; fails the test with what to do when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --workspace --bins` \
         (scripts/test.sh does this)",
        path.display()
    );
    path
}

/// Fails the test, naming the tool, when `name` is not on PATH.
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("required tool `{name}` is not installed: run scripts/install-deps.sh (Debian packages)");
}

/// Fails the test unless it runs as root.
pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root: run the suite as root");
}

/// sha256 digest of `data` in containerd's form.
pub fn digest_of(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// `len` bytes of random data.
pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    data
}
