//! Driving the content service with containerd's own client crate, as containerd users do.

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    InfoRequest, ReadContentRequest, StatusRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::Channel;

/// Wraps `message` in a request for namespace `ns`.
pub fn in_namespace<T>(message: T, ns: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("containerd-namespace", ns.parse().expect("namespace is ASCII"));
    request
}

/// A STAT request for `reference`.
pub fn stat(reference: &str) -> WriteContentRequest {
    WriteContentRequest { action: WriteAction::Stat as i32, r#ref: reference.into(), ..Default::default() }
}

/// A WRITE of `data` at `offset`.
pub fn write(reference: &str, offset: i64, data: &[u8]) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Write as i32,
        r#ref: reference.into(),
        offset,
        data: data.to_vec(),
        ..Default::default()
    }
}

/// A COMMIT of an ingest holding `total` bytes, expecting `digest`.
///
/// Like containerd's client it carries the current offset: containerd treats a COMMIT at
/// offset 0 as a restart of the ingest.
pub fn commit(reference: &str, total: i64, digest: &str) -> WriteContentRequest {
    commit_at(reference, total, total, digest)
}

/// A COMMIT sent at `offset` that expects `total` bytes with `digest`.
pub fn commit_at(reference: &str, offset: i64, total: i64, digest: &str) -> WriteContentRequest {
    WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference.into(),
        offset,
        total,
        expected: digest.into(),
        ..Default::default()
    }
}

/// One open Write stream: send requests one at a time and read each response.
pub struct Writer {
    sender: Option<mpsc::Sender<WriteContentRequest>>,
    responses: tonic::Streaming<WriteContentResponse>,
}

impl Writer {
    /// Opens a Write stream whose first message is `first`; returns the first response's error
    /// when the server refuses it.
    pub async fn open(
        client: &mut ContentClient<Channel>,
        ns: &str,
        first: WriteContentRequest,
    ) -> Result<(Writer, WriteContentResponse), tonic::Status> {
        let (sender, receiver) = mpsc::channel(16);
        sender.send(first).await.expect("stream open");
        let mut responses = client.write(in_namespace(ReceiverStream::new(receiver), ns)).await?.into_inner();
        let response = next(&mut responses).await?;
        Ok((Writer { sender: Some(sender), responses }, response))
    }

    /// Sends one request and waits for its response.
    pub async fn send(&mut self, request: WriteContentRequest) -> Result<WriteContentResponse, tonic::Status> {
        self.sender.as_ref().expect("writer open").send(request).await.expect("stream open");
        next(&mut self.responses).await
    }

    /// Sends a request without waiting for its response (pipelining).
    pub async fn send_only(&mut self, request: WriteContentRequest) {
        self.sender.as_ref().expect("writer open").send(request).await.expect("stream open");
    }

    /// Reads the next response.
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

/// Writes `data` under `reference` in one stream and commits it with its digest.
pub async fn ingest(client: &mut ContentClient<Channel>, ns: &str, reference: &str, data: &[u8]) -> String {
    let digest = crate::digest_of(data);
    let (mut writer, _) = Writer::open(client, ns, stat(reference)).await.expect("open write");
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        writer.send(write(reference, (i << 20) as i64, chunk)).await.expect("write");
    }
    let done = writer.send(commit(reference, data.len() as i64, &digest)).await.expect("commit");
    assert_eq!(done.digest, digest);
    digest
}

/// Reads a whole blob.
pub async fn read_all(client: &mut ContentClient<Channel>, ns: &str, digest: &str) -> Result<Vec<u8>, tonic::Status> {
    let request = ReadContentRequest { digest: digest.into(), offset: 0, size: 0 };
    let mut stream = client.read(in_namespace(request, ns)).await?.into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk?.data);
    }
    Ok(data)
}

/// Info of a blob, or its error.
pub async fn info(
    client: &mut ContentClient<Channel>,
    ns: &str,
    digest: &str,
) -> Result<containerd_client::services::v1::Info, tonic::Status> {
    let response = client.info(in_namespace(InfoRequest { digest: digest.into() }, ns)).await?;
    Ok(response.into_inner().info.expect("info in response"))
}

/// Offset of an ingest according to Status.
pub async fn status_offset(
    client: &mut ContentClient<Channel>,
    ns: &str,
    reference: &str,
) -> Result<i64, tonic::Status> {
    let response = client.status(in_namespace(StatusRequest { r#ref: reference.into() }, ns)).await?;
    Ok(response.into_inner().status.expect("status in response").offset)
}
