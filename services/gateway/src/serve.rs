//! Serving the gateway on its unix socket (and optionally TCP).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;

use berth_api::containerd::services::introspection::v1::introspection_server::IntrospectionServer;
use berth_api::containerd::services::version::v1::version_server::VersionServer;
use berth_core::connect::Address;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

use crate::backends::Backends;
use crate::forward::Forward;
use crate::local::{IntrospectionService, VersionService};

/// HTTP/2 windows and frames large enough that bulk content streams are not throttled by
/// flow control (the defaults are 64 KiB windows and 16 KiB frames).
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
const MAX_FRAME: u32 = 1 << 20;
/// How long open calls may run on after a stop was asked for.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// What the gateway serves and where.
#[derive(Debug, Clone)]
pub struct Config {
    pub address: PathBuf,
    pub tcp: Option<String>,
    /// berth service name -> replica addresses.
    pub backends: BTreeMap<String, Vec<Address>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] berth_core::listen::ListenError),
    #[error("listen on tcp {address}: {source}")]
    Tcp { address: String, source: std::io::Error },
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn routes(backends: &Backends) -> tonic::service::Routes {
    let local = tonic::service::Routes::new(VersionServer::new(VersionService))
        .add_service(IntrospectionServer::new(IntrospectionService::new(backends.clone())));
    let router = local.into_axum_router().fallback_service(Forward::new(backends.clone()));
    tonic::service::Routes::from(router)
}

fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .tcp_nodelay(true)
}

/// Serves until `shutdown` resolves; removes the socket afterwards.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
    let backends = Backends::new(config.backends.clone());
    backends.probe().await;
    let health = backends.spawn_health_checks();
    let listener = berth_core::listen::bind(&config.address).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = move |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };

    let tcp = match &config.tcp {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| ServeError::Tcp { address: address.clone(), source })?;
            tracing::info!(%address, "gateway listening on tcp");
            let serving = server()
                .add_routes(routes(&backends))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), wait(stopped.clone()));
            Some(tokio::spawn(serving))
        }
        None => None,
    };
    tracing::info!(address = %config.address.display(), backends = ?config.backends.keys().collect::<Vec<_>>(), "gateway serving");
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let serving = server()
        .add_routes(routes(&backends))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), wait(stopped.clone()));
    // Long-lived streams (event subscriptions) would hold a graceful stop open forever.
    let drained = async move {
        wait(stopped).await;
        tokio::time::sleep(DRAIN_TIMEOUT).await;
        tracing::warn!("open calls did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
    };
    let result = tokio::select! {
        result = serving => result,
        () = drained => Ok(()),
    };
    health.abort();
    if let Some(tcp) = tcp {
        tcp.abort();
    }
    let _ = std::fs::remove_file(&config.address);
    Ok(result?)
}
