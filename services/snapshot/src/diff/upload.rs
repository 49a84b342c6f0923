//! A layer written into the content service while it is being made.
//!
//! A blocking producer writes the layer into a [`ChunkWriter`]; its 1 MiB chunks go out as
//! Content.Write WRITE messages as soon as they are full, and a COMMIT with the digest the
//! producer computed ends the stream. Nothing is buffered beyond a few chunks, whatever the
//! layer's size. If anything fails, the producer stops at its next write, the stream is
//! closed and, for a ref made up here, the ingest is aborted.

use std::collections::HashMap;
use std::io::{self, Write};

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{
    AbortRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use berth_peers::PeerChannel;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;

use crate::diff::error::{DiffError, Result};

/// Bytes per WRITE message.
const CHUNK: usize = 1 << 20;
/// Chunks made ahead of the stream.
const AHEAD: usize = 4;

/// The blocking end: what the producer writes the layer into.
pub struct ChunkWriter {
    chunks: mpsc::Sender<Vec<u8>>,
    buffer: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK));
        self.chunks
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the content write stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// What the producer made: the digest and size of the bytes it wrote, plus labels to commit
/// them with.
pub struct Produced {
    pub digest: String,
    pub size: u64,
    pub labels: HashMap<String, String>,
}

/// Where a layer goes: content in `namespace`, under `reference`, held by `lease`.
pub struct Destination {
    pub content: PeerChannel,
    pub namespace: String,
    pub lease: Option<String>,
    pub reference: String,
    /// Whether `reference` was made up here (and its ingest is aborted on failure).
    pub generated: bool,
}

/// How the COMMIT went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    New,
    /// The blob was in content already (containerd clients take that as success).
    AlreadyExisted,
}

impl Destination {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = berth_peers::request(&self.namespace, message);
        if let Some(value) = self.lease.as_deref().and_then(|lease| MetadataValue::try_from(lease).ok()) {
            request.metadata_mut().insert(berth_peers::leases::METADATA_KEY, value);
        }
        request
    }

    fn failed(&self, status: tonic::Status) -> DiffError {
        DiffError::peer(format!("write the layer to content (ref {})", self.reference), status)
    }
}

/// Runs `produce` on a blocking thread, streaming what it writes into content, and commits it.
pub async fn upload<P>(to: &Destination, produce: P) -> Result<(Produced, Committed)>
where
    P: FnOnce(&mut ChunkWriter) -> Result<Produced> + Send + 'static,
{
    let (chunk_sender, mut chunks) = mpsc::channel::<Vec<u8>>(AHEAD);
    let producer = tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter { chunks: chunk_sender, buffer: Vec::with_capacity(CHUNK) };
        let produced = produce(&mut writer)?;
        writer.send().map_err(|e| DiffError::io("write layer", e))?;
        Ok::<_, DiffError>(produced)
    });

    let (requests, outgoing) = mpsc::channel::<WriteContentRequest>(2);
    let mut client = ContentClient::new(to.content.clone());
    let responses = client.write(to.request(ReceiverStream::new(outgoing))).await.map_err(|s| to.failed(s))?;
    let mut answers = tokio::spawn(answers(responses.into_inner()));

    // Forward the chunks until the producer is done, or content gave up.
    let mut offset = 0i64;
    let mut content_ended = None;
    while let Some(data) = chunks.recv().await {
        let len = data.len() as i64;
        let write = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: to.reference.clone(),
            offset,
            data,
            ..Default::default()
        };
        tokio::select! {
            sent = requests.send(write) => if sent.is_err() {
                // Content stopped reading: its answer says why.
                content_ended = Some((&mut answers).await);
                break;
            },
            ended = &mut answers => { content_ended = Some(ended); break },
        }
        offset += len;
    }
    drop(chunks);
    let produced = producer.await.map_err(|e| DiffError::Internal(format!("diff task failed: {e}")));

    let outcome = match (content_ended, produced) {
        (Some(ended), _) => Err(match flatten(ended) {
            Err(status) => to.failed(status),
            Ok(_) => DiffError::Internal("content ended the write before the commit".to_string()),
        }),
        (None, Ok(Ok(produced))) if produced.size as i64 == offset => {
            let commit = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: to.reference.clone(),
                offset,
                total: offset,
                expected: produced.digest.clone(),
                labels: produced.labels.clone(),
                ..Default::default()
            };
            if requests.send(commit).await.is_err() {
                tracing::debug!("content closed the write stream before the commit");
            }
            // Content answers the COMMIT and ends the stream on its own.
            match flatten((&mut answers).await) {
                Ok(Some(_)) => Ok((produced, Committed::New)),
                Err(status) if status.code() == tonic::Code::AlreadyExists => Ok((produced, Committed::AlreadyExisted)),
                Err(status) => Err(to.failed(status)),
                Ok(None) => Err(DiffError::Internal("content ended the write without committing".to_string())),
            }
        }
        (None, Ok(Ok(produced))) => {
            Err(DiffError::Internal(format!("the layer has {} bytes but {offset} were sent", produced.size)))
        }
        (None, Ok(Err(error)) | Err(error)) => Err(error),
    };
    // Closing the requests ends an unfinished session, which frees the ref.
    drop(requests);
    if outcome.is_err() {
        abort(to, answers).await;
    }
    outcome
}

/// Reads Write's answers until the COMMIT's (returned), the end, or an error.
async fn answers(
    mut responses: tonic::Streaming<WriteContentResponse>,
) -> Result<Option<WriteContentResponse>, tonic::Status> {
    while let Some(response) = responses.message().await? {
        if response.action == WriteAction::Commit as i32 {
            return Ok(Some(response));
        }
    }
    Ok(None)
}

fn flatten<T>(joined: Result<Result<T, tonic::Status>, tokio::task::JoinError>) -> Result<T, tonic::Status> {
    joined.map_err(|e| tonic::Status::internal(format!("write answers task failed: {e}")))?
}

/// After a failure: lets the write stream end, then drops a made-up ref's ingest.
async fn abort(
    to: &Destination,
    answers: tokio::task::JoinHandle<Result<Option<WriteContentResponse>, tonic::Status>>,
) {
    if !answers.is_finished() {
        let _ = answers.await;
    }
    if !to.generated {
        return;
    }
    let abort = AbortRequest { r#ref: to.reference.clone() };
    match ContentClient::new(to.content.clone()).abort(to.request(abort)).await {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::NotFound => {}
        Err(status) => tracing::warn!(reference = to.reference, "could not abort a failed diff upload: {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_full_until_the_last() {
        let (sender, mut receiver) = mpsc::channel(8);
        let data = vec![7u8; CHUNK * 2 + 10];
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut writer = ChunkWriter { chunks: sender, buffer: Vec::new() };
                writer.write_all(&data).unwrap();
                writer.flush().unwrap();
                writer.flush().unwrap(); // nothing more to send
            });
        });
        let sizes: Vec<usize> = std::iter::from_fn(|| receiver.try_recv().ok()).map(|c| c.len()).collect();
        assert_eq!(sizes, [CHUNK, CHUNK, 10]);
    }

    #[test]
    fn a_closed_stream_stops_the_producer() {
        let (sender, receiver) = mpsc::channel(1);
        drop(receiver);
        let mut writer = ChunkWriter { chunks: sender, buffer: Vec::new() };
        let err = writer.write_all(&vec![0u8; CHUNK]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
