//! Publishing containerd's events to the metadata service, which fans them out to subscribers.
//!
//! Publishing never blocks or fails the call that caused the event: envelopes go into a
//! bounded queue that one background task forwards in order. While the metadata service is
//! unreachable the task retries each envelope for a while, then drops it with a warning —
//! events are notifications (as in containerd), never the record of truth.

use std::time::{Duration, SystemTime};

use berth_api::containerd::services::events::v1::events_client::EventsClient;
use berth_api::containerd::services::events::v1::{Envelope, ForwardRequest};
use tokio::sync::mpsc;

use crate::peers::{PeerChannel, request};

/// Envelopes waiting to be forwarded before new ones are dropped.
const QUEUE: usize = 4096;
/// How long one envelope is retried while the metadata service is unreachable.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// Wraps an event as containerd does: the Any's type URL is the message's full name.
pub fn any_of<E: prost::Name>(event: &E) -> prost_types::Any {
    prost_types::Any { type_url: E::full_name(), value: event.encode_to_vec() }
}

/// A handle to publish events; cheap to clone. A disabled one (no metadata peer) drops them.
#[derive(Clone, Debug)]
pub struct Publisher {
    queue: Option<mpsc::Sender<Envelope>>,
}

impl Publisher {
    /// Drops every event: for a service run without a metadata peer.
    pub fn disabled() -> Publisher {
        Publisher { queue: None }
    }

    /// Forwards events to the metadata service on `channel`. Must run inside a tokio runtime.
    pub fn new(channel: PeerChannel) -> Publisher {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(forward(EventsClient::new(channel), pending));
        Publisher { queue: Some(queue) }
    }

    /// Queues `event` under `topic` (e.g. `/content/delete`) in `namespace`.
    pub fn publish<E: prost::Name>(&self, namespace: &str, topic: &str, event: &E) {
        let Some(queue) = &self.queue else { return };
        let envelope = Envelope {
            timestamp: Some(SystemTime::now().into()),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(any_of(event)),
        };
        if let Err(err) = queue.try_send(envelope) {
            tracing::warn!(topic, namespace, "event dropped: {err}");
        }
    }
}

async fn forward(mut client: EventsClient<PeerChannel>, mut pending: mpsc::Receiver<Envelope>) {
    while let Some(envelope) = pending.recv().await {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            let call = request(&envelope.namespace, ForwardRequest { envelope: Some(envelope.clone()) });
            match client.forward(call).await {
                Ok(_) => break,
                Err(status) if status.code() == tonic::Code::Unavailable && started.elapsed() < GIVE_UP_AFTER => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(status) => {
                    tracing::warn!(topic = envelope.topic, namespace = envelope.namespace, "event dropped: {status}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::containerd::events::ContentDelete;

    #[test]
    fn events_are_typed_by_their_full_name() {
        let any = any_of(&ContentDelete { digest: "sha256:00".into() });
        assert_eq!(any.type_url, "containerd.events.ContentDelete");
        assert_eq!(<ContentDelete as prost::Message>::decode(any.value.as_slice()).unwrap().digest, "sha256:00");
    }

    #[tokio::test]
    async fn a_disabled_publisher_drops_quietly() {
        Publisher::disabled().publish("default", "/content/delete", &ContentDelete::default());
    }
}
