//! sha256 digests of streams as they pass, in containerd's `sha256:<hex>` form.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

pub(crate) fn format(hasher: Sha256) -> String {
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Whether `s` is `sha256:` followed by 64 lowercase hex digits.
pub(crate) fn is_sha256(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The marker error a [`Digesting`] reader returns past its limit.
#[derive(Debug)]
pub(crate) struct LimitExceeded;

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("uncompressed size limit exceeded")
    }
}

impl std::error::Error for LimitExceeded {}

pub(crate) fn is_limit_exceeded(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<LimitExceeded>())
}

/// Hashes and counts what is read through it, failing once more than `limit` bytes came.
pub(crate) struct Digesting<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl<R: Read> Digesting<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        Digesting { inner, hasher: Sha256::new(), count: 0, limit }
    }

    /// Reads and hashes everything left.
    #[cfg(test)]
    pub(crate) fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    pub(crate) fn finish(self) -> (String, u64) {
        (format(self.hasher), self.count)
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Never ask for more than one byte past the limit: a bomb is stopped early.
        let allowed = self.limit.saturating_sub(self.count).saturating_add(1);
        let want = buf.len().min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(LimitExceeded));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Hashes and counts what is written through it.
pub(crate) struct Counting<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Counting<W> {
    pub(crate) fn new(inner: W) -> Self {
        Counting { inner, hasher: Sha256::new(), count: 0 }
    }

    pub(crate) fn finish(self) -> (W, String, u64) {
        (self.inner, format(self.hasher), self.count)
    }
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn digesting_counts_and_limits() {
        let mut r = Digesting::new(&b""[..], 0);
        r.drain().unwrap();
        assert_eq!(r.finish(), (EMPTY.to_owned(), 0));

        let data = vec![7u8; 10_000];
        let mut r = Digesting::new(&data[..], 10_000);
        r.drain().unwrap();
        assert_eq!(r.finish().1, 10_000);

        let mut r = Digesting::new(&data[..], 9_999);
        let err = r.drain().unwrap_err();
        assert!(is_limit_exceeded(&err), "{err}");
    }

    #[test]
    fn sha256_form() {
        assert!(is_sha256(EMPTY));
        assert!(!is_sha256(&EMPTY.to_uppercase()));
        assert!(!is_sha256("sha512:abc"));
        assert!(!is_sha256(&EMPTY[..70]));
    }
}
