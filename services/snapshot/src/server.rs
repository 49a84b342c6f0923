//! Serving the snapshot service on a unix socket, as every berth service does.

use std::future::Future;
use std::path::Path;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::diff::DiffService;
use crate::service::SnapshotsService;

pub use berth_core::lifecycle::ServeError;

/// Binds the service's socket the way every berth server does (see [`berth_core::listen`]).
pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    Ok(berth_core::listen::bind(path).await?)
}

/// Serves `snapshots` and `diff` on `listener` until `shutdown` resolves, then drains open calls.
pub async fn serve(
    listener: UnixListener,
    snapshots: SnapshotsService,
    diff: DiffService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .layer(berth_telemetry::context::ServerLayer::new("snapshot"))
        .add_service(snapshots.into_server())
        .add_service(diff.into_server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
