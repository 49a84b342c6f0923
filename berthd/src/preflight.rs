//! Checks made before anything starts, so that a stack that cannot run says why at once
//! instead of through a failing child.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::services::Options;

#[derive(Debug, Error)]
pub enum PreflightError {
    #[error("--{flag} {}: {problem}; {hint}", path.display())]
    Directory { flag: &'static str, path: PathBuf, problem: String, hint: &'static str },
    #[error("another server is listening at {}; stop it or choose another --address", .0.display())]
    AddressInUse(PathBuf),
    #[error(
        "another server is listening at {} (another berthd with --state {}?); stop it or choose another --state",
        socket.display(),
        state.display()
    )]
    StateInUse { socket: PathBuf, state: PathBuf },
    #[error("{} exists and is not a socket; remove it or choose another path", .0.display())]
    NotASocket(PathBuf),
    #[error("remove stale socket {}: {source}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const HINT_ROOT: &str = "run berthd as root or pass a --root it can write to";
const HINT_STATE: &str = "run berthd as root or pass a --state it can write to";
const HINT_ADDRESS: &str = "run berthd as root or pass an --address in a directory it can write to";

/// Runs every check: the gateway address is free, `--root` and `--state` (and the address'
/// directory) are writable directories, and no other stack serves the service sockets.
/// Stale socket files left by a stack that died are removed.
pub fn run(options: &Options, sockets: &[PathBuf]) -> Result<(), PreflightError> {
    if check_socket(&options.address)? == Socket::Live {
        return Err(PreflightError::AddressInUse(options.address.clone()));
    }
    writable_dir("root", &options.root, HINT_ROOT)?;
    writable_dir("state", &options.state, HINT_STATE)?;
    if let Some(parent) = options.address.parent().filter(|p| !p.as_os_str().is_empty()) {
        writable_dir("address", parent, HINT_ADDRESS)?;
    }
    for socket in sockets.iter().filter(|s| **s != options.address) {
        if check_socket(socket)? == Socket::Live {
            return Err(PreflightError::StateInUse { socket: socket.clone(), state: options.state.clone() });
        }
    }
    Ok(())
}

/// Creates `dir` if needed and proves it writable by creating (and removing) a file in it:
/// permission bits alone do not tell (root ignores them; a read-only mount does not show).
pub fn writable_dir(flag: &'static str, dir: &Path, hint: &'static str) -> Result<(), PreflightError> {
    let fail = |problem: String| PreflightError::Directory { flag, path: dir.to_path_buf(), problem, hint };
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => return Err(fail("exists and is not a directory".to_string())),
        Ok(_) => {}
        Err(_) => std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))?,
    }
    let probe = dir.join(format!(".berthd-write-check-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| fail(format!("not writable: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// What was found where a socket goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Socket {
    /// Nothing there (any stale socket file has been removed).
    Free,
    /// A server answers there.
    Live,
}

/// Looks at `path`: a live server is reported, a stale socket file removed, anything but a
/// socket refused.
pub fn check_socket(path: &Path) -> Result<Socket, PreflightError> {
    match std::fs::symlink_metadata(path) {
        // Missing, or unreadable: the process that binds there reports the latter.
        Err(_) => Ok(Socket::Free),
        Ok(meta) if !meta.file_type().is_socket() => Err(PreflightError::NotASocket(path.to_path_buf())),
        Ok(_) if UnixStream::connect(path).is_ok() => Ok(Socket::Live),
        Ok(_) => {
            tracing::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path)
                .map_err(|source| PreflightError::RemoveStale { path: path.to_path_buf(), source })?;
            Ok(Socket::Free)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    use super::*;

    fn options(dir: &Path) -> Options {
        Options {
            root: dir.join("root"),
            state: dir.join("state"),
            address: dir.join("run/berth.sock"),
            tcp: None,
            metadata: "local".into(),
            content_replicas: 1,
            registry_config: None,
        }
    }

    #[test]
    fn creates_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path());
        run(&options, &[options.state.join("content.sock")]).unwrap();
        assert!(options.root.is_dir() && options.state.is_dir() && dir.path().join("run").is_dir());
        assert_eq!(std::fs::read_dir(&options.root).unwrap().count(), 0, "the write check cleans up");
    }

    #[test]
    fn a_root_that_is_a_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options(dir.path());
        options.root = dir.path().join("file");
        std::fs::write(&options.root, b"").unwrap();
        let err = run(&options, &[]).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("--root {}: exists and is not a directory;", options.root.display())),
            "{err}"
        );

        options.root = dir.path().join("file/below");
        let err = run(&options, &[]).unwrap_err().to_string();
        assert!(err.contains("cannot create it") && err.contains("--root it can write to"), "{err}");
    }

    #[test]
    fn a_read_only_root_is_not_writable() {
        if nix::unistd::geteuid().is_root() {
            // Root writes through permission bits; the file cases above cover it.
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path());
        std::fs::create_dir(&options.root).unwrap();
        std::fs::set_permissions(&options.root, std::fs::Permissions::from_mode(0o500)).unwrap();
        let err = run(&options, &[]).unwrap_err().to_string();
        assert!(err.contains("not writable"), "{err}");
    }

    #[test]
    fn a_live_gateway_socket_is_refused_and_a_stale_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path());
        std::fs::create_dir_all(options.address.parent().unwrap()).unwrap();
        let live = UnixListener::bind(&options.address).unwrap();
        let err = run(&options, &[]).unwrap_err();
        assert!(matches!(err, PreflightError::AddressInUse(_)), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "another server is listening at {}; stop it or choose another --address",
                options.address.display()
            )
        );

        drop(live);
        assert!(options.address.exists(), "a stale socket stays behind");
        run(&options, &[]).unwrap();
        assert!(!options.address.exists());
    }

    #[test]
    fn a_live_service_socket_means_another_stack_uses_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path());
        std::fs::create_dir_all(&options.state).unwrap();
        let socket = options.state.join("content.sock");
        let _live = UnixListener::bind(&socket).unwrap();
        let err = run(&options, &[socket]).unwrap_err().to_string();
        assert!(err.contains("another berthd with --state"), "{err}");
    }

    #[test]
    fn a_file_where_a_socket_goes_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let options = options(dir.path());
        std::fs::create_dir_all(options.address.parent().unwrap()).unwrap();
        std::fs::write(&options.address, b"data").unwrap();
        assert!(matches!(run(&options, &[]), Err(PreflightError::NotASocket(_))));
        assert!(options.address.exists());
    }
}
