//! A layer blob streamed out of the content service into a blocking reader.
//!
//! A task reads the Content.Read stream and hashes it as it passes (on another thread than the
//! one applying the layer, so the two overlap); the blocking side reads the chunks. Where the
//! blob ends, the reader sees either the end or — when the bytes do not have the descriptor's
//! digest or size — an error, so a corrupt blob never completes an Apply.

use std::io::{self, Read};

use berth_api::containerd::services::content::v1::ReadContentRequest;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_peers::PeerChannel;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::mpsc;

use crate::diff::error::{DiffError, Result};

/// Chunks (1 MiB each from berth-content) read ahead of the applier.
const READ_AHEAD: usize = 8;

/// Why a blob could not be read as described.
#[derive(Debug, Clone, Error)]
pub enum BlobError {
    #[error("layer blob {expected} is corrupt: its content has digest {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("layer blob {digest} has {actual} bytes, its descriptor says {expected}")]
    SizeMismatch { digest: String, expected: u64, actual: u64 },
    #[error("read layer blob {digest}: {}", status.message())]
    Read { digest: String, status: tonic::Status },
    #[error("the layer blob stream stopped before its end")]
    Stopped,
}

enum Piece {
    Data(Vec<u8>),
    End(Result<(), BlobError>),
}

/// The blocking end of a blob being read; see the module docs.
pub struct BlobReader {
    pieces: mpsc::Receiver<Piece>,
    current: Vec<u8>,
    at: usize,
    end: Option<Result<(), BlobError>>,
}

/// What a blob must be: its digest (`sha256:<hex>`) and, when known (> 0), its size.
#[derive(Debug, Clone)]
pub struct Expected {
    pub digest: String,
    pub size: Option<u64>,
}

impl BlobReader {
    /// Starts reading `expected.digest` from content in `namespace`. Fails at once when the
    /// content service does not have it (NotFound) or cannot be reached.
    pub async fn open(content: PeerChannel, namespace: &str, expected: Expected) -> Result<BlobReader> {
        let request = ReadContentRequest { digest: expected.digest.clone(), offset: 0, size: 0 };
        let stream = ContentClient::new(content)
            .read(berth_peers::request(namespace, request))
            .await
            .map_err(|status| DiffError::peer(format!("read layer blob {}", expected.digest), status))?
            .into_inner();
        let (sender, pieces) = mpsc::channel(READ_AHEAD);
        tokio::spawn(pump(stream, expected, sender));
        Ok(BlobReader::from_pieces(pieces))
    }

    fn from_pieces(pieces: mpsc::Receiver<Piece>) -> BlobReader {
        BlobReader { pieces, current: Vec::new(), at: 0, end: None }
    }

    /// Reads what is left of the blob and says whether it was all as expected.
    pub fn finish(&mut self) -> Result<(), BlobError> {
        loop {
            if let Some(end) = &self.end {
                return end.clone();
            }
            self.next_piece();
        }
    }

    /// Blocks for the next piece. Must not run on an async worker.
    fn next_piece(&mut self) {
        self.current = Vec::new();
        self.at = 0;
        match self.pieces.blocking_recv() {
            Some(Piece::Data(data)) => self.current = data,
            Some(Piece::End(end)) => self.end = Some(end),
            None => self.end = Some(Err(BlobError::Stopped)),
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.at < self.current.len() {
                let n = buf.len().min(self.current.len() - self.at);
                buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            match &self.end {
                Some(Ok(())) => return Ok(0),
                Some(Err(error)) => return Err(io::Error::other(error.clone())),
                None => self.next_piece(),
            }
        }
    }
}

/// Forwards the stream's chunks, hashing them; ends with the verdict. Stops as soon as the
/// reader is gone (which cancels the Read call).
async fn pump(
    mut stream: tonic::Streaming<berth_api::containerd::services::content::v1::ReadContentResponse>,
    expected: Expected,
    pieces: mpsc::Sender<Piece>,
) {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let piece = match stream.message().await {
            Ok(Some(message)) => {
                hasher.update(&message.data);
                size += message.data.len() as u64;
                Piece::Data(message.data)
            }
            Ok(None) => {
                let actual = format!("sha256:{}", hex::encode(std::mem::take(&mut hasher).finalize()));
                Piece::End(verdict(&expected, &actual, size))
            }
            Err(status) => Piece::End(Err(BlobError::Read { digest: expected.digest.clone(), status })),
        };
        let last = matches!(piece, Piece::End(_));
        if pieces.send(piece).await.is_err() || last {
            return;
        }
    }
}

fn verdict(expected: &Expected, actual: &str, size: u64) -> Result<(), BlobError> {
    if actual != expected.digest {
        return Err(BlobError::DigestMismatch { expected: expected.digest.clone(), actual: actual.to_string() });
    }
    match expected.size {
        Some(want) if want != size => {
            Err(BlobError::SizeMismatch { digest: expected.digest.clone(), expected: want, actual: size })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(pieces: Vec<Piece>) -> BlobReader {
        let (sender, receiver) = mpsc::channel(pieces.len().max(1));
        for piece in pieces {
            assert!(sender.try_send(piece).is_ok());
        }
        BlobReader::from_pieces(receiver)
    }

    #[test]
    fn reads_the_chunks_then_the_end() {
        let mut r = reader(vec![Piece::Data(b"hello ".to_vec()), Piece::Data(b"world".to_vec()), Piece::End(Ok(()))]);
        let mut all = String::new();
        r.read_to_string(&mut all).unwrap();
        assert_eq!(all, "hello world");
        assert!(r.finish().is_ok());
    }

    #[test]
    fn a_bad_end_is_an_error_where_the_data_ends() {
        let mismatch = BlobError::DigestMismatch { expected: "sha256:aa".into(), actual: "sha256:bb".into() };
        let mut r = reader(vec![Piece::Data(b"abc".to_vec()), Piece::End(Err(mismatch))]);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 3);
        let err = r.read(&mut buf).unwrap_err();
        assert!(err.get_ref().unwrap().downcast_ref::<BlobError>().is_some(), "{err}");
        assert!(matches!(r.finish(), Err(BlobError::DigestMismatch { .. })));
    }

    #[test]
    fn a_vanished_stream_is_not_an_end() {
        let (sender, receiver) = mpsc::channel(1);
        drop(sender);
        let mut r = BlobReader::from_pieces(receiver);
        assert!(r.read(&mut [0u8; 4]).is_err());
        assert!(matches!(r.finish(), Err(BlobError::Stopped)));
    }

    #[test]
    fn verdicts() {
        let expected = |size| Expected { digest: "sha256:aa".into(), size };
        assert!(verdict(&expected(Some(3)), "sha256:aa", 3).is_ok());
        assert!(verdict(&expected(None), "sha256:aa", 3).is_ok());
        assert!(matches!(verdict(&expected(Some(3)), "sha256:bb", 3), Err(BlobError::DigestMismatch { .. })));
        assert!(matches!(verdict(&expected(Some(4)), "sha256:aa", 3), Err(BlobError::SizeMismatch { .. })));
    }
}
