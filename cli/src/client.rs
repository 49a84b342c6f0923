//! One connection to berth, with the namespace put on every call the way containerd clients do
//! (gRPC metadata `containerd-namespace`).

use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::diff::v1::diff_client::DiffClient;
use berth_api::containerd::services::events::v1::events_client::EventsClient;
use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::tasks::v1::tasks_client::TasksClient;
use berth_api::containerd::services::version::v1::version_client::VersionClient;
use berth_core::connect::{Address, lazy_channel};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::errors::{CallError, Subject};

/// Largest message we accept or send. containerd streams 1 MiB chunks; leave generous room.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// Adds the namespace to the metadata of every request, unary and streaming alike.
#[derive(Clone, Debug)]
pub struct Namespaced {
    value: AsciiMetadataValue,
}

impl Interceptor for Namespaced {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(berth_core::namespace::METADATA_KEY, self.value.clone());
        Ok(request)
    }
}

/// The transport every generated client runs over.
pub type Transport = InterceptedService<Channel, Namespaced>;

/// What commands hold: where berth is, which namespace, and a channel that connects on first use.
#[derive(Clone, Debug)]
pub struct Client {
    address: Address,
    namespace: String,
    channel: Channel,
    namespaced: Namespaced,
}

impl Client {
    /// Checks the namespace and prepares a lazy channel; nothing is dialled until the first call.
    /// Must run inside a tokio runtime.
    pub fn new(address: Address, namespace: String) -> anyhow::Result<Client> {
        berth_core::identifiers::validate("namespace", &namespace)
            .map_err(|status| anyhow::anyhow!("{} (set it with -n or BERTH_NAMESPACE)", status.message()))?;
        let value: AsciiMetadataValue = MetadataValue::try_from(namespace.as_str())
            .map_err(|_| anyhow::anyhow!("namespace {namespace:?} cannot be sent in gRPC metadata"))?;
        let channel = lazy_channel(&address);
        Ok(Client { address, namespace, channel, namespaced: Namespaced { value } })
    }

    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The address as users wrote it: the bare path for unix sockets.
    pub fn address_text(&self) -> String {
        match &self.address {
            Address::Unix(path) => path.display().to_string(),
            Address::Tcp(host) => host.clone(),
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn content(&self) -> ContentClient<Transport> {
        ContentClient::with_interceptor(self.channel.clone(), self.namespaced.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn version(&self) -> VersionClient<Transport> {
        VersionClient::with_interceptor(self.channel.clone(), self.namespaced.clone())
    }

    pub fn namespaces(&self) -> NamespacesClient<Transport> {
        NamespacesClient::with_interceptor(self.channel.clone(), self.namespaced.clone())
    }

    pub fn containers(&self) -> ContainersClient<Transport> {
        // Container records carry whole OCI specs; allow big ones both ways.
        ContainersClient::with_interceptor(self.channel.clone(), self.namespaced.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn leases(&self) -> LeasesClient<Transport> {
        LeasesClient::with_interceptor(self.channel.clone(), self.namespaced.clone())
    }

    pub fn snapshots(&self) -> SnapshotsClient<Transport> {
        // Listings of many snapshots with labels come in pages, but allow big ones.
        SnapshotsClient::with_interceptor(self.channel.clone(), self.namespaced.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
    }

    pub fn diff(&self) -> DiffClient<Transport> {
        DiffClient::with_interceptor(self.channel.clone(), self.namespaced.clone())
    }

    pub fn events(&self) -> EventsClient<Transport> {
        EventsClient::with_interceptor(self.channel.clone(), self.namespaced.clone())
    }

    /// The namespaced transport, for clients of services without an accessor here.
    pub fn transport(&self) -> Transport {
        InterceptedService::new(self.channel.clone(), self.namespaced.clone())
    }

    pub fn tasks(&self) -> TasksClient<Transport> {
        // Specs of execs travel in these calls.
        TasksClient::with_interceptor(self.channel.clone(), self.namespaced.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }

    /// Turns a failed call into an error whose message says what happened and what to do.
    pub fn explain(&self, status: tonic::Status, subject: Subject<'_>) -> anyhow::Error {
        anyhow::Error::new(CallError::explain(&status, &self.address_text(), &self.namespace, subject))
    }
}
