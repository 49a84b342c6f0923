//! With tracing exported, the gateway makes a span per forwarded call that continues the
//! caller's trace, and the backend sees the gateway's span as its parent.

mod common;

use berth_api::containerd::services::content::v1::InfoRequest;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use common::{Backend, gateway};
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

#[tokio::test]
async fn forwarded_calls_continue_the_callers_trace_under_a_gateway_span() {
    // What berth_telemetry::init sets up when OTLP export is configured, minus the exporter.
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))).init();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("content.sock");
    let _backend = Backend::start(&path, "only").await;
    let mut client = ContentClient::new(gateway(dir.path(), &[("content", vec![path])], None).await);

    let (trace_id, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut request = tonic::Request::new(InfoRequest { digest: "sha256:abc".into() });
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-{caller_span}-01").parse().unwrap());
    let labels = client.info(request).await.unwrap().into_inner().info.unwrap().labels;

    let seen = labels.get("traceparent").expect("the backend got a traceparent");
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{seen}");
    assert_eq!(parts[1], trace_id, "same trace: {seen}");
    assert_ne!(parts[2], caller_span, "parent is the gateway's span, not the caller's: {seen}");
    assert_eq!(parts[3], "01", "still sampled: {seen}");
}
