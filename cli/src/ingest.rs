//! Writing one blob with containerd's Write protocol: STAT, pipelined WRITEs, COMMIT.
//!
//! The input is read (and hashed, when no digest is given) on a blocking thread while the async
//! side keeps up to `window` WRITEs in flight on the bidi stream, so neither disk reads nor round
//! trips serialise the transfer. An ingest left partial by an earlier attempt is resumed when the
//! input can seek; otherwise the first WRITE at offset 0 makes the server truncate and restart it.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsFd as _;

use berth_api::containerd::services::content::v1::{WriteAction, WriteContentRequest, WriteContentResponse};
use futures::StreamExt as _;
use indicatif::ProgressBar;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::client::Client;
use crate::errors::Subject;

/// Size of one WRITE, as containerd's clients use.
pub const CHUNK_SIZE: usize = 1 << 20;

/// WRITEs sent but not yet acknowledged, at most.
pub const WINDOW: usize = 8;

/// What to write and what to expect of it.
#[derive(Clone, Debug)]
pub struct Options {
    pub reference: String,
    pub expected_digest: Option<String>,
    pub expected_size: Option<u64>,
    pub labels: HashMap<String, String>,
    pub chunk_size: usize,
    pub window: usize,
}

impl Options {
    pub fn new(reference: impl Into<String>) -> Options {
        Options {
            reference: reference.into(),
            expected_digest: None,
            expected_size: None,
            labels: HashMap::new(),
            chunk_size: CHUNK_SIZE,
            window: WINDOW,
        }
    }
}

/// Where the bytes come from. Only a regular file can skip to a resume offset.
pub enum Input {
    Seekable { file: File, start: u64, len: u64 },
    Stream(Box<dyn Read + Send>),
}

impl Input {
    /// Standard input: seekable when it is a redirected regular file (`< FILE`), a stream otherwise.
    pub fn stdin() -> io::Result<Input> {
        let fd = io::stdin().as_fd().try_clone_to_owned()?;
        Input::from_file(File::from(fd))
    }

    /// A file (or FIFO, device...) opened by path.
    pub fn path(path: &std::path::Path) -> io::Result<Input> {
        Input::from_file(File::open(path)?)
    }

    /// Uses `file` from its current position on.
    pub fn from_file(mut file: File) -> io::Result<Input> {
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Ok(Input::Stream(Box::new(file)));
        }
        let start = file.stream_position()?;
        Ok(Input::Seekable { file, start, len: metadata.len().saturating_sub(start) })
    }

    /// Any reader, never resumed.
    pub fn stream(reader: impl Read + Send + 'static) -> Input {
        Input::Stream(Box::new(reader))
    }

    /// Bytes to come, when known.
    pub fn known_len(&self) -> Option<u64> {
        match self {
            Input::Seekable { len, .. } => Some(*len),
            Input::Stream(_) => None,
        }
    }
}

/// How an ingest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub digest: String,
    /// The blob was already in the store (AlreadyExists), which counts as success.
    pub already_exists: bool,
    /// Offset the data transfer started at: > 0 when an earlier partial ingest was resumed.
    pub resumed_from: u64,
    /// Bytes the server held for the ref but that had to be written again because the input
    /// cannot seek.
    pub restarted_over: u64,
    /// Bytes sent in this run.
    pub sent: u64,
}

