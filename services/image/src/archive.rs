//! A tar archive spooled to a local file, read by name: each regular file's place in the
//! file is noted once, then files (or ranges of them) are read with positioned reads, so
//! that blobs are copied into the content store without unpacking the tar anywhere.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;

use sha2::Digest as _;
use tonic::Status;

/// Links followed at most when a name resolves through symbolic links (docker archives
/// link layers that repeat).
const MAX_LINKS: usize = 8;

/// Where each regular file of a tar lies.
pub struct Archive {
    file: File,
    files: HashMap<String, (u64, u64)>,
}

/// `./a//b/../c` → `a/c`; None for names that climb out of the archive — they are ignored.
fn normalize(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    Some(parts.join("/"))
}

fn bad(problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("the archive is not a readable tar: {problem}"))
}

impl Archive {
    /// Reads the tar's headers from the start of `file` (blocking: run it off the async threads).
    pub fn scan(mut file: File) -> Result<Archive, Status> {
        std::io::Seek::rewind(&mut file).map_err(bad)?;
        let mut files = HashMap::new();
        let mut links: HashMap<String, String> = HashMap::new();
        {
            let mut tar = tar::Archive::new(&file);
            for entry in tar.entries().map_err(bad)? {
                let entry = entry.map_err(bad)?;
                let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
                let Some(name) = normalize(&path) else { continue };
                let kind = entry.header().entry_type();
                if kind.is_file() {
                    files.insert(name, (entry.raw_file_position(), entry.size()));
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let Some(target) = entry.link_name().map_err(bad)? else { continue };
                    let target = target.to_string_lossy().into_owned();
                    // Symbolic links are relative to their directory; hard links to the root.
                    let target = match (kind.is_symlink(), name.rsplit_once('/')) {
                        (true, Some((dir, _))) if !target.starts_with('/') => format!("{dir}/{target}"),
                        _ => target,
                    };
                    if let Some(target) = normalize(&target) {
                        links.insert(name, target);
                    }
                }
            }
        }
        for (name, target) in &links {
            let mut target = target;
            for _ in 0..MAX_LINKS {
                if let Some(place) = files.get(target).copied() {
                    files.insert(name.clone(), place);
                    break;
                }
                match links.get(target) {
                    Some(next) => target = next,
                    None => break,
                }
            }
        }
        Ok(Archive { file, files })
    }

    pub fn has(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    /// The size of `name`; None when the archive has no such file.
    pub fn size(&self, name: &str) -> Option<u64> {
        self.files.get(name).map(|(_, size)| *size)
    }

    fn place(&self, name: &str) -> Result<(u64, u64), Status> {
        self.files.get(name).copied().ok_or_else(|| Status::invalid_argument(format!("the archive has no file {name}")))
    }

    /// A whole small file, refusing one larger than `limit`.
    pub fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>, Status> {
        let (_, size) = self.place(name)?;
        if size > limit {
            return Err(Status::invalid_argument(format!(
                "{name} in the archive is {size} bytes, more than the {limit} allowed"
            )));
        }
        self.read_at(name, 0, size as usize)
    }

    /// `len` bytes of `name` from `offset` (blocking; a positioned read of a local file).
    pub fn read_at(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>, Status> {
        let (start, size) = self.place(name)?;
        if offset.saturating_add(len as u64) > size {
            return Err(Status::internal(format!("read past the end of {name} in the archive")));
        }
        let mut buffer = vec![0; len];
        self.file
            .read_exact_at(&mut buffer, start + offset)
            .map_err(|e| Status::internal(format!("reading {name} from the spooled archive: {e}")))?;
        Ok(buffer)
    }

    /// The sha256 digest and size of `name` (blocking: reads it all).
    pub fn digest(&self, name: &str) -> Result<(String, u64), Status> {
        let (_, size) = self.place(name)?;
        let mut hasher = sha2::Sha256::new();
        let mut offset = 0u64;
        while offset < size {
            let len = (size - offset).min(1 << 20) as usize;
            hasher.update(self.read_at(name, offset, len)?);
            offset += len as u64;
        }
        Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, Write};

    fn tar_with(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        {
            let mut builder = tar::Builder::new(&mut file);
            for (name, data) in files {
                let mut header = tar::Header::new_ustar();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                // Written raw: the tar crate refuses to write `..` itself.
                header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
                header.set_cksum();
                builder.append(&header, *data).unwrap();
            }
            for (name, target) in links {
                let mut header = tar::Header::new_ustar();
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, name, target).unwrap();
            }
            builder.finish().unwrap();
        }
        file.flush().unwrap();
        file.rewind().unwrap();
        file
    }

    #[test]
    fn files_are_found_by_normalized_name_and_links_followed() {
        let archive = Archive::scan(tar_with(
            &[("./index.json", b"{}"), ("blobs/sha256/ab", b"hello world"), ("../evil", b"x")],
            &[("dir/layer.tar", "../blobs/sha256/ab")],
        ))
        .unwrap();
        assert_eq!(archive.read("index.json", 10).unwrap(), b"{}");
        assert_eq!(archive.read_at("blobs/sha256/ab", 6, 5).unwrap(), b"world");
        assert_eq!(archive.read("dir/layer.tar", 100).unwrap(), b"hello world");
        assert!(!archive.has("evil") && !archive.has("../evil"));
        assert_eq!(archive.read("blobs/sha256/ab", 3).unwrap_err().code(), tonic::Code::InvalidArgument);
        let (digest, size) = archive.digest("index.json").unwrap();
        assert_eq!((digest.as_str(), size), (crate::digest::sha256(b"{}").as_str(), 2));
    }

    #[test]
    fn garbage_is_not_a_tar() {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[7u8; 1024]).unwrap();
        file.rewind().unwrap();
        assert_eq!(Archive::scan(file).err().map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    }
}
