use std::io::{self, Write};

use super::{BLOCK, Entry, PAX_XATTR, padding};

const NAME_LEN: usize = 100;
const PREFIX_LEN: usize = 155;
/// Largest value of an 8-byte octal field (7 digits).
const MAX_OCTAL_8: u64 = 0o7777777;
/// Largest value of a 12-byte octal field (11 digits).
const MAX_OCTAL_12: u64 = 0o77777777777;

/// Writes `entry`'s header: a PAX extended header first when a field does not fit USTAR or the
/// entry has xattrs, then the USTAR header. Output is a pure function of `entry` (no user or
/// group names, no atime/ctime), laid out as Go's `archive/tar` lays it out.
pub(crate) fn write_header(w: &mut impl Write, entry: &Entry) -> io::Result<()> {
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let (prefix, name) = match split_ustar_path(&entry.name) {
        Some(split) => split,
        None => {
            records.push((b"path".to_vec(), entry.name.clone()));
            (&[][..], &entry.name[..entry.name.len().min(NAME_LEN)])
        }
    };
    let mut link = &entry.link[..];
    if link.len() > NAME_LEN {
        records.push((b"linkpath".to_vec(), entry.link.clone()));
        link = &link[..NAME_LEN];
    }
    let mut numeric = |key: &str, value: u64, max: u64| -> u64 {
        if value > max {
            records.push((key.as_bytes().to_vec(), value.to_string().into_bytes()));
            0
        } else {
            value
        }
    };
    let uid = numeric("uid", u64::from(entry.uid), MAX_OCTAL_8);
    let gid = numeric("gid", u64::from(entry.gid), MAX_OCTAL_8);
    let size = numeric("size", entry.size, MAX_OCTAL_12);
    let mtime = match u64::try_from(entry.mtime) {
        Ok(t) if t <= MAX_OCTAL_12 => t,
        _ => {
            records.push((b"mtime".to_vec(), entry.mtime.to_string().into_bytes()));
            0
        }
    };
    for (key, value) in &entry.xattrs {
        records.push(([PAX_XATTR, key].concat(), value.clone()));
    }

    if !records.is_empty() {
        records.sort();
        let data = pax_data(&records);
        let mut header = Block::new();
        header.text(0, NAME_LEN, &pax_header_name(&entry.name));
        for (offset, len) in [(100, 8), (108, 8), (116, 8), (136, 12), (329, 8), (337, 8)] {
            header.octal(offset, len, 0);
        }
        header.octal(124, 12, data.len() as u64);
        header.0[156] = b'x';
        header.finish(w)?;
        w.write_all(&data)?;
        write_padding(w, data.len() as u64)?;
    }

    let mut header = Block::new();
    header.text(0, NAME_LEN, name);
    header.octal(100, 8, u64::from(entry.mode & 0o7777));
    header.octal(108, 8, uid);
    header.octal(116, 8, gid);
    header.octal(124, 12, size);
    header.octal(136, 12, mtime);
    header.0[156] = entry.kind.flag();
    header.text(157, NAME_LEN, link);
    header.octal(329, 8, u64::from(entry.dev_major).min(MAX_OCTAL_8));
    header.octal(337, 8, u64::from(entry.dev_minor).min(MAX_OCTAL_8));
    header.text(345, PREFIX_LEN, prefix);
    header.finish(w)
}

pub(crate) fn write_padding(w: &mut impl Write, size: u64) -> io::Result<()> {
    w.write_all(&[0u8; BLOCK as usize][..padding(size) as usize])
}

/// The end of an archive: two zero blocks.
pub(crate) fn write_end(w: &mut impl Write) -> io::Result<()> {
    w.write_all(&[0u8; 2 * BLOCK as usize])
}

struct Block([u8; BLOCK as usize]);

impl Block {
    fn new() -> Block {
        let mut b = Block([0u8; BLOCK as usize]);
        b.0[257..263].copy_from_slice(b"ustar\0");
        b.0[263..265].copy_from_slice(b"00");
        b
    }

