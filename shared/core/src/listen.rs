//! Binding the unix socket a berth server listens on, the same way for every service.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};

/// Socket file mode: owner and group (the admin group of the host) may connect.
pub const SOCKET_MODE: u32 = 0o660;

#[derive(Debug, Error)]
pub enum ListenError {
    #[error("another server is listening at {0}; stop it or choose another address")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ListenError {
    move |source| ListenError::Io { context, source }
}

/// Binds `path` with mode [`SOCKET_MODE`]. A stale socket file (nobody answering) is removed
/// first; a live one is left alone and reported as [`ListenError::InUse`].
pub async fn bind(path: &Path) -> Result<UnixListener, ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ListenError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io(format!("remove stale socket {}", path.display())))?;
        }
        Ok(_) => return Err(ListenError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("stat {}", path.display()))(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    }
    // Bind under a temporary name, set the mode, then rename into place: the socket is never
    // reachable with the umask's mode. Fall back to binding in place when the temporary name
    // would be too long for a socket address.
    let mut temp = path.as_os_str().to_owned();
    temp.push(format!(".tmp-{}", std::process::id()));
    let temp = PathBuf::from(temp);
    let _ = std::fs::remove_file(&temp);
    let (listener, bound) = match UnixListener::bind(&temp) {
        Ok(listener) => (listener, temp.as_path()),
        Err(_) => (UnixListener::bind(path).map_err(io(format!("bind {}", path.display())))?, path),
    };
    std::fs::set_permissions(bound, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(io(format!("chmod {}", bound.display())))?;
    if bound != path {
        std::fs::rename(bound, path).map_err(io(format!("rename {} to {}", bound.display(), path.display())))?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_replaces_stale_sockets_and_refuses_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/service.sock");
        let live = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        assert!(matches!(bind(&path).await, Err(ListenError::InUse(_))));
        drop(live);
        // The file stays behind, but nobody answers: stale.
        assert!(path.exists());
        let _again = bind(&path).await.unwrap();

        let regular = dir.path().join("file");
        std::fs::write(&regular, b"x").unwrap();
        assert!(matches!(bind(&regular).await, Err(ListenError::NotASocket(_))));
        assert!(regular.exists());
    }
}
