//! The gRPC adapter: containerd's `containerd.services.content.v1.Content` over [`ContentStore`].
//!
//! Turns requests into store calls (namespace from metadata, digests and refs validated) and
//! errors into containerd's status codes. Streams are fed by tasks through small channels, so
//! reading the disk overlaps with sending, and a slow client never blocks a runtime worker.

use std::time::SystemTime;

use berth_api::containerd::events::ContentDelete;
use berth_api::containerd::services::content::v1 as api;
use berth_api::containerd::services::content::v1::content_server::{Content, ContentServer};
use berth_api::prost_types::Timestamp;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::digest::Digest;
use crate::error::Error;
use crate::filters;
use crate::ingest;
use crate::store::{ContentStore, Info};
use crate::writer::{Progress, Writer};

/// Largest message accepted or sent; clients send 1 MiB writes, this leaves plenty of room.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
/// Infos per List message, as containerd batches them.
const LIST_BATCH: usize = 100;
/// Messages decoded ahead of the one being written to disk.
const WRITE_READ_AHEAD: usize = 2;
/// Chunks read ahead of the one being sent.
const READ_AHEAD: usize = 4;

/// Maps a store error onto containerd's code; internal failures are logged here.
pub fn to_status(error: Error) -> Status {
    match error {
        Error::InvalidArgument(m) => Status::invalid_argument(m),
        Error::NotFound(m) => Status::not_found(m),
        Error::AlreadyExists(m) => Status::already_exists(m),
        Error::FailedPrecondition(m) => Status::failed_precondition(m),
        Error::Unavailable(m) => Status::unavailable(m),
        Error::OutOfRange(m) => Status::out_of_range(m),
        Error::Store(e) => {
            tracing::error!(error = %e, "metadata store failure");
            e.into()
        }
        error @ (Error::Io { .. } | Error::Internal(_)) => {
            tracing::error!(error = %error, "content store failure");
            Status::internal(error.to_string())
        }
    }
}

/// Spawns a task that stays inside the current call's span (and so its trace).
fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    tokio::spawn(task.in_current_span());
}

fn namespace<T>(request: &Request<T>) -> Result<String, Status> {
    berth_core::namespace::of(request)
}

fn digest(text: &str) -> Result<Digest, Status> {
    Digest::parse(text).map_err(to_status)
}

fn timestamp(time: SystemTime) -> Option<Timestamp> {
    Some(Timestamp::from(time))
}

fn info_to_api(info: Info) -> api::Info {
    api::Info {
        digest: info.digest.to_string(),
        size: info.size,
        created_at: timestamp(info.created_at),
        updated_at: timestamp(info.updated_at),
        labels: info.labels,
    }
}

fn status_to_api(status: ingest::Status) -> api::Status {
    api::Status {
        started_at: timestamp(status.started_at),
        updated_at: timestamp(status.updated_at),
        r#ref: status.reference,
        offset: status.offset,
        total: status.total,
        expected: status.expected.unwrap_or_default(),
    }
}

/// The content service; see the module docs.
#[derive(Clone)]
pub struct ContentService {
    store: ContentStore,
    neighbours: Neighbours,
}

/// What content tells the metadata service: its events, the namespaces it writes in, and
/// what a call under a lease created. All no-ops when berth-content runs without a metadata peer.
#[derive(Clone)]
struct Neighbours {
    events: berth_peers::Publisher,
    namespaces: berth_peers::Namespaces,
    leases: berth_peers::LeaseResources,
}

impl ContentService {
    pub fn new(store: ContentStore) -> ContentService {
        let neighbours = Neighbours {
            events: berth_peers::Publisher::disabled(),
            namespaces: berth_peers::Namespaces::default(),
            leases: berth_peers::LeaseResources::default(),
        };
        ContentService { store, neighbours }
    }

    /// Publishes events to, registers namespaces with and records lease resources in the
    /// metadata service among `peers` (when there is one). Must run inside a tokio runtime.
    pub fn with_peers(mut self, peers: &berth_peers::Peers) -> ContentService {
        let metadata = peers.channel("metadata");
        self.neighbours = Neighbours {
            events: metadata.clone().map_or_else(berth_peers::Publisher::disabled, berth_peers::Publisher::new),
            namespaces: berth_peers::Namespaces::new(metadata.clone()),
            leases: berth_peers::LeaseResources::new(metadata),
        };
        self
    }

    /// The tonic server with berth's message size limits.
    pub fn into_server(self) -> ContentServer<ContentService> {
        ContentServer::new(self).max_decoding_message_size(MAX_MESSAGE_SIZE).max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, request: Request<api::InfoRequest>) -> Result<Response<api::InfoResponse>, Status> {
        let ns = namespace(&request)?;
        let digest = digest(&request.get_ref().digest)?;
        let info = self.store.info(&ns, &digest).await.map_err(to_status)?;
        Ok(Response::new(api::InfoResponse { info: Some(info_to_api(info)) }))
    }

