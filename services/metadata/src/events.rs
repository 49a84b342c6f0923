//! The event broker: every service publishes here (Publish, Forward), clients Subscribe.
//!
//! Fan-out is a broadcast channel: a subscriber that falls more than [`BACKLOG`] events
//! behind misses the oldest ones (with a warning in the log) rather than slowing down
//! publishers — containerd's exchange drops for slow sinks too.

use std::pin::Pin;

use berth_api::containerd::services::events::v1::events_server::{Events, EventsServer};
use berth_api::containerd::services::events::v1::{Envelope, ForwardRequest, PublishRequest, SubscribeRequest};
use berth_core::filters::{Adaptor, AnyOf};
use futures::Stream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

/// Events a subscriber may fall behind by before it misses some.
pub const BACKLOG: usize = 4096;

/// Where events meet subscribers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Broker {
    sender: broadcast::Sender<Envelope>,
}

impl Default for Broker {
    fn default() -> Self {
        Broker { sender: broadcast::channel(BACKLOG).0 }
    }
}

impl Broker {
    /// Publishes an event raised by this service.
    pub fn publish<E: prost::Name>(&self, namespace: &str, topic: &str, event: &E) {
        self.send(Envelope {
            timestamp: Some(crate::time::now()),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(berth_peers::events::any_of(event)),
        });
    }

    fn send(&self, envelope: Envelope) {
        tracing::debug!(topic = envelope.topic, namespace = envelope.namespace, "event");
        // Err only means nobody is subscribed.
        let _ = self.sender.send(envelope);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.sender.subscribe()
    }
}

/// containerd's topic rule: `/` then one or more identifier components separated by `/`.
pub fn validate_topic(topic: &str) -> Result<(), Status> {
    if topic.is_empty() {
        return Err(Status::invalid_argument("topic: must not be empty"));
    }
    let Some(components) = topic.strip_prefix('/') else {
        return Err(Status::invalid_argument(format!("topic {topic:?}: must start with '/'")));
    };
    if components.is_empty() {
        return Err(Status::invalid_argument(format!("topic {topic:?}: must have at least one component")));
    }
    for component in components.split('/') {
        berth_core::identifiers::validate(&format!("topic {topic:?} component"), component)?;
    }
    Ok(())
}

/// Subscribe filters see `namespace`, `topic` and `event.type` (the event's type URL).
struct EnvelopeFields<'a>(&'a Envelope);

impl Adaptor for EnvelopeFields<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        let envelope = self.0;
        match fieldpath.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["namespace"] => Some(envelope.namespace.clone()).filter(|n| !n.is_empty()),
            ["topic"] => Some(envelope.topic.clone()).filter(|t| !t.is_empty()),
            ["event", "type"] | ["event", "type_url"] => envelope.event.as_ref().map(|e| e.type_url.clone()),
            _ => None,
        }
    }
}

pub struct EventsService {
    broker: Broker,
}

impl EventsService {
    pub fn new(broker: Broker) -> Self {
        EventsService { broker }
    }

    pub fn into_server(self) -> EventsServer<Self> {
        EventsServer::new(self)
    }
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        validate_topic(&request.topic)?;
        let event = request.event.ok_or_else(|| Status::invalid_argument("event must be set"))?;
        self.broker.send(Envelope {
            timestamp: Some(crate::time::now()),
            namespace,
            topic: request.topic,
            event: Some(event),
        });
        Ok(Response::new(()))
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let envelope = request.into_inner().envelope.ok_or_else(|| Status::invalid_argument("envelope must be set"))?;
        validate_topic(&envelope.topic)?;
        berth_core::identifiers::validate("envelope namespace", &envelope.namespace)?;
        if envelope.event.is_none() {
            return Err(Status::invalid_argument("envelope event must be set"));
        }
        self.broker.send(envelope);
        Ok(Response::new(()))
    }

    type SubscribeStream = EnvelopeStream;

    async fn subscribe(&self, request: Request<SubscribeRequest>) -> Result<Response<EnvelopeStream>, Status> {
        let filters = AnyOf::parse(&request.into_inner().filters)?;
        let mut receiver = self.broker.subscribe();
        let stream = async_stream(move |yield_| async move {
            loop {
                match receiver.recv().await {
                    Ok(envelope) if filters.matches(&EnvelopeFields(&envelope)) => {
                        if yield_.send(Ok(envelope)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "a subscriber fell behind and missed events");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a spawned task through a small channel; the task ends when the client goes.
fn async_stream<F, Fut>(body: F) -> EnvelopeStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Envelope, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(body(sender));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_containerd_rules() {
        for ok in ["/containers/create", "/a", "/tasks/exec-added"] {
            assert!(validate_topic(ok).is_ok(), "{ok}");
        }
        for bad in ["", "containers", "/", "/a//b", "/a/", "/a/b c"] {
            assert_eq!(validate_topic(bad).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn filters_see_namespace_topic_and_type() {
        let envelope = Envelope {
            timestamp: None,
            namespace: "team".into(),
            topic: "/containers/create".into(),
            event: Some(prost_types::Any { type_url: "containerd.events.ContainerCreate".into(), value: vec![] }),
        };
        for (filter, want) in [
            ("topic==\"/containers/create\"", true),
            ("topic~=\"^/containers/\"", true),
            ("topic~=\"^/tasks/\"", false),
            ("namespace==team", true),
            ("namespace==other", false),
            ("event.type==containerd.events.ContainerCreate", true),
        ] {
            let any = AnyOf::parse(&[filter.to_string()]).unwrap();
            assert_eq!(any.matches(&EnvelopeFields(&envelope)), want, "{filter}");
        }
    }
}
