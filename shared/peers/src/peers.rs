//! The address book: which peer service listens where, and a channel to each.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use berth_core::connect::{Address, lazy_channel};
use berth_telemetry::context::Propagate;
use thiserror::Error;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// A channel to a peer that carries the current trace context on every call.
pub type PeerChannel = Propagate<Channel>;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("--peer {0:?}: expected NAME=ADDRESS[,ADDRESS...], e.g. content=/run/berth/content.sock")]
    Syntax(String),
    #[error("--peer {spec:?}: {problem}")]
    Address { spec: String, problem: String },
}

/// One peer service, possibly several replicas of it.
struct Peer {
    replicas: Vec<PeerChannel>,
    next: AtomicUsize,
}

/// Every peer a service was told about. Channels connect on first use and reconnect after
/// failures, so peers may start later or restart.
#[derive(Clone, Default)]
pub struct Peers {
    by_name: Arc<HashMap<String, Peer>>,
}

impl Peers {
    /// Reads `NAME=ADDR[,ADDR...]` specs as given on the command line. Must run inside a tokio
    /// runtime (channels are created lazily but need one).
    pub fn parse(specs: &[String]) -> Result<Peers, PeerError> {
        let mut by_name = HashMap::new();
        for spec in specs {
            let (name, addresses) = spec.split_once('=').ok_or_else(|| PeerError::Syntax(spec.clone()))?;
            if name.is_empty() || addresses.is_empty() {
                return Err(PeerError::Syntax(spec.clone()));
            }
            let replicas = addresses
                .split(',')
                .map(|address| {
                    Address::parse(address)
                        .map(|address| Propagate::new(lazy_channel(&address)))
                        .map_err(|problem| PeerError::Address { spec: spec.clone(), problem })
                })
                .collect::<Result<Vec<_>, _>>()?;
            by_name.insert(name.to_string(), Peer { replicas, next: AtomicUsize::new(0) });
        }
        Ok(Peers { by_name: Arc::new(by_name) })
    }

    /// A channel to `name` (replicas taken in turn), or None when the service was not given one.
    pub fn channel(&self, name: &str) -> Option<PeerChannel> {
        let peer = self.by_name.get(name)?;
        let turn = peer.next.fetch_add(1, Ordering::Relaxed);
        peer.replicas.get(turn % peer.replicas.len()).cloned()
    }

    /// Every replica of `name` (empty when unknown), for calls that must reach all of them.
    pub fn replicas(&self, name: &str) -> Vec<PeerChannel> {
        self.by_name.get(name).map(|peer| peer.replicas.clone()).unwrap_or_default()
    }

    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

/// A request to a peer in `namespace`, the way containerd clients send them.
pub fn request<T>(namespace: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // Namespaces passed here were validated as identifiers, so they are valid metadata.
    if let Ok(value) = MetadataValue::try_from(namespace) {
        request.metadata_mut().insert(berth_core::namespace::METADATA_KEY, value);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_peers_and_takes_replicas_in_turn() {
        let peers = Peers::parse(&[
            "content=/run/berth/content-0.sock,/run/berth/content-1.sock".to_string(),
            "metadata=unix:///run/berth/metadata.sock".to_string(),
        ])
        .unwrap();
        assert!(peers.has("content") && peers.has("metadata") && !peers.has("image"));
        assert_eq!(peers.replicas("content").len(), 2);
        assert!(peers.channel("image").is_none());
        assert!(peers.channel("content").is_some());
    }

    #[tokio::test]
    async fn refuses_malformed_specs() {
        for spec in ["content", "=x", "content=", "content=nowhere"] {
            assert!(Peers::parse(&[spec.to_string()]).is_err(), "{spec}");
        }
    }

    #[test]
    fn requests_carry_the_namespace() {
        let request = request("team-a", ());
        assert_eq!(request.metadata().get(berth_core::namespace::METADATA_KEY).unwrap(), "team-a");
    }
}
