//! Blobs in the content service, as a checkpoint needs them: a file or a few bytes written
//! in (under the caller's lease), a blob read back into a file or memory, verified.

use std::path::Path;

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{ReadContentRequest, WriteAction, WriteContentRequest};
use berth_api::containerd::types::Descriptor;
use berth_peers::PeerChannel;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Status;
use tonic::metadata::MetadataValue;

/// Bytes per WRITE message.
const CHUNK: usize = 1 << 20;

/// Content of one namespace, reached as a caller holding `lease` (if any).
pub struct Blobs {
    pub content: PeerChannel,
    pub namespace: String,
    pub lease: Option<String>,
}

fn sha256_digest(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(&hasher.finalize()[..]))
}

impl Blobs {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = berth_peers::request(&self.namespace, message);
        if let Some(value) = self.lease.as_deref().and_then(|lease| MetadataValue::try_from(lease).ok()) {
            request.metadata_mut().insert(berth_peers::leases::METADATA_KEY, value);
        }
        request
    }

    /// Writes the file at `path` as a blob of `media_type` (ingested under `reference`).
    pub async fn write_file(&self, reference: &str, media_type: &str, path: &Path) -> Result<Descriptor, Status> {
        let io = |e: std::io::Error| Status::internal(format!("read {}: {e}", path.display()));
        // Digest first: content checks it at the commit.
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buffer).await.map_err(io)?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
        }
        let digest = sha256_digest(hasher);
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let (sender, outgoing) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        let (reference_owned, expected) = (reference.to_string(), digest.clone());
        let feeder = tokio::spawn(async move {
            let mut file = file;
            let mut offset = 0i64;
            loop {
                let mut data = vec![0u8; CHUNK];
                let n = file.read(&mut data).await?;
                if n == 0 {
                    break;
                }
                data.truncate(n);
                let write = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    r#ref: reference_owned.clone(),
                    offset,
                    data,
                    ..Default::default()
                };
                offset += n as i64;
                if sender.send(write).await.is_err() {
                    return Ok(());
                }
            }
            let commit = WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: reference_owned,
                offset,
                total: offset,
                expected,
                ..Default::default()
            };
            let _ = sender.send(commit).await;
            Ok::<(), std::io::Error>(())
        });
        let written = self.write_stream(reference, outgoing).await;
        match feeder.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io(e)),
            Err(e) => return Err(Status::internal(format!("write {}: {e}", path.display()))),
        }
        written?;
        Ok(Descriptor {
            media_type: media_type.to_string(),
            digest,
            size: size as i64,
            annotations: Default::default(),
        })
    }

    /// Writes `data` as a blob of `media_type`.
    pub async fn write_bytes(&self, reference: &str, media_type: &str, data: Vec<u8>) -> Result<Descriptor, Status> {
        let digest = sha256_digest(Sha256::new_with_prefix(&data));
        let size = data.len() as i64;
        let (sender, outgoing) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        let write = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.to_string(),
            offset: 0,
            data,
            ..Default::default()
        };
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: reference.to_string(),
            offset: size,
            total: size,
            expected: digest.clone(),
            ..Default::default()
        };
        tokio::spawn(async move {
            if sender.send(write).await.is_ok() {
                let _ = sender.send(commit).await;
            }
        });
        self.write_stream(reference, outgoing).await?;
        Ok(Descriptor { media_type: media_type.to_string(), digest, size, annotations: Default::default() })
    }

    /// Sends one ingest's WRITEs and COMMIT; a blob that exists already counts as written.
    async fn write_stream(
        &self,
        reference: &str,
        outgoing: tokio::sync::mpsc::Receiver<WriteContentRequest>,
    ) -> Result<(), Status> {
        let failed =
            |status: Status| Status::new(status.code(), format!("write {reference} to content: {}", status.message()));
        let stream = tokio_stream::wrappers::ReceiverStream::new(outgoing);
        let mut client = ContentClient::new(self.content.clone());
        let mut responses = match client.write(self.request(stream)).await {
            Ok(responses) => responses.into_inner(),
            Err(status) if status.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(status) => return Err(failed(status)),
        };
        loop {
            match responses.message().await {
                Ok(Some(response)) if response.action == WriteAction::Commit as i32 => return Ok(()),
                Ok(Some(_)) => {}
                Ok(None) => return Err(Status::internal(format!("write {reference}: content ended without a commit"))),
                Err(status) if status.code() == tonic::Code::AlreadyExists => return Ok(()),
                Err(status) => return Err(failed(status)),
            }
        }
    }

    /// Reads blob `descriptor` into the file `path`, checking its digest; NotFound names the
    /// blob when content has none such.
    pub async fn read_to_file(&self, what: &str, descriptor: &Descriptor, path: &Path) -> Result<(), Status> {
        let io = |e: std::io::Error| Status::internal(format!("write {}: {e}", path.display()));
        let mut file = tokio::fs::File::create(path).await.map_err(io)?;
        let mut hasher = Sha256::new();
        self.read_each(
            what,
            &descriptor.digest,
            |data| {
                hasher.update(data);
                Ok(())
            },
            &mut file,
        )
        .await?;
        file.flush().await.map_err(io)?;
        if sha256_digest(hasher) != descriptor.digest {
            return Err(Status::data_loss(format!("{what} {}: content returned other bytes", descriptor.digest)));
        }
        Ok(())
    }

    /// Reads a small blob (at most `limit` bytes) into memory, checking its digest.
    pub async fn read_bytes(&self, what: &str, digest: &str, limit: usize) -> Result<Vec<u8>, Status> {
        let mut out = Vec::new();
        self.read_each(
            what,
            digest,
            |data| {
                if out.len() + data.len() > limit {
                    return Err(Status::invalid_argument(format!("{what} {digest} is larger than {limit} bytes")));
                }
                out.extend_from_slice(data);
                Ok(())
            },
            &mut tokio::io::sink(),
        )
        .await?;
        if sha256_digest(Sha256::new_with_prefix(&out)) != digest {
            return Err(Status::data_loss(format!("{what} {digest}: content returned other bytes")));
        }
        Ok(out)
    }

    async fn read_each(
        &self,
        what: &str,
        digest: &str,
        mut each: impl FnMut(&[u8]) -> Result<(), Status>,
        sink: &mut (impl tokio::io::AsyncWrite + Unpin),
    ) -> Result<(), Status> {
        let failed = |status: Status| match status.code() {
            tonic::Code::NotFound => Status::not_found(format!("{what} {digest} not found in content")),
            code => Status::new(code, format!("read {what} {digest} from content: {}", status.message())),
        };
        let read = ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 };
        let mut stream =
            ContentClient::new(self.content.clone()).read(self.request(read)).await.map_err(failed)?.into_inner();
        while let Some(chunk) = stream.message().await.map_err(failed)? {
            each(&chunk.data)?;
            sink.write_all(&chunk.data).await.map_err(|e| Status::internal(format!("store {what} {digest}: {e}")))?;
        }
        Ok(())
    }
}
