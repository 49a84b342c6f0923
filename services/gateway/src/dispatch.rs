//! The gateway's one tower service: Version and Introspection are answered here, every other
//! call is forwarded.
//!
//! A plain match on the gRPC service name rather than an axum router: requests and responses
//! keep tonic's body type end to end, so forwarded frames are not boxed again on the way.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use berth_api::containerd::services::introspection::v1::introspection_server::IntrospectionServer;
use berth_api::containerd::services::version::v1::version_server::VersionServer;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use http::{Request, Response};
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use crate::forward::Forward;
use crate::local::{Introspection, Version};
use crate::routes;

#[derive(Clone)]
pub struct Dispatch {
    version: VersionServer<Version>,
    introspection: IntrospectionServer<Introspection>,
    forward: Forward,
}

impl Dispatch {
    pub fn new(introspection: Arc<Introspection>, forward: Forward) -> Self {
        Dispatch {
            version: VersionServer::new(Version),
            introspection: IntrospectionServer::from_arc(introspection),
            forward,
        }
    }
}

impl Service<Request<Body>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every part is always ready: the generated servers are, and forwarding waits for its
        // backend inside the call, where a slow backend delays only its own calls.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match routes::grpc_service(request.uri().path()) {
            Some(VersionServer::<Version>::NAME) => self.version.call(request),
            Some(IntrospectionServer::<Introspection>::NAME) => self.introspection.call(request),
            _ => self.forward.call(request).map(Ok).boxed(),
        }
    }
}