/// Writes `input` under `options.reference` and commits it. Progress, if any, counts bytes the
/// server has acknowledged.
pub async fn ingest(
    client: &Client,
    input: Input,
    options: &Options,
    progress: &ProgressBar,
) -> anyhow::Result<Outcome> {
    let reference = options.reference.as_str();
    let explain = |status: Status| client.explain(status, Subject::Ingest(reference));
    let already = |digest: &str| Outcome {
        digest: digest.to_string(),
        already_exists: true,
        resumed_from: 0,
        restarted_over: 0,
        sent: 0,
    };
    let window = options.window.max(1);
    let known_total = options.expected_size.or(input.known_len());

    let (requests, queue) = mpsc::channel(window + 2);
    let stat = WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.to_string(),
        total: known_total.map_or(0, to_i64),
        expected: options.expected_digest.clone().unwrap_or_default(),
        ..Default::default()
    };
    // Queue STAT before opening: some servers (grpc-go) send response headers only with the
    // first response, and opening the call waits for those headers.
    requests.send(stat).await.map_err(|_| anyhow::anyhow!("write stream closed before it opened"))?;
    let opened = client.content().write(ReceiverStream::new(queue)).await;
    let mut responses = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => return settle_early(status, options, explain).map(|digest| already(&digest)),
    };
    let status = match next(&mut responses).await {
        Ok(response) => response,
        Err(status) => return settle_early(status, options, explain).map(|digest| already(&digest)),
    };
    let held = u64::try_from(status.offset).unwrap_or(0);
    let start = match input.known_len() {
        Some(len) if held > 0 && held <= len => held,
        _ => 0,
    };
    let restarted_over = if start == 0 { held } else { 0 };
    progress.set_position(start);

    let hash = options.expected_digest.is_none();
    let chunk_size = options.chunk_size.max(1);
    let (chunks_in, mut chunks) = mpsc::channel::<Vec<u8>>(2);
    let reader = tokio::task::spawn_blocking(move || pump(input, start, hash, chunk_size, chunks_in));

    // Pipelined WRITEs: keep sending while fewer than `window` are unacknowledged; each
    // response must acknowledge exactly the end of the oldest one in flight.
    let mut offset = start;
    let mut in_flight: VecDeque<u64> = VecDeque::with_capacity(window);
    let mut input_done = false;
    while !(input_done && in_flight.is_empty()) {
        tokio::select! {
            response = responses.next(), if !in_flight.is_empty() => {
                let response = response
                    .ok_or_else(|| anyhow::anyhow!("berth closed the write stream for ingest {reference:?} early; retry to resume"))?
                    .map_err(explain)?;
                let expected = in_flight.pop_front().unwrap_or_default();
                if u64::try_from(response.offset).ok() != Some(expected) {
                    anyhow::bail!(
                        "berth acknowledged offset {} for ingest {reference:?} but {expected} bytes were written; retry to resume",
                        response.offset
                    );
                }
                progress.set_position(expected);
            }
            chunk = chunks.recv(), if !input_done && in_flight.len() < window => match chunk {
                Some(data) => {
                    let len = data.len() as u64;
                    let write = WriteContentRequest {
                        action: WriteAction::Write as i32,
                        offset: to_i64(offset),
                        data,
                        ..Default::default()
                    };
                    if requests.send(write).await.is_err() {
                        // The call ended; its status says why.
                        return Err(stream_failure(&mut responses, explain).await);
                    }
                    offset += len;
                    in_flight.push_back(offset);
                }
                None => input_done = true,
            },
        }
    }
    drop(chunks);
    let pumped = reader.await.map_err(|err| anyhow::anyhow!("input reader failed: {err}"))??;

    if let Some(expected) = options.expected_size
        && expected != pumped.len
    {
        anyhow::bail!(
            "input is {} bytes but --expected-size says {expected}; nothing was committed (ingest {reference:?} keeps the data)",
            pumped.len
        );
    }
    let digest = match (&options.expected_digest, pumped.digest) {
        (Some(expected), _) => expected.clone(),
        (None, Some(computed)) => computed,
        (None, None) => anyhow::bail!("internal error: input was not hashed"),
    };

    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        // COMMIT carries the current offset like a WRITE: containerd truncates an ingest when
        // it sees offset 0 on one that holds data.
        offset: to_i64(pumped.len),
        total: to_i64(pumped.len),
        expected: digest.clone(),
        labels: options.labels.clone(),
        ..Default::default()
    };
    if requests.send(commit).await.is_err() {
        return Err(stream_failure(&mut responses, explain).await);
    }
    let committed = match next(&mut responses).await {
        Ok(response) => response,
        Err(status) if status.code() == Code::AlreadyExists => {
            return Ok(Outcome { already_exists: true, ..done(digest, start, restarted_over, offset - start) });
        }
        Err(status) => return Err(explain(status)),
    };
    if committed.action != WriteAction::Commit as i32 {
        anyhow::bail!("berth answered COMMIT of ingest {reference:?} with action {}", committed.action);
    }
    if u64::try_from(committed.offset).ok() != Some(pumped.len) {
        anyhow::bail!(
            "berth committed {} bytes for ingest {reference:?} but {} were sent; check `berth content active`",
            committed.offset,
            pumped.len
        );
    }
    if !committed.digest.is_empty() && committed.digest != digest {
        anyhow::bail!("berth committed {} for ingest {reference:?} but {digest} was expected", committed.digest);
    }
    // Let the server end the call cleanly rather than cancelling it by dropping the stream.
    drop(requests);
    while let Some(Ok(_)) = responses.next().await {}
    progress.finish_and_clear();
    Ok(done(digest, start, restarted_over, offset - start))
}

fn done(digest: String, start: u64, restarted_over: u64, sent: u64) -> Outcome {
    Outcome { digest, already_exists: false, resumed_from: start, restarted_over, sent }
}

/// A failure before any data moved: AlreadyExists for a digest we named is success.
fn settle_early(
    status: Status,
    options: &Options,
    explain: impl Fn(Status) -> anyhow::Error,
) -> anyhow::Result<String> {
    match (&options.expected_digest, status.code()) {
        (Some(digest), Code::AlreadyExists) => Ok(digest.clone()),
        _ => Err(explain(status)),
    }
}

async fn next(responses: &mut tonic::Streaming<WriteContentResponse>) -> Result<WriteContentResponse, Status> {
    match responses.next().await {
        Some(result) => result,
        None => Err(Status::unavailable("write stream ended without a response")),
    }
}

