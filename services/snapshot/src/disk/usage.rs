//! Disk usage of a tree, counted as containerd does: allocated blocks and distinct inodes.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::info::Usage;

/// st_blocks is in 512-byte units whatever the filesystem's block size.
const BLOCK_UNIT: u64 = 512;

/// Walks `root` (without following symlinks) and sums the blocks of every inode once, so
/// hard links count once; the root itself counts too. Entries that vanish during the walk
/// are skipped: an active snapshot may be changing while it is measured.
pub fn disk_usage(root: &Path) -> std::io::Result<Usage> {
    let mut seen = HashSet::new();
    let mut size: u64 = 0;
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == ErrorKind::NotFound && path != root => continue,
            Err(e) => return Err(e),
        };
        if seen.insert((meta.dev(), meta.ino())) {
            size = size.saturating_add(meta.blocks().saturating_mul(BLOCK_UNIT));
        }
        if meta.is_dir() {
            let entries = match std::fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                pending.push(entry?.path());
            }
        }
    }
    Ok(Usage { size: i64::try_from(size).unwrap_or(i64::MAX), inodes: i64::try_from(seen.len()).unwrap_or(i64::MAX) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_and_inodes_with_hard_links_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let empty = disk_usage(root).unwrap();
        assert_eq!(empty.inodes, 1, "the root itself");

        std::fs::write(root.join("data"), vec![7u8; 64 << 10]).unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        std::fs::hard_link(root.join("data"), root.join("sub/link")).unwrap();
        std::os::unix::fs::symlink("data", root.join("symlink")).unwrap();
        let usage = disk_usage(root).unwrap();
        assert_eq!(usage.inodes, 4, "root, data (twice linked), sub, symlink");
        let data_blocks = i64::try_from(std::fs::metadata(root.join("data")).unwrap().blocks() * 512).unwrap();
        assert!(data_blocks >= 64 << 10);
        assert!(usage.size >= empty.size + data_blocks, "{usage:?}");
        assert!(usage.size < empty.size + 2 * data_blocks, "the hard link is not counted twice: {usage:?}");

        assert!(disk_usage(&root.join("missing")).is_err());
    }
}
