//! Serving the Tasks API on a unix socket.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::service::TasksService;
use crate::tasks::Tasks;

pub use berth_core::lifecycle::ServeError;

pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    Ok(berth_core::listen::bind(path).await?)
}

/// Serves containerd.services.tasks.v1.Tasks until `shutdown` resolves. Tasks keep running.
pub async fn serve(
    listener: UnixListener,
    tasks: Arc<Tasks>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .layer(berth_telemetry::context::ServerLayer::new("execution"))
        .add_service(TasksService { tasks }.into_server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
