//! Apply: a layer blob from the content service unpacked onto a snapshot's mounts.
//!
//! An overlay mount with an upper directory is written in place (see [`plan::ApplyTo`]);
//! anything else is mounted in a private directory. The blob's digest and size are checked
//! while it streams, the decompressed size is bounded, and what is applied is the whole
//! uncompressed stream, whose digest (the diffID) is returned.
//!
//! On failure nothing half-applied stays visible when the target started empty (a fresh
//! snapshot, as in unpacking): its content is removed again, so a retry starts clean. A target
//! that held files before (a native snapshot's copy of its parent) keeps what was applied up
//! to the error; the caller removes such a snapshot, as containerd's unpacker does.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use berth_archive::{Compression, Limits, Target};
use berth_peers::PeerChannel;

use crate::diff::blob::{BlobReader, Expected};
use crate::diff::error::{DiffError, Result};
use crate::diff::plan::{self, ApplyTo};
use crate::diff::tempmount::TempMount;
use crate::mount::Mount;

/// The uncompressed layer an Apply unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:<hex>` of the uncompressed stream.
    pub diff_id: String,
    pub size: u64,
}

/// The layer to apply, as its descriptor names it.
#[derive(Debug, Clone)]
pub struct Layer {
    pub media_type: String,
    pub digest: String,
    /// As the descriptor says; 0 or less when unknown.
    pub size: i64,
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits (all content ever holds).
pub fn is_sha256(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Checks what can be checked before any work: the media type, the digest, the mounts.
pub fn check(layer: &Layer, mounts: &[Mount]) -> Result<ApplyTo> {
    Compression::from_media_type(&layer.media_type).map_err(|e| DiffError::InvalidArgument(e.to_string()))?;
    if !is_sha256(&layer.digest) {
        return Err(DiffError::InvalidArgument(format!(
            "invalid layer digest {:?}: expected sha256:<64 hex digits>",
            layer.digest
        )));
    }
    plan::apply_to(mounts).map_err(DiffError::InvalidArgument)
}

/// Applies `layer`, read from `content` in `namespace`, to `to`. Mount points are made under
/// `tmpmounts`.
pub async fn apply(
    content: PeerChannel,
    namespace: &str,
    layer: &Layer,
    to: ApplyTo,
    limits: Limits,
    tmpmounts: PathBuf,
) -> Result<Applied> {
    let expected = Expected { digest: layer.digest.clone(), size: u64::try_from(layer.size).ok().filter(|s| *s > 0) };
    let reader = BlobReader::open(content, namespace, expected).await?;
    tokio::task::spawn_blocking(move || apply_blocking(reader, to, limits, &tmpmounts))
        .await
        .map_err(|e| DiffError::Internal(format!("apply task failed: {e}")))?
}

fn apply_blocking(mut reader: BlobReader, to: ApplyTo, limits: Limits, tmpmounts: &Path) -> Result<Applied> {
    match to {
        ApplyTo::OverlayUpper { upper, parents } => {
            apply_onto(&mut reader, &upper, &Target::Overlay { parents }, limits)
        }
        ApplyTo::Mounted(mounts) => {
            let mounted = TempMount::new(tmpmounts, &mounts)?;
            apply_onto(&mut reader, mounted.path(), &Target::Native, limits)
        }
    }
}

fn apply_onto(reader: &mut BlobReader, root: &Path, target: &Target, limits: Limits) -> Result<Applied> {
    let was_empty = is_empty(root)?;
    let applied = berth_archive::apply(&mut *reader, root, target, limits).map_err(DiffError::from_archive);
    // The rest of the blob (after the compressed stream) and the verdict on all of it. A
    // corrupt blob explains a malformed layer better than the layer error does.
    let outcome = match (applied, reader.finish()) {
        (Ok(applied), Ok(())) => Ok(Applied { diff_id: applied.diff_id, size: applied.uncompressed_size }),
        (_, Err(blob)) => Err(DiffError::from(blob)),
        (Err(error), Ok(())) => Err(error),
    };
    if outcome.is_err() && was_empty {
        clear(root);
    }
    outcome
}

fn is_empty(dir: &Path) -> Result<bool> {
    let mut entries = std::fs::read_dir(dir).map_err(|e| match e.kind() {
        ErrorKind::NotFound => {
            DiffError::FailedPrecondition(format!("apply target {} does not exist (snapshot removed?)", dir.display()))
        }
        _ => DiffError::io(format!("read {}", dir.display()), e),
    })?;
    Ok(entries.next().is_none())
}

/// Removes everything inside `dir` (never following symlinks), leaving `dir` itself.
fn clear(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if let Err(e) = removed
            && e.kind() != ErrorKind::NotFound
        {
            tracing::warn!(error = %e, path = %path.display(), "could not remove part of a failed apply");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_must_be_sha256() {
        assert!(is_sha256(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_sha256(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_sha256("sha512:abc"));
        assert!(!is_sha256("sha256:../../etc"));
    }

    #[test]
    fn checks_before_reading() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let layer =
            |media_type: &str, digest: &str| Layer { media_type: media_type.into(), digest: digest.into(), size: 1 };
        let mounts = [Mount::bind(Path::new("/s/1/fs"), false)];
        let ok = check(&layer("application/vnd.oci.image.layer.v1.tar+zstd", &digest), &mounts).unwrap();
        assert!(matches!(ok, ApplyTo::Mounted(_)));
        for (layer, mounts, says) in [
            (layer("application/vnd.oci.image.config.v1+json", &digest), &mounts[..], "unsupported layer media type"),
            (layer("application/vnd.oci.image.layer.v1.tar", "sha256:zz"), &mounts[..], "invalid layer digest"),
            (layer("application/vnd.oci.image.layer.v1.tar", &digest), &[][..], "mounts is empty"),
        ] {
            let err = check(&layer, mounts).unwrap_err();
            assert!(matches!(err, DiffError::InvalidArgument(_)), "{err:?}");
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn clearing_keeps_the_directory_and_what_symlinks_point_at() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/file"), b"y").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        clear(&root);
        assert!(is_empty(&root).unwrap());
        assert!(outside.path().join("keep").exists());
    }
}
