//! The gateway in front of fake content backends: unary, server-streaming and bidirectional
//! calls pass through with their errors, trailers, metadata and cancellation; calls spread over
//! replicas and survive one dying; a down or missing service answers Unavailable at once;
//! unknown paths are Unimplemented; Version and Introspection are answered by the gateway.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_api::containerd::services::content::v1 as content;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::introspection::v1::PluginsRequest;
use berth_api::containerd::services::introspection::v1::introspection_client::IntrospectionClient;
use berth_api::containerd::services::snapshots::v1 as snapshots;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_api::containerd::services::tasks::v1 as tasks;
use berth_api::containerd::services::tasks::v1::tasks_client::TasksClient;
use berth_api::containerd::services::version::v1::version_client::VersionClient;
use berth_core::connect::{Address, lazy_channel};
use common::{Backend, gateway};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request};

fn info(digest: &str) -> content::InfoRequest {
    content::InfoRequest { digest: digest.to_string() }
}

#[tokio::test]
async fn unary_server_streaming_and_bidi_calls_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("content.sock");
    let _backend = Backend::start(&path, "only").await;
    let mut client = ContentClient::new(gateway(dir.path(), &[("content", vec![path])], None).await);

    // Unary, with the backend's response metadata.
    let response = client.info(info("sha256:abc")).await.unwrap();
    assert_eq!(response.metadata().get("x-replica").unwrap(), "only");
    assert_eq!(response.into_inner().info.unwrap().digest, "sha256:abc");

    // Server streaming: 8 MiB in order.
    let size = 8 << 20;
    let mut read = client.read(content::ReadContentRequest { digest: "d".into(), offset: 0, size }).await.unwrap();
    let mut received = 0i64;
    while let Some(chunk) = read.get_mut().message().await.unwrap() {
        assert_eq!(chunk.offset, received);
        assert!(chunk.data.iter().all(|b| i64::from(*b) == received >> 20));
        received += chunk.data.len() as i64;
    }
    assert_eq!(received, size);

    // Bidirectional: every message answered in turn.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = client.write(ReceiverStream::new(rx)).await.unwrap().into_inner();
    for i in 0..16i64 {
        let data = vec![7u8; 1 << 20];
        tx.send(content::WriteContentRequest { r#ref: "r".into(), offset: i << 20, data, ..Default::default() })
            .await
            .unwrap();
        let reply = responses.message().await.unwrap().unwrap();
        assert_eq!(reply.offset, (i + 1) << 20);
    }
    drop(tx);
    assert!(responses.message().await.unwrap().is_none());
}

#[tokio::test]
async fn errors_trailers_trace_context_and_cancellation_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("content.sock");
    let mut backend = Backend::start(&path, "only").await;
    let mut client = ContentClient::new(gateway(dir.path(), &[("content", vec![path])], None).await);

    // A backend error keeps its code, message and metadata (trailers).
    let err = client.info(info("missing")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "content digest missing: not found");
    assert_eq!(err.metadata().get("x-detail").unwrap(), "from-the-backend");

    // An error in the middle of a stream arrives after the messages before it.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut responses = client.write(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(content::WriteContentRequest { r#ref: "fail".into(), data: vec![1; 10], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().offset, 10);
    tx.send(content::WriteContentRequest { r#ref: "fail".into(), offset: 10, data: vec![1; 10], ..Default::default() })
        .await
        .unwrap();
    let err = responses.message().await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    assert_eq!(err.message(), "ref fail broke at offset 10");

    // The caller's trace context reaches the backend (no exporter here, so it is unchanged).
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = Request::new(info("sha256:abc"));
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    let labels = client.info(request).await.unwrap().into_inner().info.unwrap().labels;
    assert_eq!(labels.get("traceparent").map(String::as_str), Some(traceparent));

    // A caller that stops reading an endless stream cancels it at the backend.
    let mut list = client.list(content::ListContentRequest::default()).await.unwrap().into_inner();
    assert!(list.message().await.unwrap().is_some());
    drop(list);
    tokio::time::timeout(Duration::from_secs(2), backend.cancelled.recv())
        .await
        .expect("the backend saw the cancellation")
        .unwrap();
}

#[tokio::test]
async fn calls_spread_over_replicas_and_one_dying_goes_unnoticed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let replica_a = Backend::start(&a, "a").await;
    let mut replica_b = Backend::start(&b, "b").await;
    let channel = gateway(dir.path(), &[("content", vec![a, b])], None).await;
    let mut client = ContentClient::new(channel.clone());

    for _ in 0..10 {
        client.info(info("x")).await.unwrap();
    }
    assert_eq!((replica_a.calls(), replica_b.calls()), (5, 5));

    // b dies. Well before the next health check, calls that would have gone to b find it
    // unreachable before it read anything and are sent to a instead: none fails.
    replica_b.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..10 {
        let response = client.info(info("x")).await.unwrap();
        assert_eq!(response.metadata().get("x-replica").unwrap(), "a");
    }
    assert_eq!(replica_a.calls(), 15);

    // The service is still up in Plugins: one replica answers.
    let plugins = IntrospectionClient::new(channel)
        .plugins(PluginsRequest { filters: vec!["id==content".into()] })
        .await
        .unwrap()
        .into_inner()
        .plugins;
    assert!(plugins[0].init_err.is_none());
    assert_eq!(plugins[0].exports["address"].matches("unix://").count(), 2);
}

#[tokio::test]
async fn down_and_missing_services_are_unavailable_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let down = dir.path().join("snapshot.sock");
    let channel = gateway(dir.path(), &[("snapshot", vec![down])], None).await;

    let started = Instant::now();
    let err = SnapshotsClient::new(channel.clone())
        .stat(snapshots::StatSnapshotRequest { snapshotter: "overlayfs".into(), key: "k".into() })
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().starts_with("the snapshot service is unavailable: unix://"), "{}", err.message());

    let started = Instant::now();
    let mut tasks = TasksClient::new(channel.clone());
    let err = tasks.get(tasks::GetRequest { container_id: "c".into(), ..Default::default() }).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "the execution service is unavailable: it is not running behind this gateway");

    // Plugins shows both, with why they are down.
    let plugins = IntrospectionClient::new(channel.clone())
        .plugins(PluginsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .plugins;
    let by_id: HashMap<&str, _> = plugins.iter().map(|p| (p.id.as_str(), p)).collect();
    assert_eq!(by_id.len(), 5);
    let snapshot = by_id["snapshot"].init_err.as_ref().unwrap();
    assert_eq!(snapshot.code, Code::Unavailable as i32);
    assert!(snapshot.message.contains("no replica answers"), "{}", snapshot.message);
    assert!(by_id["execution"].init_err.is_some());
}

#[tokio::test]
async fn unknown_services_are_unimplemented() {
    let dir = tempfile::tempdir().unwrap();
    let channel = gateway(dir.path(), &[], None).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/containerd.services.sandbox.v1.Store/List");
    let err = grpc.unary::<(), (), _>(Request::new(()), path, tonic_prost::ProstCodec::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("/containerd.services.sandbox.v1.Store/List"), "{}", err.message());
}

#[tokio::test]
async fn version_and_server_are_answered_by_the_gateway_also_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let channel = gateway(dir.path(), &[], Some(format!("127.0.0.1:{port}"))).await;

    let version = VersionClient::new(channel.clone()).version(()).await.unwrap().into_inner();
    assert_eq!(version.version, env!("CARGO_PKG_VERSION"));

    let server = IntrospectionClient::new(channel).server(()).await.unwrap().into_inner();
    assert_eq!(server.pid, u64::from(std::process::id()));
    assert_eq!(server.uuid.len(), 36);

    let tcp = lazy_channel(&Address::Tcp(format!("127.0.0.1:{port}")));
    let again = IntrospectionClient::new(tcp).server(()).await.unwrap().into_inner();
    assert_eq!(again.uuid, server.uuid);
}
