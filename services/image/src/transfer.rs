//! The gRPC adapter of berth's `berth.image.v1.Transfer`: a pull (or import) runs as its own
//! task, so it completes when the client that asked goes away; the client watches its
//! progress stream. An import spools the archive to an unnamed file under the service's
//! root first (gone when the import ends, however it ends; refused past a size limit); an
//! export streams the tar as it is written.

use std::path::PathBuf;
use std::sync::Arc;

use berth_api::berth::image::v1::transfer_server::{Transfer, TransferServer};
use berth_api::berth::image::v1::{ExportChunk, ExportRequest, ImportRequest, PullRequest, PushRequest};
use tokio::io::{AsyncSeekExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::archive::Archive;
use crate::import::ImportSpec;
use crate::progress::{Event, Progress};
use crate::pull::{PullSpec, Puller};

/// Export chunks buffered ahead of the client.
const EXPORT_AHEAD: usize = 4;

/// Largest archive an import accepts unless told otherwise.
pub const DEFAULT_MAX_IMPORT: u64 = 32 << 30;

/// Where import archives are spooled, and how big one may be.
#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
    pub max_size: u64,
}

impl Default for Spool {
    fn default() -> Spool {
        Spool { dir: std::env::temp_dir(), max_size: DEFAULT_MAX_IMPORT }
    }
}

pub struct TransferService {
    puller: Puller,
    spool: Spool,
}

impl TransferService {
    pub fn new(puller: Puller) -> TransferService {
        TransferService { puller, spool: Spool::default() }
    }

    pub fn with_spool(mut self, spool: Spool) -> TransferService {
        self.spool = spool;
        self
    }

    pub fn into_server(self) -> TransferServer<Self> {
        TransferServer::new(self)
    }
}

/// Writes the archive the client streams to an unnamed file in the spool directory (removed
/// by the kernel when closed, also when the import fails or the service dies) and indexes it.
async fn spool(spool: &Spool, first: ImportRequest, mut rest: Streaming<ImportRequest>) -> Result<Archive, Status> {
    let dir = spool.dir.clone();
    let failed = move |e: std::io::Error| Status::internal(format!("spooling the archive to {}: {e}", dir.display()));
    let place = spool.dir.clone();
    let file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(place))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(&failed)?;
    let mut file = tokio::fs::File::from_std(file);
    let too_big = |size: u64| {
        Status::resource_exhausted(format!(
            "the archive is larger than the {} bytes berth-image accepts (at {size} bytes; \
             raise it with berth-image --max-import-size)",
            spool.max_size
        ))
    };
    let mut size = first.data.len() as u64;
    if size > spool.max_size {
        return Err(too_big(size));
    }
    file.write_all(&first.data).await.map_err(&failed)?;
    while let Some(message) = rest.message().await? {
        if message.options.is_some() {
            return Err(Status::invalid_argument("only the first import message may carry options"));
        }
        size += message.data.len() as u64;
        if size > spool.max_size {
            return Err(too_big(size));
        }
        file.write_all(&message.data).await.map_err(&failed)?;
    }
    file.flush().await.map_err(&failed)?;
    // The scan reads from the file's position.
    file.rewind().await.map_err(&failed)?;
    let file = file.into_std().await;
    tokio::task::spawn_blocking(move || Archive::scan(file)).await.map_err(|e| Status::internal(e.to_string()))?
}

#[tonic::async_trait]
impl Transfer for TransferService {
    type PullStream = UnboundedReceiverStream<Event>;
    type ImportStream = UnboundedReceiverStream<Event>;
    type ExportStream = ReceiverStream<Result<ExportChunk, Status>>;
    type PushStream = UnboundedReceiverStream<Event>;

    async fn push(&self, request: Request<PushRequest>) -> Result<Response<Self::PushStream>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("name the image to push"));
        }
        let (events, stream) = mpsc::unbounded_channel();
        let puller = self.puller.clone();
        tokio::spawn(
            async move {
                if let Err(status) = puller.push(&namespace, request, Progress::new(events.clone())).await {
                    tracing::warn!(namespace, code = ?status.code(), "push failed: {}", status.message());
                    let _ = events.send(Err(status));
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(UnboundedReceiverStream::new(stream)))
    }

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

    async fn import(&self, request: Request<Streaming<ImportRequest>>) -> Result<Response<Self::ImportStream>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty import: send the options, then the archive"))?;
        let options = first
            .options
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first import message must carry the options"))?;
        let spec = ImportSpec::from_api(options)?;
        let archive = Arc::new(spool(&self.spool, first, stream).await?);
        let (events, stream) = mpsc::unbounded_channel();
        let puller = self.puller.clone();
        tokio::spawn(
            async move {
                if let Err(status) = puller.import(&namespace, spec, archive, Progress::new(events.clone())).await {
                    tracing::warn!(namespace, code = ?status.code(), "import failed: {}", status.message());
                    let _ = events.send(Err(status));
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(UnboundedReceiverStream::new(stream)))
    }

    async fn export(&self, request: Request<ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let names = request.into_inner().names;
        let (chunks, stream) = mpsc::channel(EXPORT_AHEAD);
        let puller = self.puller.clone();
        tokio::spawn(
            async move {
                if let Err(status) = puller.export(&namespace, names, chunks.clone()).await {
                    tracing::warn!(namespace, code = ?status.code(), "export failed: {}", status.message());
                    let _ = chunks.send(Err(status)).await;
                }
            }
            .in_current_span(),
        );
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}
