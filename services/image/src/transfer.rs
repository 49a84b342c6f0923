//! The gRPC adapter of berth's `berth.image.v1.Transfer`: a pull runs as its own task, so it
//! completes when the client that asked goes away; the client watches its progress stream.

use berth_api::berth::image::v1::PullRequest;
use berth_api::berth::image::v1::transfer_server::{Transfer, TransferServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::progress::{Event, Progress};
use crate::pull::{PullSpec, Puller};

pub struct TransferService {
    puller: Puller,
}

impl TransferService {
    pub fn new(puller: Puller) -> TransferService {
        TransferService { puller }
    }

    pub fn into_server(self) -> TransferServer<Self> {
        TransferServer::new(self)
    }
}

#[tonic::async_trait]
impl Transfer for TransferService {
    type PullStream = UnboundedReceiverStream<Event>;

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<Self::PullStream>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let spec = PullSpec::from_api(request.into_inner())?;
        let (events, stream) = mpsc::unbounded_channel();
        let puller = self.puller.clone();
        tokio::spawn(
            async move {
                if let Err(status) = puller.pull(&namespace, spec, Progress::new(events.clone())).await {
                    tracing::warn!(namespace, code = ?status.code(), "pull failed: {}", status.message());
                    let _ = events.send(Err(status));
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(UnboundedReceiverStream::new(stream)))
    }
}
