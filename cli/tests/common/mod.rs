//! An in-process fake of containerd's Content and Version services on a temp unix socket: just
//! enough behaviour (kept in memory) to drive the CLI, plus a record of what the client sent.

#![allow(dead_code)] // each test file uses a different part

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use berth_api::containerd::services::content::v1::content_server::{Content, ContentServer};
use berth_api::containerd::services::content::v1::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, InfoResponse, ListContentRequest, ListContentResponse,
    ListStatusesRequest, ListStatusesResponse, ReadContentRequest, ReadContentResponse, Status as IngestStatus,
    StatusRequest, StatusResponse, UpdateRequest, UpdateResponse, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use berth_api::containerd::services::version::v1::VersionResponse;
use berth_api::containerd::services::version::v1::version_server::{Version, VersionServer};
use berth_api::prost_types::Timestamp;
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status, Streaming};

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

#[derive(Clone, Debug)]
pub struct Blob {
    pub data: Vec<u8>,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
}

/// One request as the fake saw it on a Write stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub action: i32,
    pub reference: String,
    pub offset: i64,
    pub len: usize,
    pub expected: String,
    pub total: i64,
}

#[derive(Debug, Default)]
pub struct State {
    pub blobs: BTreeMap<String, Blob>,
    pub ingests: BTreeMap<String, Vec<u8>>,
    /// Namespace of every call, in order.
    pub namespaces: Vec<String>,
    /// Every Write request, in order (data left out).
    pub writes: Vec<Seen>,
    /// Largest number of WRITEs received but not yet answered.
    pub max_unanswered: usize,
    /// When set, WRITE answers are held back until the client stops sending for this long, so
    /// `max_unanswered` shows how many WRITEs the client keeps in flight.
    pub hold_answers: Option<Duration>,
    /// Fail the WRITE with this index (0-based, over the whole fake's life) with this status.
    pub fail_write: Option<(usize, Status)>,
    /// Delay Version answers by this much.
    pub version_delay: Option<Duration>,
    /// Chunk size of Read responses.
    pub read_chunk: usize,
}

