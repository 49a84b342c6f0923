//! The uncompressed layer stream made on a thread of its own.
//!
//! Decompressing and hashing (the diffID) cost about as much as parsing the tar and writing the
//! files, so a layer applies nearly twice as fast when the two halves run on separate cores. The
//! decoding thread reads the whole stream, trailing bytes included, and ends with the diffID and
//! size or with the error that stopped it; the applying side reads the chunks in order, so an
//! error surfaces where it happened in the stream, as it does when both run on one thread.

use std::io::{self, BufRead, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};

use crate::compression;
use crate::digest::Digesting;

/// Bytes per chunk handed over.
const CHUNK: usize = 256 << 10;
/// Chunks decoded ahead of the applier.
const AHEAD: usize = 8;

/// What the decoding thread found: the diffID and the uncompressed size, or why it stopped.
pub(crate) type Decoded = io::Result<(String, u64)>;

enum Piece {
    /// A chunk (always [`CHUNK`] long) and how many of its bytes are data.
    Data(Vec<u8>, usize),
    End(Decoded),
}

/// The applying end: the uncompressed stream as a reader.
pub(crate) struct Uncompressed<'a> {
    pieces: Receiver<Piece>,
    /// Chunks read, sent back for reuse.
    spare: Sender<Vec<u8>>,
    current: Vec<u8>,
    len: usize,
    at: usize,
    end: Option<Decoded>,
    stop: &'a AtomicBool,
}

/// Starts decoding `reader` (uncompressed, gzip or zstd, detected from its first bytes) on a
/// thread of `scope`, hashing and counting it, failing past `limit` bytes.
pub(crate) fn start<'scope, 'env, R: Read + Send + 'scope>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    reader: R,
    limit: u64,
    stop: &'scope AtomicBool,
) -> io::Result<Uncompressed<'scope>> {
    let (sender, pieces) = sync_channel(AHEAD);
    let (spare, spares) = channel();
    std::thread::Builder::new()
        .name("layer-decode".into())
        .spawn_scoped(scope, move || decode(reader, limit, &sender, &spares, stop))?;
    Ok(Uncompressed { pieces, spare, current: Vec::new(), len: 0, at: 0, end: None, stop })
}

fn decode<R: Read>(reader: R, limit: u64, pieces: &SyncSender<Piece>, spares: &Receiver<Vec<u8>>, stop: &AtomicBool) {
    let end = (|| {
        let mut input = Digesting::new(compression::decoder(reader)?, limit);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Err(io::Error::other("the applier stopped"));
            }
            let mut chunk = spares.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
            let len = fill(&mut input, &mut chunk)?;
            if len == 0 {
                return Ok(input.finish());
            }
            if pieces.send(Piece::Data(chunk, len)).is_err() {
                return Err(io::Error::other("the applier stopped"));
            }
        }
    })();
    // Nobody listens any more when the applier failed: its own error is the one reported.
    let _ = pieces.send(Piece::End(end));
}

/// Reads into `chunk` until it is full or the stream ends; returns the bytes read.
fn fill(input: &mut impl Read, chunk: &mut [u8]) -> io::Result<usize> {
    let mut len = 0;
    while len < chunk.len() {
        match input.read(&mut chunk[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

impl Uncompressed<'_> {
    /// Reads what is left (the bytes after the tar's end count for the diffID too) and
    /// returns the diffID and the uncompressed size.
    pub(crate) fn finish(mut self) -> Decoded {
        loop {
            if let Some(end) = self.end.take() {
                return end;
            }
            self.next_piece();
        }
    }

    fn next_piece(&mut self) {
        let used = std::mem::take(&mut self.current);
        if !used.is_empty() {
            let _ = self.spare.send(used);
        }
        self.at = 0;
        self.len = 0;
        match self.pieces.recv() {
            Ok(Piece::Data(chunk, len)) => (self.current, self.len) = (chunk, len),
            Ok(Piece::End(end)) => self.end = Some(end),
            Err(_) => self.end = Some(Err(io::Error::other("the layer decoding thread stopped"))),
        }
    }
}

impl BufRead for Uncompressed<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.at >= self.len {
            match self.end.as_ref().map(Result::is_ok) {
                Some(true) => return Ok(&[]),
                // The error goes to the first read that meets it (it is the one reported);
                // later reads get one without its source.
                Some(false) => {
                    let later = io::Error::other("the layer stream failed earlier");
                    return Err(match self.end.replace(Err(later)) {
                        Some(Err(error)) => error,
                        _ => io::Error::other("the layer stream failed earlier"),
                    });
                }
                None => self.next_piece(),
            }
        }
        Ok(&self.current[self.at..self.len])
    }

    fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.len);
    }
}

impl Read for Uncompressed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl Drop for Uncompressed<'_> {
    /// An applier that gives up early stops the decoding too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use sha2::Digest as _;

    use super::*;

    fn decoded(data: &[u8], limit: u64, read_all: bool) -> (Vec<u8>, Decoded) {
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let mut stream = start(scope, data, limit, &stop).unwrap();
            let mut out = Vec::new();
            let mut buf = [0u8; 1000];
            if read_all {
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => out.extend_from_slice(&buf[..n]),
                        Err(e) => return (out, Err(e)),
                    }
                }
            } else {
                let n = stream.read(&mut buf).unwrap();
                out.extend_from_slice(&buf[..n]);
            }
            (out, stream.finish())
        })
    }

    #[test]
    fn the_whole_stream_in_order_with_its_digest() {
        let data: Vec<u8> = (0..3 * CHUNK as u32 + 17).map(|i| (i % 251) as u8).collect();
        let (out, end) = decoded(&data, u64::MAX, true);
        assert_eq!(out, data);
        let (digest, size) = end.unwrap();
        assert_eq!(size, data.len() as u64);
        let mut hasher = sha2::Sha256::new();
        hasher.update(&data);
        assert_eq!(digest, crate::digest::format(hasher));
        // Stopping early still hashes everything (finish reads the rest).
        let (_, end) = decoded(&data, u64::MAX, false);
        assert_eq!(end.unwrap(), (digest, data.len() as u64));
    }

    #[test]
    fn past_the_limit_is_an_error_where_it_happens() {
        let data = vec![1u8; CHUNK + 10];
        let (out, end) = decoded(&data, CHUNK as u64, true);
        assert!(out.len() <= CHUNK);
        let err = end.unwrap_err();
        assert!(crate::digest::is_limit_exceeded(&err), "{err}");
    }

    #[test]
    fn a_dropped_reader_stops_the_thread() {
        let stop = AtomicBool::new(false);
        let endless = io::repeat(0);
        std::thread::scope(|scope| {
            let mut stream = start(scope, endless, u64::MAX, &stop).unwrap();
            let mut buf = [0u8; 10];
            stream.read_exact(&mut buf).unwrap();
            drop(stream);
        });
        assert!(stop.load(Ordering::Relaxed));
    }
}
