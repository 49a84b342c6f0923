use std::io::{self, BufRead, Read};

use super::{BLOCK, Entry, Kind, MAX_SPECIAL, PAX_XATTR, padding};
use crate::Error;

/// Reads entries one at a time; the data of the current entry is read with
/// [`Reader::data_buf`] (what is left unread is skipped by the next [`Reader::next`]).
pub(crate) struct Reader<R> {
    inner: R,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's data.
    pad: u64,
}

/// Records of a PAX extended header that matter to layers.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

fn malformed(msg: impl Into<String>) -> Error {
    Error::Malformed(msg.into())
}

impl<R: Read> Reader<R> {
    pub(crate) fn new(inner: R) -> Self {
        Reader { inner, remaining: 0, pad: 0 }
    }

    pub(crate) fn into_inner(self) -> R {
        self.inner
    }

    /// The next entry, or `None` at the end of the archive (a zero block or the end of input).
    pub(crate) fn next(&mut self) -> Result<Option<Entry>, Error> {
        self.skip(self.remaining + self.pad)?;
        self.remaining = 0;
        self.pad = 0;

        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let mut block = [0u8; BLOCK as usize];
            let extension_pending = pax.is_some() || long_name.is_some() || long_link.is_some();
            if !self.read_block(&mut block)? || block.iter().all(|&b| b == 0) {
                if extension_pending {
                    return Err(malformed("extended header without an entry after it"));
                }
                return Ok(None);
            }
            verify_checksum(&block)?;
            let flag = block[156];
            let header_size = parse_numeric(&block[124..136])?;
            let header_size = u64::try_from(header_size).map_err(|_| malformed("negative entry size"))?;

            match flag {
                b'x' | b'g' | b'L' | b'K' => {
                    if header_size > MAX_SPECIAL {
                        return Err(malformed(format!(
                            "extended header of {header_size} bytes (type {:?}) is larger than {MAX_SPECIAL}",
                            flag as char
                        )));
                    }
                    let data = self.read_special(header_size)?;
                    match flag {
                        // Like Go, a later PAX header replaces an earlier one.
                        b'x' => pax = Some(parse_pax(&data)?),
                        // Global headers: containerd ignores them, so do we.
                        b'g' => {}
                        b'L' => long_name = Some(until_nul(&data).to_vec()),
                        _ => long_link = Some(until_nul(&data).to_vec()),
                    }
                    continue;
                }
                _ => {}
            }

            let pax = pax.unwrap_or_default();
            let mut name = long_name.unwrap_or_else(|| header_name(&block));
            if let Some(path) = pax.path {
                name = path;
            }
            let kind = match flag {
                0 if name.ends_with(b"/") => Kind::Dir,
                b'0' | 0 | b'7' => Kind::Regular,
                b'1' => Kind::Link,
                b'2' => Kind::Symlink,
                b'3' => Kind::Char,
                b'4' => Kind::Block,
                b'5' => Kind::Dir,
                b'6' => Kind::Fifo,
                b'S' => return Err(Error::invalid(lossy(&name), "GNU sparse files are not supported")),
                other => {
                    return Err(Error::invalid(lossy(&name), format!("unsupported entry type {:?}", other as char)));
                }
            };
            let mut link = long_link.unwrap_or_else(|| until_nul(&block[157..257]).to_vec());
            if let Some(linkpath) = pax.linkpath {
                link = linkpath;
            }
            let size = pax.size.unwrap_or(header_size);
            let id = |v: u64, what: &str| {
                u32::try_from(v).map_err(|_| Error::invalid(lossy(&name), format!("{what} {v} is out of range")))
            };
            let uid = id(pax.uid.map_or_else(|| parse_unsigned(&block[108..116]), Ok)?, "uid")?;
            let gid = id(pax.gid.map_or_else(|| parse_unsigned(&block[116..124]), Ok)?, "gid")?;
            let (mtime, mtime_nsec) = match pax.mtime {
                Some(t) => t,
                None => (parse_numeric(&block[136..148])?, 0),
            };
            let has_dev_fields = &block[257..262] == b"ustar";
            let dev = |range: std::ops::Range<usize>| -> Result<u32, Error> {
                if !has_dev_fields {
                    return Ok(0);
                }
                let v = parse_unsigned(&block[range])?;
                u32::try_from(v).map_err(|_| Error::invalid(lossy(&name), "device number out of range"))
            };
            let (dev_major, dev_minor) = (dev(329..337)?, dev(337..345)?);
            let mode = (parse_unsigned(&block[100..108])? & 0o7777) as u32;

            // Header-only types carry no data whatever the size field says (as in Go).
            let data_size = if kind == Kind::Regular { size } else { 0 };
            self.remaining = data_size;
            self.pad = padding(data_size);
            return Ok(Some(Entry {
                name,
                kind,
                link,
                mode,
                uid,
                gid,
                size: data_size,
                mtime,
                mtime_nsec,
                dev_major,
                dev_minor,
                xattrs: pax.xattrs,
            }));
        }
    }

    /// Reads data of the current entry; 0 at its end.
    #[cfg(test)]
    pub(crate) fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Read(e)),
            }
        };
        if n == 0 {
            return Err(malformed("layer ends inside an entry's data"));
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// The next bytes of the current entry's data where the reader buffers them, without a
    /// copy (empty at the entry's end); [`Reader::consume_data`] says how many were used.
    pub(crate) fn data_buf(&mut self) -> Result<&[u8], Error>
    where
        R: BufRead,
    {
        if self.remaining == 0 {
            return Ok(&[]);
        }
        // Retried apart from the call that keeps the slice (a borrow returned from a loop).
        loop {
            match self.inner.fill_buf() {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Read(e)),
            }
        }
        let remaining = usize::try_from(self.remaining).unwrap_or(usize::MAX);
        let buf = self.inner.fill_buf().map_err(Error::Read)?;
        if buf.is_empty() {
            return Err(malformed("layer ends inside an entry's data"));
        }
        Ok(&buf[..buf.len().min(remaining)])
    }

    /// Marks `n` bytes of what [`Reader::data_buf`] gave as used.
    pub(crate) fn consume_data(&mut self, n: usize)
    where
        R: BufRead,
    {
        self.inner.consume(n);
        self.remaining -= n as u64;
    }

    fn read_block(&mut self, block: &mut [u8; BLOCK as usize]) -> Result<bool, Error> {
        let mut filled = 0;
        while filled < block.len() {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(malformed("layer ends inside a header")),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Read(e)),
            }
        }
        Ok(true)
    }

    fn read_special(&mut self, size: u64) -> Result<Vec<u8>, Error> {
        let mut data = Vec::with_capacity(size as usize);
        (&mut self.inner).take(size).read_to_end(&mut data).map_err(Error::Read)?;
        if data.len() as u64 != size {
            return Err(malformed("layer ends inside an extended header"));
        }
        self.skip(padding(size))?;
        Ok(data)
    }

    fn skip(&mut self, n: u64) -> Result<(), Error> {
        if n == 0 {
            return Ok(());
        }
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(Error::Read)?;
        if copied != n {
            return Err(malformed("layer ends inside an entry's data"));
        }
        Ok(())
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn until_nul(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

/// The name field, joined with the USTAR prefix field when the header has one.
fn header_name(block: &[u8]) -> Vec<u8> {
    let name = until_nul(&block[0..100]);
    let prefix = if &block[257..263] == b"ustar\0" {
        // STAR headers keep times after a 131 byte prefix.
        if &block[508..512] == b"tar\0" { until_nul(&block[345..476]) } else { until_nul(&block[345..500]) }
    } else {
        // GNU ("ustar  \0") keeps times there; V7 has no prefix.
        &[][..]
    };
    if prefix.is_empty() {
        name.to_vec()
    } else {
        let mut full = prefix.to_vec();
        full.push(b'/');
        full.extend_from_slice(name);
        full
    }
}

fn verify_checksum(block: &[u8; BLOCK as usize]) -> Result<(), Error> {
    let want = parse_numeric(&block[148..156])?;
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += i64::from(b);
        signed += i64::from(b as i8);
    }
    if want != unsigned && want != signed {
        return Err(malformed("header checksum mismatch"));
    }
    Ok(())
}

fn parse_unsigned(field: &[u8]) -> Result<u64, Error> {
    u64::try_from(parse_numeric(field)?).map_err(|_| malformed("negative number in a header field"))
}

/// A numeric header field: octal text, or GNU base-256 when the high bit is set (as Go).
fn parse_numeric(field: &[u8]) -> Result<i64, Error> {
    if let Some(&first) = field.first()
        && first & 0x80 != 0
    {
        let inv = if first & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in field.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 > 0 {
                return Err(malformed("numeric header field overflows"));
            }
            x = x << 8 | u64::from(c);
        }
        if x >> 63 > 0 {
            return Err(malformed("numeric header field overflows"));
        }
        let x = x as i64;
        return Ok(if inv == 0xff { !x } else { x });
    }
    let text = trim(field);
    if text.is_empty() {
        return Ok(0);
    }
    let text = std::str::from_utf8(text).map_err(|_| malformed("invalid octal header field"))?;
    i64::from_str_radix(text, 8).map_err(|_| malformed(format!("invalid octal header field {text:?}")))
}

