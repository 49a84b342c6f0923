//! The replicas of each service, which of them are live, and whose turn it is.
//!
//! A replica is live when its socket accepts connections. A background check probes every
//! replica; a call that cannot reach a replica marks it down at once, so the next calls skip it
//! without waiting for the next probe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use berth_core::connect::{Address, CONNECT_TIMEOUT, lazy_channel};
use tonic::transport::Channel;

/// How often replicas are probed; a restarted service is used again within this time.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// One replica of a service: where it listens and the (lazily connected) channel to it.
pub struct Replica {
    address: Address,
    channel: Channel,
    live: AtomicBool,
}

impl Replica {
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// A handle on the replica's connection (cheap: channels are shared).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// Records the replica's state, logging changes.
    fn set_live(&self, service: &str, live: bool, reason: &dyn std::fmt::Display) {
        if self.live.swap(live, Ordering::Relaxed) != live {
            if live {
                tracing::info!(service, address = %self.address, "replica is up");
            } else {
                tracing::warn!(service, address = %self.address, %reason, "replica is down");
            }
        }
    }
}

/// The replicas of one berth service, used round-robin.
pub struct Service {
    name: String,
    replicas: Vec<Replica>,
    next: AtomicUsize,
}

impl Service {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    pub fn any_live(&self) -> bool {
        self.replicas.iter().any(Replica::is_live)
    }

    /// The replicas to try for one call, in order: the live ones, starting with the one whose
    /// turn it is. When none is known live, the next one in turn: it may have come back since
    /// the last probe, and if it has not the call fails at once.
    pub fn candidates(&self) -> Vec<&Replica> {
        let count = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let live: Vec<&Replica> =
            (0..count).map(|i| &self.replicas[(start + i) % count]).filter(|r| r.is_live()).collect();
        if live.is_empty() { vec![&self.replicas[start % count]] } else { live }
    }

    /// Marks a replica down after a call could not reach it.
    pub fn failed(&self, replica: &Replica, error: &dyn std::fmt::Display) {
        replica.set_live(&self.name, false, error);
    }
}

/// Every configured service by name.
#[derive(Clone, Default)]
pub struct Backends {
    services: Arc<BTreeMap<String, Arc<Service>>>,
}

impl Backends {
    /// Builds the table from `name -> addresses`. Replicas count as live until probed; services
    /// without addresses are left out. Must be called within a tokio runtime.
    pub fn new(config: BTreeMap<String, Vec<Address>>) -> Self {
        let services = config
            .into_iter()
            .filter(|(_, addresses)| !addresses.is_empty())
            .map(|(name, addresses)| {
                let replicas = addresses
                    .into_iter()
                    .map(|address| Replica { channel: lazy_channel(&address), address, live: AtomicBool::new(true) })
                    .collect();
                let service = Service { name: name.clone(), replicas, next: AtomicUsize::new(0) };
                (name, Arc::new(service))
            })
            .collect();
        Backends { services: Arc::new(services) }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// Probes every replica once, all at the same time.
    pub async fn probe(&self) {
        let probes = self.services.values().flat_map(|service| {
            service.replicas.iter().map(move |replica| async move {
                let result = probe(&replica.address).await;
                let reason = match &result {
                    Ok(()) => String::new(),
                    Err(err) => err.to_string(),
                };
                replica.set_live(&service.name, result.is_ok(), &reason);
            })
        });
        futures::future::join_all(probes).await;
    }

    /// Probes forever in the background; abort the handle to stop.
    pub fn spawn_health_checks(&self) -> tokio::task::JoinHandle<()> {
        let backends = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_INTERVAL).await;
                backends.probe().await;
            }
        })
    }
}

/// Whether `address` accepts a connection within [`CONNECT_TIMEOUT`].
async fn probe(address: &Address) -> std::io::Result<()> {
    let attempt = async {
        match address {
            Address::Unix(path) => tokio::net::UnixStream::connect(path).await.map(drop),
            Address::Tcp(host) => tokio::net::TcpStream::connect(host.as_str()).await.map(drop),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(addresses: &[&str]) -> Backends {
        let addresses = addresses.iter().map(|a| Address::parse(a).unwrap()).collect();
        Backends::new(BTreeMap::from([("content".to_string(), addresses)]))
    }

    #[tokio::test]
    async fn candidates_rotate_over_live_replicas() {
        let backends = backends(&["/a.sock", "/b.sock", "/c.sock"]);
        let service = backends.get("content").unwrap();
        let firsts: Vec<String> = (0..6).map(|_| service.candidates()[0].address().to_string()).collect::<Vec<_>>();
        assert_eq!(firsts[..3], ["unix:///a.sock", "unix:///b.sock", "unix:///c.sock"]);
        assert_eq!(firsts[..3], firsts[3..]);

        service.failed(&service.replicas()[1], &"test");
        for _ in 0..4 {
            let candidates = service.candidates();
            assert_eq!(candidates.len(), 2);
            assert!(candidates.iter().all(|r| r.address().to_string() != "unix:///b.sock"));
        }
    }

    #[tokio::test]
    async fn with_no_live_replica_the_next_in_turn_is_tried() {
        let backends = backends(&["/a.sock", "/b.sock"]);
        let service = backends.get("content").unwrap();
        for replica in service.replicas() {
            service.failed(replica, &"test");
        }
        assert!(!service.any_live());
        assert_eq!(service.candidates().len(), 1);
    }

    #[tokio::test]
    async fn probing_marks_missing_sockets_down_and_listening_ones_up() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path().join("up.sock");
        let _listener = tokio::net::UnixListener::bind(&up).unwrap();
        let down = dir.path().join("down.sock");
        let backends = backends(&[up.to_str().unwrap(), down.to_str().unwrap()]);
        backends.probe().await;
        let service = backends.get("content").unwrap();
        assert!(service.replicas()[0].is_live());
        assert!(!service.replicas()[1].is_live());
    }

    #[test]
    fn services_without_addresses_are_left_out() {
        let backends = Backends::new(BTreeMap::from([("content".to_string(), vec![])]));
        assert!(backends.get("content").is_none());
    }
}
