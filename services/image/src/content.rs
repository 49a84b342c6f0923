//! The content service as a pull uses it: ask what is there, write blobs (resumable ingests
//! under the pull's lease), set labels, read small blobs back.

use std::collections::HashMap;

use berth_api::containerd::services::content::v1 as api;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_peers::{PeerChannel, request};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::metadata::MetadataValue;

/// Bytes per WRITE message: large enough to keep the message count low, small enough to
/// pipeline a few.
pub const WRITE_CHUNK: usize = 1 << 20;
/// WRITE messages sent ahead of the content service's answers.
const IN_FLIGHT: usize = 2;

/// The content service, in one namespace, under one lease.
#[derive(Clone)]
pub struct Content {
    channel: PeerChannel,
    namespace: String,
    lease: Option<String>,
}

impl Content {
    pub fn new(channel: PeerChannel, namespace: &str, lease: Option<String>) -> Content {
        Content { channel, namespace: namespace.to_string(), lease }
    }

    fn client(&self) -> ContentClient<PeerChannel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(16 << 20).max_encoding_message_size(16 << 20)
    }

    fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut call = request(&self.namespace, message);
        if let Some(lease) = &self.lease
            && let Ok(value) = MetadataValue::try_from(lease.as_str())
        {
            call.metadata_mut().insert(berth_peers::leases::METADATA_KEY, value);
        }
        call
    }

    /// The blob's labels when the namespace has it, None when not.
    pub async fn info(&self, digest: &str) -> Result<Option<HashMap<String, String>>, Status> {
        match self.client().info(self.call(api::InfoRequest { digest: digest.to_string() })).await {
            Ok(response) => Ok(Some(response.into_inner().info.map(|i| i.labels).unwrap_or_default())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Sets `labels` on the blob, leaving its other labels alone.
    pub async fn set_labels(&self, digest: &str, labels: HashMap<String, String>) -> Result<(), Status> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let update = api::UpdateRequest {
            info: Some(api::Info { digest: digest.to_string(), labels, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        self.client().update(self.call(update)).await?;
        Ok(())
    }

    /// Reads a whole (small) blob, refusing one larger than `limit`.
    pub async fn read_all(&self, digest: &str, limit: usize) -> Result<Vec<u8>, Status> {
        let call = self.call(api::ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 });
        let mut stream = self.client().read(call).await?.into_inner();
        let mut bytes = Vec::new();
        while let Some(message) = stream.message().await? {
            bytes.extend_from_slice(&message.data);
            if bytes.len() > limit {
                return Err(Status::failed_precondition(format!("blob {digest} is larger than {limit} bytes")));
            }
        }
        Ok(bytes)
    }

    /// Streams a blob's bytes as the content service sends them.
    pub async fn read(&self, digest: &str) -> Result<tonic::Streaming<api::ReadContentResponse>, Status> {
        let call = self.call(api::ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 });
        Ok(self.client().read(call).await?.into_inner())
    }

    /// Opens (or resumes) the ingest `reference` of a blob of `total` bytes with digest
    /// `expected`. AlreadyExists when the blob is there already.
    pub async fn ingest(&self, reference: &str, total: i64, expected: &str) -> Result<Ingest, Status> {
        let (requests, outgoing) = mpsc::channel(IN_FLIGHT);
        let stat = api::WriteContentRequest {
            action: api::WriteAction::Stat as i32,
            r#ref: reference.to_string(),
            total,
            expected: expected.to_string(),
            ..Default::default()
        };
        requests.send(stat).await.map_err(|_| closed())?;
        let mut responses = self.client().write(self.call(ReceiverStream::new(outgoing))).await?.into_inner();
        let first = responses.message().await?.ok_or_else(closed)?;
        // Answers to WRITEs are read as they come, so that the service never waits on us.
        let (done, outcome) = oneshot::channel();
        tokio::spawn(async move {
            let mut last = None;
            let result = loop {
                match responses.message().await {
                    Ok(Some(response)) => last = Some(response),
                    Ok(None) => break last.ok_or_else(closed),
                    Err(status) => break Err(status),
                }
            };
            let _ = done.send(result);
        });
        Ok(Ingest {
            requests,
            outcome,
            reference: reference.to_string(),
            total,
            expected: expected.to_string(),
            offset: first.offset,
        })
    }

    /// Drops the ingest `reference` (after it proved to hold the wrong bytes).
    pub async fn abort(&self, reference: &str) -> Result<(), Status> {
        match self.client().abort(self.call(api::AbortRequest { r#ref: reference.to_string() })).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(()),
            Err(status) => Err(status),
        }
    }

    /// Writes a small blob in one go (a manifest or index), with its labels.
    pub async fn write_all(
        &self,
        reference: &str,
        expected: &str,
        bytes: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let total = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let mut ingest = match self.ingest(reference, total, expected).await {
            Ok(ingest) => ingest,
            Err(status) if status.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(status) => return Err(status),
        };
        ingest.write_from(0, bytes.to_vec()).await?;
        match ingest.commit(labels).await {
            Ok(()) => Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(status) => Err(status),
        }
    }
}

fn closed() -> Status {
    Status::unavailable("the content service closed the write stream")
}

/// One open Write stream.
pub struct Ingest {
    requests: mpsc::Sender<api::WriteContentRequest>,
    outcome: oneshot::Receiver<Result<api::WriteContentResponse, Status>>,
    reference: String,
    total: i64,
    expected: String,
    /// Bytes the ingest holds.
    pub offset: i64,
}

impl Ingest {
    /// Sends `data` to be written at `offset` (0 restarts the ingest).
    pub async fn write_from(&mut self, offset: i64, data: Vec<u8>) -> Result<(), Status> {
        let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
        let write = api::WriteContentRequest {
            action: api::WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset,
            data,
            ..Default::default()
        };
        if self.requests.send(write).await.is_err() {
            // The service ended the stream: its reason is in the outcome.
            return Err(self.failure().await);
        }
        self.offset = offset + len;
        Ok(())
    }

    async fn failure(&mut self) -> Status {
        match (&mut self.outcome).await {
            Ok(Err(status)) => status,
            _ => closed(),
        }
    }

    /// Ends the stream without committing, once the content service has taken everything
    /// sent: the ingest keeps it for a later resume.
    pub async fn close(self) {
        drop(self.requests);
        let _ = self.outcome.await;
    }

    /// Commits the ingest with `labels`; the content service verifies size and digest.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<(), Status> {
        let commit = api::WriteContentRequest {
            action: api::WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: self.offset,
            labels,
            ..Default::default()
        };
        if self.requests.send(commit).await.is_err() {
            return Err(self.failure().await);
        }
        drop(self.requests);
        match self.outcome.await {
            Ok(Ok(response)) if response.action == api::WriteAction::Commit as i32 => Ok(()),
            Ok(Ok(_)) => Err(closed()),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(closed()),
        }
    }
}
