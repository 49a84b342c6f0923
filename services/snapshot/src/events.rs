//! Where snapshot events go: containerd publishes `/snapshot/prepare`, `/snapshot/commit`
//! and `/snapshot/remove` after each successful call. The service takes any [`Publisher`]
//! ([`ToMetadata`] in the binary); without one events are dropped.

/// An event as containerd's `containerd.events.Snapshot*` messages carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `containerd.events.SnapshotPrepare` (not sent for View, as in containerd).
    Prepare { key: String, parent: String, snapshotter: String },
    /// `containerd.events.SnapshotCommit`.
    Commit { key: String, name: String, snapshotter: String },
    /// `containerd.events.SnapshotRemove`.
    Remove { key: String, snapshotter: String },
}

impl Event {
    /// The topic containerd publishes it under.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Prepare { .. } => "/snapshot/prepare",
            Event::Commit { .. } => "/snapshot/commit",
            Event::Remove { .. } => "/snapshot/remove",
        }
    }
}

/// Receives the events of successful calls. Called on the request path, so it must not block:
/// queue the event and send it elsewhere.
pub trait Publisher: Send + Sync + 'static {
    fn publish(&self, namespace: &str, event: Event);
}

/// Sends events to the metadata service (berth-peers' publisher), as containerd's messages.
pub struct ToMetadata(pub berth_peers::Publisher);

impl Publisher for ToMetadata {
    fn publish(&self, namespace: &str, event: Event) {
        use berth_api::containerd::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
        let topic = event.topic();
        match event {
            Event::Prepare { key, parent, snapshotter } => {
                self.0.publish(namespace, topic, &SnapshotPrepare { key, parent, snapshotter })
            }
            Event::Commit { key, name, snapshotter } => {
                self.0.publish(namespace, topic, &SnapshotCommit { key, name, snapshotter })
            }
            Event::Remove { key, snapshotter } => {
                self.0.publish(namespace, topic, &SnapshotRemove { key, snapshotter })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_containerds() {
        let (key, snapshotter) = ("k".to_string(), "overlayfs".to_string());
        assert_eq!(
            Event::Prepare { key: key.clone(), parent: String::new(), snapshotter: snapshotter.clone() }.topic(),
            "/snapshot/prepare"
        );
        assert_eq!(
            Event::Commit { key: key.clone(), name: "n".into(), snapshotter: snapshotter.clone() }.topic(),
            "/snapshot/commit"
        );
        assert_eq!(Event::Remove { key, snapshotter }.topic(), "/snapshot/remove");
    }
}