#[derive(Clone)]
pub struct Fake {
    state: Arc<Mutex<State>>,
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    fake: Fake,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves the fake on a fresh socket in a temp dir. Needs a tokio runtime.
    pub async fn start() -> Server {
        let dir = tempfile::Builder::new().prefix("berth-cli-test-").tempdir().expect("temp dir");
        let socket = dir.path().join("berth.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind socket");
        let fake = Fake { state: Arc::new(Mutex::new(State { read_chunk: 7, ..State::default() })) };
        let service = fake.clone();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(ContentServer::new(service.clone()))
                .add_service(VersionServer::new(service))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .expect("fake server");
        });
        Server { dir, socket, fake, task }
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.fake.state.lock().expect("state lock")
    }

    /// Puts a committed blob in the store; returns its digest.
    pub fn add_blob(&self, data: &[u8], labels: &[(&str, &str)]) -> String {
        let digest = digest_of(data);
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.state().blobs.insert(
            digest.clone(),
            Blob { data: data.to_vec(), labels, created: SystemTime::now() - Duration::from_secs(120) },
        );
        digest
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    fn record<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let namespace = berth_core::namespace::of(request)?;
        self.lock().namespaces.push(namespace);
        Ok(())
    }

    fn info(digest: &str, blob: &Blob) -> Info {
        Info {
            digest: digest.to_string(),
            size: blob.data.len() as i64,
            created_at: Some(Timestamp::from(blob.created)),
            updated_at: Some(Timestamp::from(blob.created)),
            labels: blob.labels.clone(),
        }
    }

    /// Runs one Write call; answers go out through `answers`.
    async fn drive_write(
        &self,
        mut incoming: Streaming<WriteContentRequest>,
        answers: mpsc::Sender<Result<WriteContentResponse, Status>>,
    ) -> Result<(), Status> {
        let mut reference = String::new();
        let mut held: VecDeque<WriteContentResponse> = VecDeque::new();
        let hold = self.lock().hold_answers;
        loop {
            let next = match hold {
                Some(idle) if !held.is_empty() => match tokio::time::timeout(idle, incoming.message()).await {
                    Ok(next) => next,
                    Err(_) => {
                        // The client stopped sending: it waits for answers.
                        flush(&mut held, &answers).await;
                        continue;
                    }
                },
                _ => incoming.message().await,
            };
            let Some(request) = next? else { return Ok(()) };
            self.lock().writes.push(Seen {
                action: request.action,
                reference: request.r#ref.clone(),
                offset: request.offset,
                len: request.data.len(),
                expected: request.expected.clone(),
                total: request.total,
            });
            if reference.is_empty() {
                reference = request.r#ref.clone();
            }
            if reference.is_empty() {
                return Err(Status::invalid_argument("first message must have a reference"));
            }
            match WriteAction::try_from(request.action) {
                Ok(WriteAction::Stat) => {
                    let offset = {
                        let state = self.lock();
                        if !request.expected.is_empty() && state.blobs.contains_key(&request.expected) {
                            return Err(Status::already_exists(format!("content {} already exists", request.expected)));
                        }
                        state.ingests.get(&reference).map_or(0, |data| data.len() as i64)
                    };
                    let answer = WriteContentResponse {
                        action: WriteAction::Stat as i32,
                        offset,
                        total: request.total,
                        ..Default::default()
                    };
                    let _ = answers.send(Ok(answer)).await;
                }
                Ok(WriteAction::Write) => {
                    let offset = {
                        let state = self.lock();
                        let index =
                            state.writes.iter().filter(|seen| seen.action == WriteAction::Write as i32).count() - 1;
                        if let Some((at, status)) = state.fail_write.clone()
                            && at == index
                        {
                            return Err(status);
                        }
                        drop(state);
                        self.apply(&reference, &request)?
                    };
                    held.push_back(WriteContentResponse {
                        action: WriteAction::Write as i32,
                        offset,
                        ..Default::default()
                    });
                    {
                        let mut state = self.lock();
                        state.max_unanswered = state.max_unanswered.max(held.len());
                    }
                    if hold.is_none() {
                        flush(&mut held, &answers).await;
                    }
                }
                Ok(WriteAction::Commit) => {
                    flush(&mut held, &answers).await;
                    // Like containerd, a COMMIT is also a (possibly empty) write at its offset.
                    self.apply(&reference, &request)?;
                    let answer = self.commit(&reference, request)?;
                    let _ = answers.send(Ok(answer)).await;
                }
                Err(_) => return Err(Status::invalid_argument(format!("unknown action {}", request.action))),
            }
        }
    }

    /// containerd's rule for WRITE and COMMIT: offset 0 truncates, another offset must be the
    /// current one; then the data is appended. Returns the new offset.
    fn apply(&self, reference: &str, request: &WriteContentRequest) -> Result<i64, Status> {
        let mut state = self.lock();
        let data = state.ingests.entry(reference.to_string()).or_default();
        if request.offset == 0 {
            data.clear();
        } else if request.offset != data.len() as i64 {
            return Err(Status::out_of_range(format!(
                "write @{} must occur at current offset {}",
                request.offset,
                data.len()
            )));
        }
        data.extend_from_slice(&request.data);
        Ok(data.len() as i64)
    }

    fn commit(&self, reference: &str, request: WriteContentRequest) -> Result<WriteContentResponse, Status> {
        let mut state = self.lock();
        let data = state.ingests.get(reference).cloned().unwrap_or_default();
        let digest = digest_of(&data);
        if request.total > 0 && request.total != data.len() as i64 {
            return Err(Status::failed_precondition(format!(
                "unexpected commit size {}, expected {}",
                data.len(),
                request.total
            )));
        }
        if !request.expected.is_empty() && request.expected != digest {
            return Err(Status::failed_precondition(format!(
                "unexpected commit digest {digest}, expected {}",
                request.expected
            )));
        }
        state.ingests.remove(reference);
        if state.blobs.contains_key(&digest) {
            return Err(Status::already_exists(format!("content {digest} already exists")));
        }
        let size = data.len() as i64;
        state.blobs.insert(digest.clone(), Blob { data, labels: request.labels, created: SystemTime::now() });
        Ok(WriteContentResponse { action: WriteAction::Commit as i32, offset: size, digest, ..Default::default() })
    }
}

async fn flush(
    held: &mut VecDeque<WriteContentResponse>,
    answers: &mpsc::Sender<Result<WriteContentResponse, Status>>,
) {
    while let Some(answer) = held.pop_front() {
        let _ = answers.send(Ok(answer)).await;
    }
}

