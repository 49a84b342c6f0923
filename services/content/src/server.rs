//! Serving the content service on a unix socket, as every berth service does.

use std::future::Future;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;

use crate::service::ContentService;

/// Socket file mode: owner and group (the admin group of the host) may connect.
pub const SOCKET_MODE: u32 = 0o660;
/// HTTP/2 flow-control windows: large enough that 1 MiB writes flow without waiting for
/// window updates (defaults are 64 KiB).
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame we accept: fewer frames (and wakeups) per 1 MiB message from Rust
/// clients; grpc-go clients keep sending 16 KiB frames.
const MAX_FRAME: u32 = 1 << 20;

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("a server is already listening on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ServeError {
    move |source| ServeError::Io { context, source }
}

/// Binds `path` with mode [`SOCKET_MODE`]. A stale socket file (nobody answering) is removed
/// first; a live one is left alone and reported as [`ServeError::InUse`].
pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ServeError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io(format!("remove stale socket {}", path.display())))?;
        }
        Ok(_) => return Err(ServeError::NotASocket(path.to_path_buf())),
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

/// Serves `service` on `listener` until `shutdown` resolves, then drains open calls.
pub async fn serve(
    listener: UnixListener,
    service: ContentService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .layer(berth_telemetry::context::ServerLayer::new("content"))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_replaces_stale_sockets_and_refuses_live_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/content.sock");
        let live = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, SOCKET_MODE);
        assert!(matches!(bind(&path).await, Err(ServeError::InUse(_))));
        drop(live);
        // The file stays behind, but nobody answers: stale.
        assert!(path.exists());
        let _again = bind(&path).await.unwrap();

        let regular = dir.path().join("file");
        std::fs::write(&regular, b"x").unwrap();
        assert!(matches!(bind(&regular).await, Err(ServeError::NotASocket(_))));
        assert!(regular.exists());
    }
}
