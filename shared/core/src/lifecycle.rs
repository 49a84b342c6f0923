//! How every service binary runs and stops: serve until SIGTERM or SIGINT, give open calls a
//! moment to finish, then remove the socket so the next start finds the path free.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};

/// What serving a service's gRPC can fail with.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] crate::listen::ListenError),
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("installing the signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Resolves when the service should stop; passed to the server's graceful shutdown.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs `serve` (given the future that says when to stop) until it ends or a signal arrives,
/// then waits up to `drain` for open calls, and removes `socket`.
pub async fn run_until_signal<F, Fut>(name: &str, socket: &Path, drain: Duration, serve: F) -> Result<(), ServeError>
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), ServeError>>,
{
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let shutdown: Shutdown = Box::pin(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let serving = serve(shutdown);
    tokio::pin!(serving);
    let result = tokio::select! {
        result = &mut serving => result,
        _ = async {
            tokio::select! {
                _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
                _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
            }
            let _ = stop.send(true);
            tokio::time::sleep(drain).await;
        } => {
            // Streams such as event subscriptions never end on their own.
            tracing::info!("open calls cut after {drain:?}");
            Ok(())
        }
    };
    if let Err(e) = std::fs::remove_file(socket) {
        tracing::warn!(error = %e, socket = %socket.display(), "could not remove the socket");
    }
    result?;
    tracing::info!("{name} stopped");
    Ok(())
}
