//! Events a shim publishes itself (an OOM kill is seen only here): containerd's ttrpc Events
//! API at the address in `TTRPC_ADDRESS`, which berth-execution serves, as containerd does.
//! Best effort: while nobody answers, an event is retried for a while, then dropped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_api::containerd::services::events::v1::Envelope;

use crate::protocol::EVENTS_SERVICE;
use crate::protocol::events::ForwardRequest;
use crate::ttrpc::Client;

const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// Publishes events of one namespace; without an address, drops them.
#[derive(Clone, Debug)]
pub struct Publisher {
    address: Option<PathBuf>,
    namespace: String,
}

impl Publisher {
    /// `address` as shims get it: a socket path, or `unix://` and a path.
    pub fn new(address: Option<String>, namespace: String) -> Publisher {
        let address = address.filter(|a| !a.is_empty()).map(|a| PathBuf::from(a.strip_prefix("unix://").unwrap_or(&a)));
        Publisher { address, namespace }
    }

    /// Sends `event` under `topic` in the background.
    pub fn publish<E: prost::Name>(&self, topic: &str, event: &E) {
        let Some(address) = self.address.clone() else { return };
        let request = ForwardRequest {
            envelope: Some(Envelope {
                timestamp: Some(std::time::SystemTime::now().into()),
                namespace: self.namespace.clone(),
                topic: topic.to_string(),
                event: Some(berth_peers::events::any_of(event)),
            }),
        };
        let topic = topic.to_string();
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                let sent = match Client::connect(&address, EVENTS_SERVICE).await {
                    Ok(client) => client.call::<_, ()>("Forward", &request, Some(Duration::from_secs(5))).await,
                    Err(e) => Err(tonic::Status::unavailable(e.to_string())),
                };
                match sent {
                    Ok(()) => return,
                    Err(status) if started.elapsed() < GIVE_UP_AFTER => {
                        tracing::debug!(topic, "publishing: {status}; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(status) => {
                        tracing::warn!(topic, "event dropped: {status}");
                        return;
                    }
                }
            }
        });
    }
}
