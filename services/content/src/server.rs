//! Serving the content service on a unix socket, as every berth service does.

use std::future::Future;
use std::path::Path;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::service::ContentService;

/// HTTP/2 flow-control windows: large enough that 1 MiB writes flow without waiting for
/// window updates (defaults are 64 KiB).
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame we accept: fewer frames (and wakeups) per 1 MiB message from Rust
/// clients; grpc-go clients keep sending 16 KiB frames.
const MAX_FRAME: u32 = 1 << 20;

pub use berth_core::lifecycle::ServeError;

/// Binds the service's socket the way every berth server does (see [`berth_core::listen`]).
pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    Ok(berth_core::listen::bind(path).await?)
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
