//! The metadata service as one value, and serving it on a unix socket.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_peers::Peers;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::containers::{ContainerStore, ContainersService};
use crate::events::{Broker, EventsService};
use crate::gc::{Collector, GcService, Trigger};
use crate::inventory::Inventory;
use crate::leases::{LeaseStore, LeasesService};
use crate::namespaces::{NamespaceStore, NamespacesService};
use crate::records::Records;

/// Every part of the service, shared by the gRPC adapters. Cheap to clone.
#[derive(Clone)]
pub struct Metadata {
    pub namespaces: Arc<NamespaceStore>,
    pub containers: Arc<ContainerStore>,
    pub leases: Arc<LeaseStore>,
    pub broker: Broker,
    pub gc: Trigger,
}

impl Metadata {
    /// Builds the service on `records` and starts its garbage collector (collecting every
    /// `gc_interval`, and whenever something is deleted). Must run inside a tokio runtime.
    pub fn start(records: Records, peers: Peers, gc_interval: Duration) -> Metadata {
        let broker = Broker::default();
        let inventory = Inventory::new(peers);
        let (gc, asks) = Trigger::new();
        let namespaces = Arc::new(NamespaceStore::new(records.clone(), broker.clone(), inventory.clone()));
        let containers = Arc::new(ContainerStore::new(records.clone(), broker.clone(), namespaces.clone(), gc.clone()));
        let leases = Arc::new(LeaseStore::new(records, namespaces.clone(), gc.clone()));
        let collector = Arc::new(Collector::new(namespaces.clone(), containers.clone(), leases.clone(), inventory));
        tokio::spawn(collector.run(asks, gc_interval));
        Metadata { namespaces, containers, leases, broker, gc }
    }
}

pub use berth_core::lifecycle::ServeError;

pub async fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    Ok(berth_core::listen::bind(path).await?)
}

/// Serves Namespaces, Containers, Leases, Events and berth's Gc until `shutdown` resolves.
pub async fn serve(
    listener: UnixListener,
    metadata: Metadata,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tonic::transport::Server::builder()
        .layer(berth_telemetry::context::ServerLayer::new("metadata"))
        .add_service(NamespacesService { metadata: metadata.clone() }.into_server())
        .add_service(ContainersService { metadata: metadata.clone() }.into_server())
        .add_service(LeasesService { metadata: metadata.clone() }.into_server())
        .add_service(EventsService::new(metadata.broker.clone()).into_server())
        .add_service(GcService { trigger: metadata.gc.clone() }.into_server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}
