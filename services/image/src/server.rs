//! Serving the image service on a unix socket, as every berth service does.

use std::future::Future;
use std::path::Path;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::images::ImageStore;
use crate::pull::Puller;
use crate::service::ImagesService;
use crate::transfer::{Spool, TransferService};

pub use berth_core::lifecycle::ServeError;

pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    Ok(berth_core::listen::bind(path).await?)
}

/// Serves containerd's Images and berth's Transfer until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    store: ImageStore,
    puller: Puller,
    spool: Spool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .layer(berth_telemetry::context::ServerLayer::new("image"))
        .add_service(ImagesService::new(store).into_server())
        .add_service(TransferService::new(puller).with_spool(spool).into_server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
