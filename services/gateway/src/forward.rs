//! Forwarding one call, as it is, to the service that serves it.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tower::ServiceExt;
use tracing::Instrument;

use crate::backends::Backends;
use crate::routes;

/// A tower service that forwards every request to its backend; installed as the router's
/// fallback, so everything but Version and Introspection goes through it.
#[derive(Clone)]
pub struct Forward {
    backends: Backends,
}

impl Forward {
    pub fn new(backends: Backends) -> Self {
        Forward { backends }
    }
}

fn status_response(status: tonic::Status) -> http::Response<axum::body::Body> {
    status.into_http::<axum::body::Body>()
}

impl tower::Service<http::Request<axum::body::Body>> for Forward {
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<axum::body::Body>) -> Self::Future {
        let path = request.uri().path().to_string();
        let Some(name) = routes::service_for_path(&path) else {
            let status = tonic::Status::unimplemented(format!("unknown service for {path}"));
            return Box::pin(async move { Ok(status_response(status)) });
        };
        let Some(service) = self.backends.get(name) else {
            let status = tonic::Status::unavailable(format!(
                "the {name} service is unavailable: it is not running behind this gateway"
            ));
            return Box::pin(async move { Ok(status_response(status)) });
        };
        let replica = service.pick();
        let mut channel = replica.channel.clone();
        let address = replica.address.to_string();

        let span = berth_telemetry::context::server_span("gateway", &request);
        {
            let _entered = span.enter();
            berth_telemetry::context::inject_current(request.headers_mut());
        }
        Box::pin(
            async move {
                let request = request.map(tonic::body::Body::new);
                let result = match channel.ready().await {
                    Ok(channel) => channel.call(request).await,
                    Err(err) => Err(err),
                };
                Ok(match result {
                    Ok(response) => response.map(axum::body::Body::new),
                    Err(err) => {
                        tracing::debug!(%err, %address, "forwarding failed");
                        status_response(tonic::Status::unavailable(format!(
                            "the {name} service is unavailable at {address}: {}",
                            error_chain(&err)
                        )))
                    }
                })
            }
            .instrument(span),
        )
    }
}

/// An error with its causes ("transport error: connection refused"), which says more than
/// the outermost message alone.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
