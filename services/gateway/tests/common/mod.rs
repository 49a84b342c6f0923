//! A fake content backend (in its own runtime, so it can be killed like a process) and an
//! in-process gateway in front of it, shared by the gateway's integration tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use berth_api::containerd::services::content::v1 as content;
use berth_api::containerd::services::content::v1::content_server::{Content, ContentServer};
use berth_core::connect::{Address, lazy_channel};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A content backend: Info names the replica (and echoes the caller's traceparent), Read
/// streams `size` bytes in 1 MiB chunks, Write echoes each message's end offset, List streams
/// until the caller goes away (and reports that), everything else is Unimplemented.
struct Fake {
    name: String,
    calls: Arc<AtomicUsize>,
    cancelled: tokio::sync::mpsc::Sender<()>,
}

#[tonic::async_trait]
impl Content for Fake {
    async fn info(&self, request: Request<content::InfoRequest>) -> Result<Response<content::InfoResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let digest = request.get_ref().digest.clone();
        if digest == "missing" {
            let mut status = Status::not_found("content digest missing: not found");
            status.metadata_mut().insert("x-detail", "from-the-backend".parse().unwrap());
            return Err(status);
        }
        let traceparent = request.metadata().get("traceparent").map(|v| v.to_str().unwrap().to_string());
        let labels = traceparent.into_iter().map(|t| ("traceparent".to_string(), t)).collect();
        let info = content::Info { digest, size: 0, created_at: None, updated_at: None, labels };
        let mut response = Response::new(content::InfoResponse { info: Some(info) });
        response.metadata_mut().insert("x-replica", self.name.parse().unwrap());
        Ok(response)
    }

    type ReadStream = Responses<content::ReadContentResponse>;

    async fn read(&self, request: Request<content::ReadContentRequest>) -> Result<Response<Self::ReadStream>, Status> {
        const CHUNK: i64 = 1 << 20;
        let size = request.get_ref().size;
        let chunks = (0..size).step_by(CHUNK as usize).map(move |offset| {
            let len = CHUNK.min(size - offset) as usize;
            Ok(content::ReadContentResponse { offset, data: vec![(offset / CHUNK) as u8; len] })
        });
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    type WriteStream = Responses<content::WriteContentResponse>;

    async fn write(
        &self,
        request: Request<Streaming<content::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(message) = inbound.next().await {
                let reply = message.and_then(|m| {
                    if m.r#ref == "fail" && m.offset > 0 {
                        return Err(Status::data_loss(format!("ref {} broke at offset {}", m.r#ref, m.offset)));
                    }
                    let offset = m.offset + m.data.len() as i64;
                    Ok(content::WriteContentResponse { action: m.action, offset, total: m.total, ..Default::default() })
                });
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ListStream = Responses<content::ListContentResponse>;

    async fn list(&self, _: Request<content::ListContentRequest>) -> Result<Response<Self::ListStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let cancelled = self.cancelled.clone();
        tokio::spawn(async move {
            loop {
                let page = content::ListContentResponse { info: vec![content::Info::default()] };
                tokio::select! {
                    sent = tx.send(Ok(page)) => if sent.is_err() { break },
                    () = tx.closed() => break,
                }
            }
            let _ = cancelled.send(()).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn update(&self, _: Request<content::UpdateRequest>) -> Result<Response<content::UpdateResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn delete(&self, _: Request<content::DeleteContentRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn status(&self, _: Request<content::StatusRequest>) -> Result<Response<content::StatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_statuses(
        &self,
        _: Request<content::ListStatusesRequest>,
    ) -> Result<Response<content::ListStatusesResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn abort(&self, _: Request<content::AbortRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// A fake backend in its own runtime, so that killing it drops every connection at once, as
/// a dying process would (the socket file stays behind, stale).
pub struct Backend {
    runtime: Option<tokio::runtime::Runtime>,
    calls: Arc<AtomicUsize>,
    pub cancelled: tokio::sync::mpsc::Receiver<()>,
}

impl Backend {
    pub async fn start(path: &Path, name: &str) -> Backend {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (cancelled_tx, cancelled) = tokio::sync::mpsc::channel(8);
        let fake = Fake { name: name.to_string(), calls: calls.clone(), cancelled: cancelled_tx };
        let socket = path.to_path_buf();
        runtime.spawn(async move {
            let listener = berth_core::listen::bind(&socket).await.unwrap();
            tonic::transport::Server::builder()
                .add_service(ContentServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
        });
        wait_for_socket(path).await;
        Backend { runtime: Some(runtime), calls, cancelled }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn wait_for_socket(path: &Path) {
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing listens at {}", path.display());
}

/// Starts a gateway in this process; returns a channel to it.
pub async fn gateway(dir: &Path, backends: &[(&str, Vec<PathBuf>)], tcp: Option<String>) -> Channel {
    let socket = dir.join("gateway.sock");
    let backends: BTreeMap<String, Vec<Address>> = backends
        .iter()
        .map(|(name, paths)| (name.to_string(), paths.iter().cloned().map(Address::Unix).collect()))
        .collect();
    let config = berth_gateway::Config { address: socket.clone(), tcp, backends };
    tokio::spawn(async move { berth_gateway::serve(config, std::future::pending()).await.unwrap() });
    wait_for_socket(&socket).await;
    lazy_channel(&Address::Unix(socket))
}