fn trim(b: &[u8]) -> &[u8] {
    let pad = |c: &u8| *c == b' ' || *c == 0;
    let start = b.iter().position(|c| !pad(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !pad(c)).map_or(start, |i| i + 1);
    &b[start..end]
}

fn parse_pax(mut data: &[u8]) -> Result<Pax, Error> {
    let bad = || malformed("invalid PAX record");
    let mut pax = Pax::default();
    while !data.is_empty() {
        let space = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..space]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[space + 1..len - 1];
        data = &data[len..];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let decimal =
            || -> Result<u64, Error> { std::str::from_utf8(value).ok().and_then(|s| s.parse().ok()).ok_or_else(bad) };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(decimal()?),
            b"uid" => pax.uid = Some(decimal()?),
            b"gid" => pax.gid = Some(decimal()?),
            b"mtime" => pax.mtime = Some(parse_pax_time(value).ok_or_else(bad)?),
            _ if key.starts_with(PAX_XATTR) => pax.xattrs.push((key[PAX_XATTR.len()..].to_vec(), value.to_vec())),
            _ if key.starts_with(b"GNU.sparse.") => {
                return Err(malformed("GNU sparse files are not supported"));
            }
            _ => {}
        }
    }
    pax.xattrs.sort();
    pax.xattrs.dedup_by(|a, b| a.0 == b.0);
    Ok(pax)
}