    async fn update(&self, request: Request<api::UpdateRequest>) -> Result<Response<api::UpdateResponse>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let info = request.info.ok_or_else(|| Status::invalid_argument("update needs info with a digest"))?;
        let digest = digest(&info.digest)?;
        let paths = request.update_mask.map(|mask| mask.paths).unwrap_or_default();
        let info = self.store.update(&ns, &digest, info.labels, &paths).await.map_err(to_status)?;
        Ok(Response::new(api::UpdateResponse { info: Some(info_to_api(info)) }))
    }

    type ListStream = ReceiverStream<Result<api::ListContentResponse, Status>>;

    async fn list(&self, request: Request<api::ListContentRequest>) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(&request)?;
        let filters = filters::parse(&request.get_ref().filters).map_err(to_status)?;
        let infos = self.store.list(&ns, &filters).await.map_err(to_status)?;
        let (sender, receiver) = mpsc::channel(4);
        spawn(async move {
            let mut infos = infos.into_iter().map(info_to_api).peekable();
            while infos.peek().is_some() {
                let batch: Vec<_> = infos.by_ref().take(LIST_BATCH).collect();
                if sender.send(Ok(api::ListContentResponse { info: batch })).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn delete(&self, request: Request<api::DeleteContentRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        let digest = digest(&request.get_ref().digest)?;
        self.store.delete(&ns, &digest).await.map_err(to_status)?;
        self.neighbours.events.publish(&ns, "/content/delete", &ContentDelete { digest: digest.to_string() });
        Ok(Response::new(()))
    }

    type ReadStream = ReceiverStream<Result<api::ReadContentResponse, Status>>;

    async fn read(&self, request: Request<api::ReadContentRequest>) -> Result<Response<Self::ReadStream>, Status> {
        let ns = namespace(&request)?;
        let request = request.into_inner();
        let digest = digest(&request.digest)?;
        let mut reader = self.store.reader(&ns, &digest, request.offset, request.size).await.map_err(to_status)?;
        let (sender, receiver) = mpsc::channel(READ_AHEAD);
        spawn(async move {
            loop {
                let message = match reader.next_chunk().await {
                    Ok(Some((offset, data))) => {
                        Ok(api::ReadContentResponse { offset: i64::try_from(offset).unwrap_or(i64::MAX), data })
                    }
                    Ok(None) => break,
                    Err(error) => Err(to_status(error)),
                };
                let failed = message.is_err();
                if sender.send(message).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn status(&self, request: Request<api::StatusRequest>) -> Result<Response<api::StatusResponse>, Status> {
        let ns = namespace(&request)?;
        let status = self.store.status(&ns, &request.get_ref().r#ref).await.map_err(to_status)?;
        Ok(Response::new(api::StatusResponse { status: Some(status_to_api(status)) }))
    }

    async fn list_statuses(
        &self,
        request: Request<api::ListStatusesRequest>,
    ) -> Result<Response<api::ListStatusesResponse>, Status> {
        let ns = namespace(&request)?;
        let filters = filters::parse(&request.get_ref().filters).map_err(to_status)?;
        let statuses = self.store.list_statuses(&ns, &filters).await.map_err(to_status)?;
        Ok(Response::new(api::ListStatusesResponse { statuses: statuses.into_iter().map(status_to_api).collect() }))
    }

    type WriteStream = ReceiverStream<Result<api::WriteContentResponse, Status>>;

    async fn write(
        &self,
        request: Request<Streaming<api::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = namespace(&request)?;
        let lease = berth_peers::leases::of(request.metadata());
        self.neighbours.namespaces.ensure(&ns).await;
        let mut incoming = request.into_inner();
        // Decode the next messages while the current one is written (it is a copy of up to
        // 16 MiB, worth overlapping with the disk write and hash).
        let (request_sender, requests) = mpsc::channel(WRITE_READ_AHEAD);
        spawn(async move {
            loop {
                let message = tokio::select! {
                    // The session ended (commit or error): stop reading what the client sends.
                    () = request_sender.closed() => break,
                    message = incoming.next() => message,
                };
                let Some(message) = message else { break };
                if request_sender.send(message).await.is_err() {
                    break;
                }
            }
        });
        let (sender, receiver) = mpsc::channel(WRITE_READ_AHEAD + 2);
        let store = self.store.clone();
        let neighbours = self.neighbours.clone();
        // The response starts at once; the session runs on its own, so a client that waits
        // for response headers before sending its first message is served too.
        spawn(async move {
            if let Err(status) = write_session(store, neighbours, ns, lease, requests, &sender).await {
                if status.code() != tonic::Code::AlreadyExists {
                    tracing::debug!(code = ?status.code(), message = status.message(), "write failed");
                }
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn abort(&self, request: Request<api::AbortRequest>) -> Result<Response<()>, Status> {
        let ns = namespace(&request)?;
        self.store.abort(&ns, &request.get_ref().r#ref).await.map_err(to_status)?;
        Ok(Response::new(()))
    }
}

fn expected_of(text: &str) -> Result<Option<Digest>, Status> {
    if text.is_empty() { Ok(None) } else { digest(text).map(Some) }
}

fn response(action: api::WriteAction, progress: Progress) -> api::WriteContentResponse {
    api::WriteContentResponse {
        action: action as i32,
        started_at: timestamp(progress.started_at),
        updated_at: timestamp(progress.updated_at),
        offset: progress.offset,
        total: progress.total,
        digest: progress.digest.to_string(),
    }
}

/// Drives one Write stream until COMMIT, the client's end of stream, or an error, then frees
/// the ref before the last word (the COMMIT response or the error) goes out: a client that
/// carries on with the ref right after, through any replica, finds it free.
async fn write_session(
    store: ContentStore,
    neighbours: Neighbours,
    ns: String,
    lease: Option<String>,
    mut requests: mpsc::Receiver<Result<api::WriteContentRequest, Status>>,
    responses: &mpsc::Sender<Result<api::WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(first) = requests.recv().await.transpose()? else {
        return Ok(());
    };
    if first.r#ref.is_empty() {
        return Err(Status::invalid_argument("first message must have a reference (ref is empty)"));
    }
    // Under a lease the ingest is held from the start (and the lease must exist, as in containerd).
    if let Some(lease) = &lease {
        neighbours.leases.add(&ns, lease, "ingests", &first.r#ref).await?;
    }
    let expected = expected_of(&first.expected)?;
    let held = LeaseHold { neighbours: &neighbours, ns: &ns, lease: lease.as_deref() };
    let mut writer = match store.writer(&ns, &first.r#ref, first.total, expected.clone()).await {
        Ok(writer) => writer,
        Err(error) => {
            let status = to_status(error);
            // The blob is already here: clients take that as success, so it must be leased too.
            if status.code() == tonic::Code::AlreadyExists
                && let Some(expected) = &expected
            {
                held.hold(&expected.to_string()).await?;
            }
            return Err(status);
        }
    };
    let outcome = drive(&mut writer, first, &mut requests, responses, &held).await;
    writer.release().await;
    if let Some(last) = outcome? {
        let _ = responses.send(Ok(last)).await;
    }
    Ok(())
}

/// The lease a Write runs under, if any: what it commits is added to it.
struct LeaseHold<'a> {
    neighbours: &'a Neighbours,
    ns: &'a str,
    lease: Option<&'a str>,
}

impl LeaseHold<'_> {
    async fn hold(&self, digest: &str) -> Result<(), Status> {
        match self.lease {
            Some(lease) => self.neighbours.leases.add(self.ns, lease, "content", digest).await,
            None => Ok(()),
        }
    }
}

/// Answers each request of the stream; returns the COMMIT response, to be sent once the ref is free.
async fn drive(
    writer: &mut Writer,
    first: api::WriteContentRequest,
    requests: &mut mpsc::Receiver<Result<api::WriteContentRequest, Status>>,
    responses: &mpsc::Sender<Result<api::WriteContentResponse, Status>>,
    held: &LeaseHold<'_>,
) -> Result<Option<api::WriteContentResponse>, Status> {
    let mut request = first;
    loop {
        let action = api::WriteAction::try_from(request.action)
            .map_err(|_| Status::invalid_argument(format!("unknown write action {}", request.action)))?;
        writer.update(request.total, expected_of(&request.expected)?).await.map_err(to_status)?;
        // Under a lease the blob is held before it exists: the collector must never see it
        // committed and not yet held.
        let held_before = if action == api::WriteAction::Commit {
            let known = match expected_of(&request.expected)? {
                Some(expected) => Some(expected.to_string()),
                None if request.data.is_empty() => Some(writer.progress().map_err(to_status)?.digest.to_string()),
                None => None,
            };
            if let Some(digest) = &known {
                held.hold(digest).await?;
            }
            known
        } else {
            None
        };
        let progress = match action {
            api::WriteAction::Stat => writer.progress(),
            api::WriteAction::Write => writer.write(request.offset, request.data).await,
            api::WriteAction::Commit => writer.commit(request.offset, request.data, request.labels).await,
        };
        // An AlreadyExists here (committed by someone else meanwhile) was held above already.
        let progress = progress.map_err(to_status)?;
        if action == api::WriteAction::Commit {
            let digest = progress.digest.to_string();
            if held_before.as_deref() != Some(digest.as_str())
                && let Err(status) = held.hold(&digest).await
            {
                // The blob is committed; an error now would make the client retry a finished write.
                tracing::warn!(digest, "could not add the blob to its lease: {status}");
            }
            return Ok(Some(response(action, progress)));
        }
        if responses.send(Ok(response(action, progress))).await.is_err() {
            return Ok(None);
        }
        request = match requests.recv().await {
            Some(Ok(request)) => request,
            // End of stream, or the client went away: the ingest stays for a later resume.
            Some(Err(_)) | None => return Ok(None),
        };
    }
}
