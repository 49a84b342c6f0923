//! Reaching a berth service (or the gateway) over a unix socket or TCP.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a connection attempt may take before the caller sees Unavailable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a service listens: `unix:///path`, `unix:/path`, a bare `/path`, or `http://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Unix(PathBuf),
    Tcp(String),
}

impl Address {
    /// Parses an address as written on a command line.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix://").or_else(|| text.strip_prefix("unix:")) {
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        if text.starts_with('/') || text.starts_with('.') {
            return Ok(Address::Unix(PathBuf::from(text)));
        }
        if let Some(rest) = text.strip_prefix("http://").or_else(|| text.strip_prefix("tcp://")) {
            return Ok(Address::Tcp(rest.to_string()));
        }
        if text.contains(':') {
            return Ok(Address::Tcp(text.to_string()));
        }
        Err(format!("address {text:?} is neither a unix socket path (/path or unix:///path) nor host:port"))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
            Address::Tcp(host) => write!(f, "http://{host}"),
        }
    }
}

/// A channel that connects on first use and reconnects after failures, so a peer
/// that restarts is picked up again without restarting the caller.
pub fn lazy_channel(address: &Address) -> Channel {
    match address {
        Address::Unix(path) => {
            let path = path.clone();
            // The URI is ignored for unix sockets; the connector below decides where to go.
            Endpoint::from_static("http://[::1]:50051")
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(4 << 20))
                .initial_connection_window_size(Some(8 << 20))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(&path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
        }
        Address::Tcp(host) => Endpoint::from_shared(format!("http://{host}"))
            .expect("host:port forms a valid URI")
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(8 << 20))
            .connect_lazy(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(Address::parse("/run/a.sock").unwrap(), Address::Unix("/run/a.sock".into()));
        assert_eq!(Address::parse("unix:///run/a.sock").unwrap(), Address::Unix("/run/a.sock".into()));
        assert_eq!(Address::parse("127.0.0.1:80").unwrap(), Address::Tcp("127.0.0.1:80".into()));
        assert!(Address::parse("nonsense").is_err());
    }
}