/// `[-]SECONDS[.FRACTION]` into seconds and nanoseconds (floor, like Go).
fn parse_pax_time(value: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(value).ok()?;
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(match (negative, nanos) {
        (false, _) => (secs, nanos),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0").unwrap(), 0o644);
        assert_eq!(parse_numeric(b"  644 \0").unwrap(), 0o644);
        assert_eq!(parse_numeric(b"\0\0\0\0").unwrap(), 0);
        assert_eq!(parse_numeric(&[0x80, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert_eq!(parse_numeric(&[0xff; 8]).unwrap(), -1);
        assert!(parse_numeric(b"0000899\0").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time(b"1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"."), None);
    }

    #[test]
    fn pax_records() {
        let data = b"20 path=a/very/long\n27 SCHILY.xattr.user.k=v=w\n14 mtime=12.5\n8 uid=7\n";
        let pax = parse_pax(data).unwrap();
        assert_eq!(pax.path.as_deref(), Some(&b"a/very/long"[..]));
        assert_eq!(pax.xattrs, vec![(b"user.k".to_vec(), b"v=w".to_vec())]);
        assert_eq!(pax.mtime, Some((12, 500_000_000)));
        assert_eq!(pax.uid, Some(7));
        assert!(parse_pax(b"5 a=b\n").is_err());
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert_eq!(
            parse_pax(b"22 GNU.sparse.major=1\n").err().unwrap().to_string(),
            "malformed layer: GNU sparse files are not supported"
        );
    }

    fn header(name: &[u8], flag: u8, size: u64) -> [u8; 512] {
        let mut e = Entry::new(name.to_vec(), Kind::Regular);
        e.size = size;
        let mut out = Vec::new();
        super::super::write_header(&mut out, &e).unwrap();
        let mut block: [u8; 512] = out[..512].try_into().unwrap();
        block[156] = flag;
        // Recompute the checksum after changing the type.
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        block
    }

    #[test]
    fn header_only_types_have_no_data() {
        // A symlink header claiming 512 bytes of data: Go reads none, so must we, or the next
        // header would be taken from "data" (a classic parser differential).
        let mut bytes = header(b"link", b'2', 512).to_vec();
        bytes.extend_from_slice(&header(b"next", b'0', 0));
        let mut r = Reader::new(&bytes[..]);
        let link = r.next().unwrap().unwrap();
        assert_eq!((link.kind, link.size), (Kind::Symlink, 0));
        assert_eq!(r.next().unwrap().unwrap().name, b"next");
    }

    #[test]
    fn refuses_oversized_extended_headers_and_sparse() {
        let bytes = header(b"pax", b'x', MAX_SPECIAL + 1).to_vec();
        let err = Reader::new(&bytes[..]).next().unwrap_err();
        assert!(err.to_string().contains("larger than 1048576"), "{err}");

        let bytes = header(b"sparse", b'S', 0).to_vec();
        let err = Reader::new(&bytes[..]).next().unwrap_err();
        assert_eq!(err.to_string(), "invalid layer entry \"sparse\": GNU sparse files are not supported");

        let mut bytes = header(b"x", b'0', 0).to_vec();
        bytes[0] ^= 1;
        let err = Reader::new(&bytes[..]).next().unwrap_err();
        assert_eq!(err.to_string(), "malformed layer: header checksum mismatch");

        let bytes = header(b"f", b'0', 10).to_vec();
        let mut r = Reader::new(&bytes[..]);
        r.next().unwrap().unwrap();
        let err = r.read_data(&mut [0u8; 10]).unwrap_err();
        assert_eq!(err.to_string(), "malformed layer: layer ends inside an entry's data");
    }
}