type Answers<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Content for Fake {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        self.record(&request)?;
        let digest = request.into_inner().digest;
        let state = self.lock();
        let blob = state.blobs.get(&digest).ok_or_else(|| Status::not_found(format!("content {digest}: not found")))?;
        Ok(Response::new(InfoResponse { info: Some(Fake::info(&digest, blob)) }))
    }

    async fn update(&self, request: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        self.record(&request)?;
        let request = request.into_inner();
        let info = request.info.unwrap_or_default();
        let mut state = self.lock();
        let blob = state
            .blobs
            .get_mut(&info.digest)
            .ok_or_else(|| Status::not_found(format!("content {}: not found", info.digest)))?;
        for path in request.update_mask.unwrap_or_default().paths {
            let Some(key) = path.strip_prefix("labels.") else {
                return Err(Status::invalid_argument(format!("cannot update {path:?}")));
            };
            match info.labels.get(key) {
                Some(value) => blob.labels.insert(key.to_string(), value.clone()),
                None => blob.labels.remove(key),
            };
        }
        Ok(Response::new(UpdateResponse { info: Some(Fake::info(&info.digest, blob)) }))
    }

    type ListStream = Answers<ListContentResponse>;

    async fn list(&self, request: Request<ListContentRequest>) -> Result<Response<Self::ListStream>, Status> {
        self.record(&request)?;
        let filters = request.into_inner().filters;
        let state = self.lock();
        // Only `digest==D` is understood, enough to see that filters are sent.
        let infos: Vec<Info> = state
            .blobs
            .iter()
            .filter(|(digest, _)| {
                filters.is_empty()
                    || filters.iter().any(|filter| filter.strip_prefix("digest==") == Some(digest.as_str()))
            })
            .map(|(digest, blob)| Fake::info(digest, blob))
            .collect();
        // One blob per page, so the client has to gather pages.
        let (sender, receiver) = mpsc::channel(infos.len().max(1));
        for info in infos {
            let _ = sender.try_send(Ok(ListContentResponse { info: vec![info] }));
        }
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn delete(&self, request: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        self.record(&request)?;
        let digest = request.into_inner().digest;
        match self.lock().blobs.remove(&digest) {
            Some(_) => Ok(Response::new(())),
            None => Err(Status::not_found(format!("content {digest}: not found"))),
        }
    }

    type ReadStream = Answers<ReadContentResponse>;

    async fn read(&self, request: Request<ReadContentRequest>) -> Result<Response<Self::ReadStream>, Status> {
        self.record(&request)?;
        let digest = request.into_inner().digest;
        let state = self.lock();
        let blob = state.blobs.get(&digest).ok_or_else(|| Status::not_found(format!("content {digest}: not found")))?;
        let chunk = state.read_chunk.max(1);
        let chunks: Vec<_> = blob.data.chunks(chunk).map(<[u8]>::to_vec).collect();
        let (sender, receiver) = mpsc::channel(chunks.len().max(1));
        for (index, data) in chunks.into_iter().enumerate() {
            let _ = sender.try_send(Ok(ReadContentResponse { offset: (index * chunk) as i64, data }));
        }
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        self.record(&request)?;
        let reference = request.into_inner().r#ref;
        let state = self.lock();
        let data =
            state.ingests.get(&reference).ok_or_else(|| Status::not_found(format!("ref {reference}: not found")))?;
        Ok(Response::new(StatusResponse {
            status: Some(IngestStatus { r#ref: reference.clone(), offset: data.len() as i64, ..Default::default() }),
        }))
    }

    async fn list_statuses(
        &self,
        request: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        self.record(&request)?;
        let state = self.lock();
        let statuses = state
            .ingests
            .iter()
            .map(|(reference, data)| IngestStatus {
                r#ref: reference.clone(),
                offset: data.len() as i64,
                total: 1000,
                started_at: Some(Timestamp::from(SystemTime::now() - Duration::from_secs(30))),
                updated_at: Some(Timestamp::from(SystemTime::now())),
                expected: String::new(),
            })
            .collect();
        Ok(Response::new(ListStatusesResponse { statuses }))
    }

    type WriteStream = Answers<WriteContentResponse>;

    async fn write(
        &self,
        request: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        self.record(&request)?;
        let incoming = request.into_inner();
        let (sender, receiver) = mpsc::channel(64);
        let fake = self.clone();
        tokio::spawn(async move {
            if let Err(status) = fake.drive_write(incoming, sender.clone()).await {
                let _ = sender.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn abort(&self, request: Request<AbortRequest>) -> Result<Response<()>, Status> {
        self.record(&request)?;
        let reference = request.into_inner().r#ref;
        self.lock().ingests.remove(&reference);
        Ok(Response::new(()))
    }
}

#[tonic::async_trait]
impl Version for Fake {
    async fn version(&self, request: Request<()>) -> Result<Response<VersionResponse>, Status> {
        self.record(&request)?;
        let delay = self.lock().version_delay;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        Ok(Response::new(VersionResponse { version: "9.9.9-fake".into(), revision: "f4k3".into() }))
    }
}
