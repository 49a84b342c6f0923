//! W3C trace context in gRPC metadata (HTTP/2 headers).

use std::task::{Context as TaskContext, Poll};

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// The caller's trace context carried in `headers` (empty when there is none).
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes `cx` into `headers` as `traceparent`/`tracestate`.
pub fn inject(cx: &opentelemetry::Context, headers: &mut http::HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(headers)));
}

/// Writes the current span's context into `headers`.
pub fn inject_current(headers: &mut http::HeaderMap) {
    inject(&tracing::Span::current().context(), headers);
}

/// A span for one incoming gRPC call, child of the caller's trace context.
pub fn server_span(service: &'static str, request: &http::Request<impl Sized>) -> tracing::Span {
    let path = request.uri().path();
    let span = tracing::info_span!("grpc", otel.name = %path, rpc.system = "grpc", berth.service = service);
    let _ = span.set_parent(extract(request.headers()));
    span
}

/// A tower layer for tonic servers: every call runs inside [`server_span`].
#[derive(Clone, Copy)]
pub struct ServerLayer {
    service: &'static str,
}

impl ServerLayer {
    pub fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl<S> tower::Layer<S> for ServerLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner, service: self.service }
    }
}

#[derive(Clone)]
pub struct ServerTrace<S> {
    inner: S,
    service: &'static str,
}

impl<S, B> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let span = server_span(self.service, &request);
        let _entered = span.enter();
        self.inner.call(request).instrument(span.clone())
    }
}

/// Wraps a client channel so each outgoing call carries the current span's trace context.
#[derive(Clone)]
pub struct Propagate<S> {
    inner: S,
}

impl<S> Propagate<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> tower::Service<http::Request<B>> for Propagate<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        inject_current(request.headers_mut());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn traceparent_round_trips_through_headers() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let mut headers = http::HeaderMap::new();
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", parent.parse().unwrap());
        let cx = extract(&headers);
        assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");

        let mut out = http::HeaderMap::new();
        inject(&cx, &mut out);
        assert_eq!(out.get("traceparent").unwrap(), parent);
    }
}
