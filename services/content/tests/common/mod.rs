//! An in-process berth-content on a temp unix socket, and a client built from berth-api's
//! generated code, the way containerd clients drive it.

#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{
    InfoRequest, ReadContentRequest, StatusRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use berth_content::{ContentService, ContentStore, server};
use berth_core::connect::{Address, lazy_channel};
use futures::StreamExt;
use sha2::Digest as _;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::Channel;

pub type Client = ContentClient<Channel>;

pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// A running content service over `root`; stop it with [`Server::stop`].
pub struct Server {
    pub root: PathBuf,
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(root: &Path) -> Server {
        let socket = root.join("content.sock");
        // A previous server's store may take a moment to be dropped by its last connection.
        let mut attempts = 0;
        let records = loop {
            match berth_store::Embedded::open(&root.join("content.redb")) {
                Ok(records) => break records,
                Err(e) if attempts < 100 => {
                    attempts += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("open records: {e}"),
            }
        };
        let store = ContentStore::open(root, Arc::new(records)).expect("open store");
        let listener = server::bind(&socket).await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::serve(listener, ContentService::new(store), async {
                let _ = stopped.await;
            })
            .await
            .expect("serve");
        });
        Server { root: root.to_path_buf(), socket, stop: Some(stop), task: Some(task) }
    }

    pub fn client(&self) -> Client {
        ContentClient::new(lazy_channel(&Address::Unix(self.socket.clone())))
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20)
    }

    /// Stops accepting calls and waits for open ones to end (drop clients first).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("server stops").expect("server task");
        }
    }

    /// Files in blobs/sha256.
    pub fn blob_files(&self) -> Vec<String> {
        let dir = self.root.join("blobs/sha256");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Wraps `message` in a request for namespace `ns`.
pub fn in_ns<T>(message: T, ns: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("containerd-namespace", ns.parse().expect("namespace is ASCII"));
    request
}

pub fn stat(reference: &str) -> WriteContentRequest {
    WriteContentRequest { action: WriteAction::Stat as i32, r#ref: reference.into(), ..Default::default() }
}

pub fn stat_expecting(reference: &str, total: i64, expected: &str) -> WriteContentRequest {
    WriteContentRequest { total, expected: expected.into(), ..stat(reference) }
}

/// A WRITE at `offset`; like containerd's client, later messages leave the ref empty.
pub fn write(offset: i64, data: &[u8]) -> WriteContentRequest {
    WriteContentRequest { action: WriteAction::Write as i32, offset, data: data.to_vec(), ..Default::default() }
}

pub fn commit(offset: i64, total: i64, digest: &str) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Commit as i32,
        offset,
        total,
        expected: digest.into(),
        ..Default::default()
    }
}

pub fn commit_labelled(offset: i64, total: i64, digest: &str, labels: &[(&str, &str)]) -> WriteContentRequest {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    WriteContentRequest { labels, ..commit(offset, total, digest) }
}

/// One open Write stream.
pub struct Writer {
    sender: mpsc::Sender<WriteContentRequest>,
    responses: tonic::Streaming<WriteContentResponse>,
}

impl Writer {
    /// Opens a stream with `first`; the error of its first response when refused.
    pub async fn open(
        client: &mut Client,
        ns: &str,
        first: WriteContentRequest,
    ) -> Result<(Writer, WriteContentResponse), tonic::Status> {
        let (sender, receiver) = mpsc::channel(16);
        sender.send(first).await.expect("stream open");
        let mut responses = client.write(in_ns(ReceiverStream::new(receiver), ns)).await?.into_inner();
        let response = next(&mut responses).await?;
        Ok((Writer { sender, responses }, response))
    }

    pub async fn send(&mut self, request: WriteContentRequest) -> Result<WriteContentResponse, tonic::Status> {
        self.sender.send(request).await.expect("stream open");
        next(&mut self.responses).await
    }

    pub async fn send_only(&mut self, request: WriteContentRequest) {
        self.sender.send(request).await.expect("stream open");
    }

    pub async fn receive(&mut self) -> Result<WriteContentResponse, tonic::Status> {
        next(&mut self.responses).await
    }
}

async fn next(responses: &mut tonic::Streaming<WriteContentResponse>) -> Result<WriteContentResponse, tonic::Status> {
    match responses.next().await {
        Some(result) => result,
        None => Err(tonic::Status::unknown("write stream ended without a response")),
    }
}

/// Writes `data` under `reference` in 1 MiB pieces and commits it with `labels`.
pub async fn ingest_labelled(
    client: &mut Client,
    ns: &str,
    reference: &str,
    data: &[u8],
    labels: &[(&str, &str)],
) -> String {
    let digest = digest_of(data);
    let (mut writer, _) = Writer::open(client, ns, stat(reference)).await.expect("open write");
    let mut offset = 0;
    for chunk in data.chunks(1 << 20) {
        let response = writer.send(write(offset, chunk)).await.expect("write");
        offset += chunk.len() as i64;
        assert_eq!(response.offset, offset);
    }
    let done = writer.send(commit_labelled(offset, data.len() as i64, &digest, labels)).await.expect("commit");
    assert_eq!(done.digest, digest);
    assert_eq!(done.offset, data.len() as i64);
    digest
}

pub async fn ingest(client: &mut Client, ns: &str, reference: &str, data: &[u8]) -> String {
    ingest_labelled(client, ns, reference, data, &[]).await
}

/// Reads `size` bytes from `offset` (0: to the end), checking each chunk's offset.
pub async fn read(
    client: &mut Client,
    ns: &str,
    digest: &str,
    offset: i64,
    size: i64,
) -> Result<Vec<u8>, tonic::Status> {
    let request = ReadContentRequest { digest: digest.into(), offset, size };
    let mut stream = client.read(in_ns(request, ns)).await?.into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        assert_eq!(chunk.offset, offset + data.len() as i64, "chunk offsets follow each other");
        data.extend_from_slice(&chunk.data);
    }
    Ok(data)
}

pub async fn read_all(client: &mut Client, ns: &str, digest: &str) -> Result<Vec<u8>, tonic::Status> {
    read(client, ns, digest, 0, 0).await
}

pub async fn info(
    client: &mut Client,
    ns: &str,
    digest: &str,
) -> Result<berth_api::containerd::services::content::v1::Info, tonic::Status> {
    let response = client.info(in_ns(InfoRequest { digest: digest.into() }, ns)).await?;
    Ok(response.into_inner().info.expect("info in response"))
}

pub async fn status(
    client: &mut Client,
    ns: &str,
    reference: &str,
) -> Result<berth_api::containerd::services::content::v1::Status, tonic::Status> {
    let response = client.status(in_ns(StatusRequest { r#ref: reference.into() }, ns)).await?;
    Ok(response.into_inner().status.expect("status in response"))
}

pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}
