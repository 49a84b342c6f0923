//! Namespaces spring into existence when something is first stored in them, as in containerd
//! (`ctr -n team content ingest` makes `team` appear in `ctr namespaces ls`). The metadata
//! service owns namespace records; other services tell it about a namespace once per process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use berth_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_api::containerd::services::namespaces::v1::{CreateNamespaceRequest, Namespace};

use crate::peers::{PeerChannel, request};

/// Remembers which namespaces the metadata service already knows about.
#[derive(Clone, Default)]
pub struct Namespaces {
    metadata: Option<PeerChannel>,
    known: Arc<Mutex<HashSet<String>>>,
}

impl Namespaces {
    /// Registers namespaces with the metadata service on `metadata`; with None, does nothing.
    pub fn new(metadata: Option<PeerChannel>) -> Namespaces {
        Namespaces { metadata, known: Arc::default() }
    }

    /// Makes sure `namespace` exists. Best effort: when the metadata service cannot be reached
    /// the caller's work goes on, and the next call tries again.
    pub async fn ensure(&self, namespace: &str) {
        let Some(channel) = &self.metadata else { return };
        if self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(namespace) {
            return;
        }
        let create = CreateNamespaceRequest {
            namespace: Some(Namespace { name: namespace.to_string(), labels: Default::default() }),
        };
        match NamespacesClient::new(channel.clone()).create(request(namespace, create)).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::AlreadyExists => {}
            Err(status) => {
                tracing::warn!(namespace, "could not register the namespace with metadata: {status}");
                return;
            }
        }
        self.known.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(namespace.to_string());
    }
}