/// The error of a call whose request side closed under us.
async fn stream_failure(
    responses: &mut tonic::Streaming<WriteContentResponse>,
    explain: impl Fn(Status) -> anyhow::Error,
) -> anyhow::Error {
    loop {
        match responses.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => return explain(status),
            None => return anyhow::anyhow!("berth closed the write stream early; retry to resume"),
        }
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// What the reader thread saw.
struct Pumped {
    len: u64,
    digest: Option<String>,
}

/// Reads `input` in chunks and hands those from `start` on to `chunks`; hashes everything from
/// the beginning when `hash` is set (so a resumed ingest still gets a locally computed digest).
fn pump(input: Input, start: u64, hash: bool, chunk_size: usize, chunks: mpsc::Sender<Vec<u8>>) -> io::Result<Pumped> {
    let mut hasher = hash.then(Sha256::new);
    let (mut reader, mut position): (Box<dyn Read + Send>, u64) = match input {
        Input::Seekable { mut file, start: base, .. } => {
            if start > 0 && hasher.is_none() {
                file.seek(SeekFrom::Start(base + start))?;
                (Box::new(file), start)
            } else {
                (Box::new(file), 0)
            }
        }
        Input::Stream(reader) => (reader, 0),
    };
    while position < start {
        let want = usize::try_from(start - position).unwrap_or(usize::MAX).min(chunk_size);
        let data = fill(&mut reader, want)?;
        if data.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("input ended at {position} bytes, before the ingest's offset {start}; did the file change?"),
            ));
        }
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&data);
        }
        position += data.len() as u64;
    }
    loop {
        let data = fill(&mut reader, chunk_size)?;
        if data.is_empty() {
            break;
        }
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&data);
        }
        position += data.len() as u64;
        if chunks.blocking_send(data).is_err() {
            // The sender side gave up (an error is on its way to the user); stop reading.
            return Err(io::Error::new(io::ErrorKind::Interrupted, "ingest stopped"));
        }
    }
    Ok(Pumped { len: position, digest: hasher.map(|hasher| format!("sha256:{}", hex::encode(hasher.finalize()))) })
}

/// Reads until `size` bytes or the end of input; short only at the end.
fn fill(reader: &mut dyn Read, size: usize) -> io::Result<Vec<u8>> {
    let mut data = vec![0; size];
    let mut filled = 0;
    while filled < size {
        match reader.read(&mut data[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    data.truncate(filled);
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    /// A reader that returns at most 3 bytes per read, like a slow pipe.
    struct Trickle(io::Cursor<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(3);
            self.0.read(&mut buf[..n])
        }
    }

    fn collect(input: Input, start: u64, hash: bool, chunk: usize) -> (Vec<Vec<u8>>, io::Result<Pumped>) {
        let (sender, mut receiver) = mpsc::channel(1024);
        let result = pump(input, start, hash, chunk, sender);
        let mut chunks = Vec::new();
        while let Ok(data) = receiver.try_recv() {
            chunks.push(data);
        }
        (chunks, result)
    }

    #[test]
    fn chunks_are_full_except_the_last() {
        let data: Vec<u8> = (0..100u8).collect();
        let (chunks, pumped) = collect(Input::stream(Trickle(io::Cursor::new(data.clone()))), 0, true, 16);
        let pumped = pumped.unwrap();
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [16, 16, 16, 16, 16, 16, 4]);
        assert_eq!(chunks.concat(), data);
        assert_eq!(pumped.len, 100);
        assert_eq!(pumped.digest.unwrap(), format!("sha256:{}", hex::encode(Sha256::digest(&data))));
    }

    #[test]
    fn resume_skips_sent_bytes_but_hashes_them() {
        let data: Vec<u8> = (0..50u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        let input = Input::from_file(file).unwrap();
        assert_eq!(input.known_len(), Some(50));
        let (chunks, pumped) = collect(input, 20, true, 8);
        assert_eq!(chunks.concat(), &data[20..]);
        assert_eq!(pumped.unwrap().digest.unwrap(), format!("sha256:{}", hex::encode(Sha256::digest(&data))));
    }

    #[test]
    fn resume_without_hashing_seeks() {
        let data: Vec<u8> = (0..50u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        // A file handed over mid-way (stdin after `head -c 10`) counts from where it stands.
        file.seek(SeekFrom::Start(10)).unwrap();
        let input = Input::from_file(file).unwrap();
        assert_eq!(input.known_len(), Some(40));
        let (chunks, pumped) = collect(input, 15, false, 8);
        assert_eq!(chunks.concat(), &data[25..]);
        let pumped = pumped.unwrap();
        assert_eq!(pumped.len, 40);
        assert!(pumped.digest.is_none());
    }

    #[test]
    fn input_shorter_than_the_resume_offset_is_an_error() {
        let (_, pumped) = collect(Input::stream(io::Cursor::new(vec![1u8; 5])), 10, true, 4);
        let err = pumped.err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
