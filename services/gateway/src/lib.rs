//! The gateway: one socket in front of every berth service.
//!
//! It routes each call by its gRPC service path to the service serving it (spreading calls
//! over live replicas), streams both ways without buffering, and answers Version and
//! Introspection itself. It holds no service logic.

pub mod backends;
pub mod dispatch;
pub mod forward;
pub mod local;
pub mod routes;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth_core::connect::Address;
use berth_core::listen::ListenError;
use thiserror::Error;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;

pub use backends::Backends;

/// HTTP/2 flow-control windows: large enough that 1 MiB content writes flow without waiting
/// for window updates (the defaults are 64 KiB).
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame accepted: fewer frames (and wakeups) per message from clients that
/// honour it; grpc-go clients (ctr) keep sending 16 KiB frames.
const MAX_FRAME: u32 = 1 << 20;
/// How long open calls may take to finish once shutdown is asked for. Events subscriptions
/// never finish by themselves, so this bounds every stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// What the gateway serves and where it sends calls.
#[derive(Clone, Debug)]
pub struct Config {
    /// The unix socket to serve on.
    pub address: PathBuf,
    /// Also serve on this TCP `host:port`.
    pub tcp: Option<String>,
    /// Replicas of each berth service, by service name (see [`routes::SERVICES`]).
    pub backends: BTreeMap<String, Vec<Address>>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("--backend {0:?}: expected NAME=ADDR[,ADDR...]")]
    Syntax(String),
    #[error("--backend {spec:?}: unknown service {name:?}; berth's services are {known}")]
    UnknownService { spec: String, name: String, known: String },
    #[error("--backend {spec:?}: {problem}")]
    Address { spec: String, problem: String },
}

/// Parses one `--backend NAME=ADDR[,ADDR...]` argument.
pub fn parse_backend(spec: &str) -> Result<(String, Vec<Address>), ConfigError> {
    let (name, addresses) = spec.split_once('=').ok_or_else(|| ConfigError::Syntax(spec.to_string()))?;
    if !routes::is_known(name) {
        return Err(ConfigError::UnknownService {
            spec: spec.to_string(),
            name: name.to_string(),
            known: routes::names().collect::<Vec<_>>().join(", "),
        });
    }
    let addresses = addresses
        .split(',')
        .map(|a| Address::parse(a).map_err(|problem| ConfigError::Address { spec: spec.to_string(), problem }))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), addresses))
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("listen on tcp {address}: {source}")]
    Tcp {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the gateway until `shutdown` resolves, then lets open calls finish (for a few
/// seconds at most) and removes the socket.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
    let listener = berth_core::listen::bind(&config.address).await?;
    let tcp = match &config.tcp {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address.as_str())
                .await
                .map_err(|source| ServeError::Tcp { address: address.clone(), source })?;
            Some(TcpIncoming::from(listener).with_nodelay(Some(true)))
        }
        None => None,
    };

    let backends = Backends::new(config.backends.clone());
    // Know who is up before answering the first Plugins call.
    backends.probe().await;
    for (name, addresses) in &config.backends {
        let live = backends.get(name).map_or(0, |s| s.replicas().iter().filter(|r| r.is_live()).count());
        let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        tracing::info!(service = %name, replicas = %addresses.join(","), live, "backend");
    }
    let health = backends.spawn_health_checks();
    let introspection = Arc::new(local::Introspection::new(backends.clone(), local::random_uuid()));
    let dispatch = dispatch::Dispatch::new(introspection, forward::Forward::new(backends));

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let signal = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let on_unix = server().serve_with_incoming_shutdown(dispatch.clone(), UnixListenerStream::new(listener), signal());
    let on_tcp = async {
        match tcp {
            Some(incoming) => server().serve_with_incoming_shutdown(dispatch.clone(), incoming, signal()).await,
            None => Ok(()),
        }
    };
    tracing::info!(address = %config.address.display(), tcp = config.tcp.as_deref().unwrap_or("-"), "berth-gateway serving");

    let serving = async { tokio::try_join!(on_unix, on_tcp).map(drop) };
    tokio::pin!(serving);
    let result = tokio::select! {
        result = &mut serving => result,
        () = shutdown => {
            let _ = stop.send(true);
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut serving).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("open calls did not finish within {DRAIN_TIMEOUT:?}; stopping anyway");
                    Ok(())
                }
            }
        }
    };
    health.abort();
    if let Err(err) = std::fs::remove_file(&config.address) {
        tracing::warn!(error = %err, socket = %config.address.display(), "could not remove the socket");
    }
    result.map_err(ServeError::from)
}

fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backend_arguments() {
        let (name, addresses) = parse_backend("content=/run/a.sock,unix:///run/b.sock").unwrap();
        assert_eq!(name, "content");
        assert_eq!(addresses, [Address::Unix("/run/a.sock".into()), Address::Unix("/run/b.sock".into())]);
        let (_, addresses) = parse_backend("image=127.0.0.1:7000").unwrap();
        assert_eq!(addresses, [Address::Tcp("127.0.0.1:7000".into())]);

        assert!(matches!(parse_backend("content"), Err(ConfigError::Syntax(_))));
        let err = parse_backend("gateway=/a.sock").unwrap_err();
        assert!(err.to_string().contains("unknown service \"gateway\""), "{err}");
        assert!(matches!(parse_backend("content=nonsense"), Err(ConfigError::Address { .. })));
        assert!(matches!(parse_backend("content="), Err(ConfigError::Address { .. })));
    }
}
