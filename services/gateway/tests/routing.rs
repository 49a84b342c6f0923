//! The gateway in front of fake backends: calls reach the right replica, replicas share the
//! load, a dead replica is skipped, and a service that is down answers Unavailable quickly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_api::containerd::services::introspection::v1::PluginsRequest;
use berth_api::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use berth_api::containerd::services::namespaces::v1 as ns;
use berth_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient;
use berth_api::containerd::services::namespaces::v1::namespaces_server::{Namespaces, NamespacesServer};
use berth_core::connect::{Address, lazy_channel};
use tonic::{Code, Request, Response, Status};

/// A Namespaces backend that answers Get with its own name, so tests see which replica served.
struct Fake {
    name: &'static str,
}

#[tonic::async_trait]
impl Namespaces for Fake {
    async fn get(
        &self,
        request: Request<ns::GetNamespaceRequest>,
    ) -> Result<Response<ns::GetNamespaceResponse>, Status> {
        if request.get_ref().name == "missing" {
            return Err(Status::not_found("namespace missing not found"));
        }
        let namespace = ns::Namespace { name: self.name.to_string(), labels: Default::default() };
        Ok(Response::new(ns::GetNamespaceResponse { namespace: Some(namespace) }))
    }
    async fn list(
        &self,
        _: Request<ns::ListNamespacesRequest>,
    ) -> Result<Response<ns::ListNamespacesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn create(
        &self,
        _: Request<ns::CreateNamespaceRequest>,
    ) -> Result<Response<ns::CreateNamespaceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn update(
        &self,
        _: Request<ns::UpdateNamespaceRequest>,
    ) -> Result<Response<ns::UpdateNamespaceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete(&self, _: Request<ns::DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Serves a fake on `path` until the returned sender is dropped.
async fn fake_backend(path: &Path, name: &'static str) -> tokio::sync::oneshot::Sender<()> {
    let listener = berth_core::listen::bind(path).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NamespacesServer::new(Fake { name }))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), async {
                let _ = stopped.await;
            }),
    );
    stop
}

async fn gateway(dir: &Path, metadata: Vec<PathBuf>) -> PathBuf {
    let socket = dir.join("gateway.sock");
    let mut backends = BTreeMap::new();
    backends.insert("metadata".to_string(), metadata.into_iter().map(Address::Unix).collect());
    let config = berth_gateway::Config { address: socket.clone(), tcp: None, backends };
    tokio::spawn(berth_gateway::serve(config, std::future::pending()));
    for _ in 0..100 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    socket
}

async fn served_by(client: &mut NamespacesClient<tonic::transport::Channel>) -> Result<String, Status> {
    let response = client.get(ns::GetNamespaceRequest { name: "default".into() }).await?;
    Ok(response.into_inner().namespace.unwrap().name)
}

#[tokio::test]
async fn calls_spread_over_replicas_and_skip_a_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let _keep_a = fake_backend(&a, "replica-a").await;
    let stop_b = fake_backend(&b, "replica-b").await;
    let socket = gateway(dir.path(), vec![a, b.clone()]).await;
    let mut client = NamespacesClient::new(lazy_channel(&Address::Unix(socket)));

    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(served_by(&mut client).await.unwrap());
    }
    assert!(seen.contains(&"replica-a".to_string()) && seen.contains(&"replica-b".to_string()), "{seen:?}");

    // Errors from the backend pass through unchanged.
    let err = client.get(ns::GetNamespaceRequest { name: "missing".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "namespace missing not found");

    // Replica b goes away: once the health check notices, every call lands on a.
    drop(stop_b);
    let _ = std::fs::remove_file(&b);
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..6 {
        assert_eq!(served_by(&mut client).await.unwrap(), "replica-a");
    }
}

#[tokio::test]
async fn a_down_service_is_unavailable_within_a_second_and_shown_in_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let socket = gateway(dir.path(), vec![dir.path().join("nobody.sock")]).await;
    let channel = lazy_channel(&Address::Unix(socket));
    let mut client = NamespacesClient::new(channel.clone());
    let started = Instant::now();
    let err = served_by(&mut client).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("metadata"), "{}", err.message());

    let plugins = IntrospectionClient::new(channel)
        .plugins(PluginsRequest { filters: vec!["id==metadata".into()] })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert_eq!(plugins.len(), 1);
    let init_err = plugins[0].init_err.as_ref().expect("down service has an init error");
    assert_eq!(init_err.code, Code::Unavailable as i32);
}
