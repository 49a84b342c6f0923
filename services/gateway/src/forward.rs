//! Forwarding one call, as it is, to a replica of the service that serves it.
//!
//! The request and response bodies are handed over without being read here: HTTP/2 frames
//! flow through as the two connections' flow control allows, so streams of any length (a
//! content Write, an Events subscription) pass through without being buffered, and errors,
//! trailers and cancellation reach the other side as they are.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tower::{Service as _, ServiceExt as _};
use tracing::Instrument as _;

use crate::backends::{Backends, Replica, Service};
use crate::routes;

/// Forwards every call to a replica of the service that serves its path.
#[derive(Clone)]
pub struct Forward {
    backends: Backends,
}

impl Forward {
    pub fn new(backends: Backends) -> Self {
        Forward { backends }
    }

    /// Forwards `request`; failures to route or reach a service become gRPC statuses.
    pub fn call(&self, mut request: Request<Body>) -> BoxFuture<'static, Response<Body>> {
        let path = request.uri().path();
        let Some(name) = routes::service_for_path(path) else {
            let status = tonic::Status::unimplemented(format!("no berth service serves {path}"));
            return Box::pin(std::future::ready(status.into_http()));
        };
        let Some(service) = self.backends.get(name).cloned() else {
            let status = tonic::Status::unavailable(format!(
                "the {name} service is unavailable: it is not running behind this gateway"
            ));
            return Box::pin(std::future::ready(status.into_http()));
        };
        // One span per call, child of the caller's trace; the service's spans become its
        // children through the traceparent written here.
        let span = berth_telemetry::context::server_span("gateway", &request);
        {
            let _entered = span.enter();
            berth_telemetry::context::inject_current(request.headers_mut());
        }
        Box::pin(forward(service, request).instrument(span))
    }
}

/// Sends `request` to the replicas of `service` in turn until one takes it.
///
/// A call moves on to the next replica only when the previous one failed before reading any
/// of the request body: then it cannot have acted on the call (every gRPC request carries its
/// message in the body), so sending it again is safe.
async fn forward(service: Arc<Service>, request: Request<Body>) -> Response<Body> {
    let candidates = service.candidates();
    let Some((last, others)) = candidates.split_last() else {
        return unavailable(&service, "it has no replicas");
    };
    let request = if others.is_empty() {
        // The common case costs nothing extra: the body is passed on untouched.
        request
    } else {
        let (parts, body) = request.into_parts();
        let body = Retained::new(body);
        for replica in others {
            let request = Request::from_parts(parts.clone(), Body::new(body.clone()));
            match send(replica, request).await {
                Ok(response) => return response,
                Err(error) => {
                    service.failed(replica, &root_cause(&error));
                    if body.was_read() {
                        return unreachable(&service, replica, &error);
                    }
                    tracing::debug!(service = service.name(), address = %replica.address(), "trying the next replica");
                }
            }
        }
        Request::from_parts(parts, Body::new(body))
    };
    match send(last, request).await {
        Ok(response) => response,
        Err(error) => {
            service.failed(last, &root_cause(&error));
            unreachable(&service, last, &error)
        }
    }
}

fn unavailable(service: &Service, why: &str) -> Response<Body> {
    tonic::Status::unavailable(format!("the {} service is unavailable: {why}", service.name())).into_http()
}

fn unreachable(service: &Service, replica: &Replica, error: &tonic::transport::Error) -> Response<Body> {
    unavailable(service, &format!("{}: {}", replica.address(), root_cause(error)))
}

async fn send(replica: &Replica, request: Request<Body>) -> Result<Response<Body>, tonic::transport::Error> {
    let mut channel = replica.channel();
    channel.ready().await?.call(request).await
}

/// The innermost error of a chain: the one that says what actually went wrong (say,
/// "Connection refused") rather than "transport error".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// A request body that stays reachable from the gateway, so that a call that failed before
/// its replica read anything can be sent to another replica.
#[derive(Clone)]
struct Retained(Arc<Mutex<RetainedState>>);

struct RetainedState {
    body: Body,
    read: bool,
}

impl Retained {
    fn new(body: Body) -> Self {
        Retained(Arc::new(Mutex::new(RetainedState { body, read: false })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RetainedState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn was_read(&self) -> bool {
        self.lock().read
    }
}

impl http_body::Body for Retained {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let mut state = self.lock();
        state.read = true;
        Pin::new(&mut state.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.lock().body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.lock().body.size_hint()
    }
}