    fn text(&mut self, offset: usize, len: usize, value: &[u8]) {
        let n = value.len().min(len);
        self.0[offset..offset + n].copy_from_slice(&value[..n]);
    }

    /// Zero-padded octal digits filling all but the last byte, which is NUL.
    fn octal(&mut self, offset: usize, len: usize, value: u64) {
        let digits = format!("{value:0width$o}", width = len - 1);
        self.0[offset..offset + len - 1].copy_from_slice(&digits.as_bytes()[digits.len() - (len - 1)..]);
        self.0[offset + len - 1] = 0;
    }

    fn finish(mut self, w: &mut impl Write) -> io::Result<()> {
        self.0[148..156].fill(b' ');
        let sum: u64 = self.0.iter().map(|&b| u64::from(b)).sum();
        self.octal(148, 7, sum);
        self.0[155] = b' ';
        w.write_all(&self.0)
    }
}

/// Splits a long name into USTAR's prefix and name fields at a `/` (Go's `splitUSTARPath`).
fn split_ustar_path(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= NAME_LEN {
        return Some((&[], name));
    }
    let mut end = name.len();
    if end > PREFIX_LEN + 1 {
        end = PREFIX_LEN + 1;
    } else if name[end - 1] == b'/' {
        end -= 1;
    }
    let i = name[..end].iter().rposition(|&b| b == b'/')?;
    let (prefix, rest) = (&name[..i], &name[i + 1..]);
    if i == 0 || rest.is_empty() || rest.len() > NAME_LEN || prefix.len() > PREFIX_LEN {
        return None;
    }
    Some((prefix, rest))
}

/// `dir/PaxHeaders.0/file`, as Go names the extended header of `dir/file`.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let (dir, file) = match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => (&trimmed[..=i], &trimmed[i + 1..]),
        None => (&[][..], trimmed),
    };
    [dir, b"PaxHeaders.0/", file].concat()
}

/// PAX records: `LEN key=value\n`, LEN counting the whole record including its own digits.
fn pax_data(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let base = key.len() + value.len() + 3;
        let mut len = base + base.to_string().len();
        if len.to_string().len() + base != len {
            len = base + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key);
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths() {
        assert_eq!(pax_data(&[(b"uid".to_vec(), b"7".to_vec())]), b"8 uid=7\n");
        // 95 bytes of key and value: the length crosses into three digits.
        let value = vec![b'v'; 94];
        let data = pax_data(&[(b"p".to_vec(), value)]);
        assert_eq!(data.len(), 101);
        assert!(data.starts_with(b"101 p="));
    }

    #[test]
    fn ustar_split() {
        let name = format!("{}/{}", "a".repeat(150), "b".repeat(100));
        let (prefix, rest) = split_ustar_path(name.as_bytes()).unwrap();
        assert_eq!((prefix.len(), rest.len()), (150, 100));
        assert!(split_ustar_path(format!("{}/b", "a".repeat(200)).as_bytes()).is_none());
        assert!(split_ustar_path("c".repeat(101).as_bytes()).is_none());
        assert_eq!(pax_header_name(b"a/b/"), b"a/PaxHeaders.0/b");
        assert_eq!(pax_header_name(b"f"), b"PaxHeaders.0/f");
    }

    #[test]
    fn header_bytes_are_gos() {
        let mut e = Entry::new(b"etc/hosts".to_vec(), super::super::Kind::Regular);
        e.mode = 0o644;
        e.size = 12;
        e.mtime = 0o14417623054;
        let mut out = Vec::new();
        write_header(&mut out, &e).unwrap();
        assert_eq!(out.len(), 512);
        assert_eq!(&out[100..108], b"0000644\0");
        assert_eq!(&out[124..136], b"00000000014\0");
        assert_eq!(&out[136..148], b"14417623054\0");
        assert_eq!(out[156], b'0');
        assert_eq!(&out[257..265], b"ustar\x0000");
        assert_eq!(&out[265..329], &[0u8; 64][..], "no user or group names");
        assert_eq!(out[154..156], [0, b' ']);
    }
}
