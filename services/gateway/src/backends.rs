//! The replicas of each service, which of them are live, and whose turn it is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use berth_core::connect::{Address, lazy_channel};
use tonic::transport::Channel;

/// How often replicas are probed; a restarted service is used again within this time.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);

/// One replica of a service.
pub struct Replica {
    pub address: Address,
    pub channel: Channel,
    live: AtomicBool,
}

impl Replica {
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }
}

/// The replicas of one service, used round-robin.
pub struct Service {
    pub replicas: Vec<Replica>,
    next: AtomicUsize,
}

impl Service {
    /// The next live replica, or any replica when none is known live (it may just have
    /// come back; the call then fails fast if it has not).
    pub fn pick(&self) -> &Replica {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.replicas.len();
        (0..count)
            .map(|i| &self.replicas[(start + i) % count])
            .find(|r| r.is_live())
            .unwrap_or(&self.replicas[start % count])
    }

    pub fn any_live(&self) -> bool {
        self.replicas.iter().any(Replica::is_live)
    }
}

/// Every configured service by name.
#[derive(Clone, Default)]
pub struct Backends {
    services: Arc<BTreeMap<String, Service>>,
}

impl Backends {
    /// Builds the table from `name -> addresses`; replicas start as live until probed.
    pub fn new(config: BTreeMap<String, Vec<Address>>) -> Self {
        let services = config
            .into_iter()
            .map(|(name, addresses)| {
                let replicas = addresses
                    .into_iter()
                    .map(|address| Replica { channel: lazy_channel(&address), address, live: AtomicBool::new(true) })
                    .collect();
                (name, Service { replicas, next: AtomicUsize::new(0) })
            })
            .collect();
        Backends { services: Arc::new(services) }
    }

    pub fn get(&self, name: &str) -> Option<&Service> {
        self.services.get(name).filter(|s| !s.replicas.is_empty())
    }

    /// Probes every replica once: a replica is live when its socket accepts a connection.
    pub async fn probe(&self) {
        for service in self.services.values() {
            for replica in &service.replicas {
                let live = probe(&replica.address).await;
                if live != replica.live.swap(live, Ordering::Relaxed) {
                    if live {
                        tracing::info!(address = %replica.address, "backend is up");
                    } else {
                        tracing::warn!(address = %replica.address, "backend is down");
                    }
                }
            }
        }
    }

    /// Probes forever in the background.
    pub fn spawn_health_checks(&self) -> tokio::task::JoinHandle<()> {
        let backends = self.clone();
        tokio::spawn(async move {
            loop {
                backends.probe().await;
                tokio::time::sleep(HEALTH_INTERVAL).await;
            }
        })
    }
}

async fn probe(address: &Address) -> bool {
    let attempt = async {
        match address {
            Address::Unix(path) => tokio::net::UnixStream::connect(path).await.is_ok(),
            Address::Tcp(host) => tokio::net::TcpStream::connect(host.as_str()).await.is_ok(),
        }
    };
    tokio::time::timeout(berth_core::connect::CONNECT_TIMEOUT, attempt).await.unwrap_or(false)
}
