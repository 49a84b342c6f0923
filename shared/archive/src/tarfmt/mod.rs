//! The tar format as OCI layers use it (USTAR with PAX extensions; GNU long names and V7
//! headers when reading), written here rather than taken from a crate so that every byte of
//! metadata read from a layer is bounded and every byte written is deterministic.
//!
//! Reading follows Go's `archive/tar` (what containerd uses) where formats are ambiguous, so
//! that a layer means the same thing here and there: PAX records override header fields,
//! header-only types (links, directories, devices, fifos) carry no data whatever their size
//! field says, PAX and GNU long-name entries are limited to 1 MiB.

mod read;
mod write;

pub(crate) use read::Reader;
pub(crate) use write::{write_end, write_header, write_padding};

pub(crate) const BLOCK: u64 = 512;

/// Go's `maxSpecialFileSize`: the largest PAX or GNU long-name entry accepted.
const MAX_SPECIAL: u64 = 1 << 20;

const PAX_XATTR: &[u8] = b"SCHILY.xattr.";

/// The kinds of entries a layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Regular,
    Link,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl Kind {
    fn flag(self) -> u8 {
        match self {
            Kind::Regular => b'0',
            Kind::Link => b'1',
            Kind::Symlink => b'2',
            Kind::Char => b'3',
            Kind::Block => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }
}

/// One entry's header, with PAX and GNU extensions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// As in the archive (directories may end with `/`), not yet cleaned.
    pub(crate) name: Vec<u8>,
    pub(crate) kind: Kind,
    /// Hard link target path or symlink content.
    pub(crate) link: Vec<u8>,
    /// Permission bits with setuid, setgid and sticky (`0o7777`).
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// Bytes of data following the header (0 for all but regular files).
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: u32,
    pub(crate) dev_major: u32,
    pub(crate) dev_minor: u32,
    /// `SCHILY.xattr.*` PAX records, sorted by name.
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    pub(crate) fn new(name: Vec<u8>, kind: Kind) -> Entry {
        Entry {
            name,
            kind,
            link: Vec::new(),
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        }
    }

    pub(crate) fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Bytes of padding after `size` bytes of data.
pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample() -> Vec<Entry> {
        let mut dir = Entry::new(b"dir/".to_vec(), Kind::Dir);
        dir.mode = 0o755;
        dir.mtime = 1_700_000_000;
        let mut file = Entry::new(b"dir/file".to_vec(), Kind::Regular);
        file.mode = 0o4755;
        file.uid = 1000;
        file.gid = 1001;
        file.size = 5;
        file.mtime = 1_700_000_001;
        file.xattrs =
            vec![(b"security.capability".to_vec(), vec![1, 0, 0, 2, 0xff]), (b"user.a".to_vec(), b"b".to_vec())];
        let mut long = Entry::new(format!("{}/{}", "d".repeat(120), "f".repeat(120)).into_bytes(), Kind::Symlink);
        long.link = "t".repeat(150).into_bytes();
        long.mode = 0o777;
        long.uid = 3_000_000;
        long.mtime = -5;
        let mut split = Entry::new(format!("{}/{}", "p".repeat(80), "n".repeat(80)).into_bytes(), Kind::Link);
        split.link = b"dir/file".to_vec();
        let mut dev = Entry::new(b"dev/null".to_vec(), Kind::Char);
        dev.mode = 0o666;
        dev.dev_major = 1;
        dev.dev_minor = 3;
        vec![dir, file, long, split, dev, Entry::new(b"fifo".to_vec(), Kind::Fifo)]
    }

    fn write_sample() -> Vec<u8> {
        let mut out = Vec::new();
        for e in sample() {
            write_header(&mut out, &e).unwrap();
            if e.size > 0 {
                out.extend_from_slice(&b"hello"[..e.size as usize]);
                write_padding(&mut out, e.size).unwrap();
            }
        }
        write_end(&mut out).unwrap();
        out
    }

    #[test]
    fn write_then_read_roundtrips() {
        let bytes = write_sample();
        assert_eq!(bytes.len() % BLOCK as usize, 0);
        let mut reader = Reader::new(&bytes[..]);
        let mut got = Vec::new();
        while let Some(e) = reader.next().unwrap() {
            let mut data = Vec::new();
            let mut buf = [0u8; 3];
            loop {
                let n = reader.read_data(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
            assert_eq!(data.len() as u64, e.size);
            got.push(e);
        }
        assert_eq!(got, sample());
        // The reader stops at the first zero block; the second is left for the caller.
        let mut rest = Vec::new();
        reader.into_inner().read_to_end(&mut rest).unwrap();
        assert_eq!(rest, vec![0u8; 512]);
    }

    #[test]
    fn output_reads_with_the_tar_crate() {
        let bytes = write_sample();
        let mut archive = tar::Archive::new(&bytes[..]);
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            names.push(entry.path_bytes().into_owned());
            if entry.header().entry_type() == tar::EntryType::Regular {
                assert_eq!(entry.header().mode().unwrap(), 0o4755);
                let exts: Vec<(String, Vec<u8>)> = entry
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|e| {
                        let e = e.unwrap();
                        (e.key().unwrap().to_owned(), e.value_bytes().to_vec())
                    })
                    .collect();
                assert_eq!(
                    exts,
                    vec![
                        ("SCHILY.xattr.security.capability".to_owned(), vec![1, 0, 0, 2, 0xff]),
                        ("SCHILY.xattr.user.a".to_owned(), b"b".to_vec())
                    ]
                );
            }
        }
        let want: Vec<Vec<u8>> = sample().into_iter().map(|e| e.name).collect();
        assert_eq!(names.len(), want.len());
        for (got, want) in names.iter().zip(&want) {
            assert_eq!(got.strip_suffix(b"/").unwrap_or(got), want.strip_suffix(b"/").unwrap_or(want));
        }
    }

    #[test]
    fn reads_gnu_tar_output() {
        // An archive from GNU tar (GNU format: long names as 'L' entries, no prefix field).
        let tmp = tempfile::tempdir().unwrap();
        let long = "x".repeat(200);
        std::fs::create_dir(tmp.path().join("src")).unwrap();
        std::fs::write(tmp.path().join("src").join(&long), b"data").unwrap();
        let out = std::process::Command::new("tar")
            .args(["--format=gnu", "--numeric-owner", "-C"])
            .arg(tmp.path())
            .args(["-cf", "-", "src"])
            .output()
            .expect("GNU tar runs");
        assert!(out.status.success());
        let mut reader = Reader::new(&out.stdout[..]);
        let dir = reader.next().unwrap().unwrap();
        assert_eq!((dir.name.as_slice(), dir.kind), (&b"src/"[..], Kind::Dir));
        let file = reader.next().unwrap().unwrap();
        assert_eq!(file.name, format!("src/{long}").into_bytes());
        assert_eq!((file.kind, file.size), (Kind::Regular, 4));
        let mut buf = [0u8; 16];
        assert_eq!(reader.read_data(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"data");
        assert!(reader.next().unwrap().is_none());
    }
}
