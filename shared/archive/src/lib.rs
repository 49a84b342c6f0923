//! OCI image layers on directories: apply a layer (`.tar`, `+gzip`, `+zstd`) onto a snapshot
//! directory, and create a layer from the difference between two directories.
//!
//! Layers are untrusted input. Extraction never touches anything outside the target root: every
//! path is resolved inside the root with `openat2(RESOLVE_IN_ROOT)`, the last component is never
//! followed, and every change goes through a file descriptor or an `*at` call relative to a
//! directory opened inside the root. The decompressed size is bounded, `trusted.overlay.*`
//! xattrs in a layer are refused, and the diffID (sha256 of the whole uncompressed stream,
//! trailing bytes included) is computed and optionally verified.
//!
//! Everything here is blocking; async callers run it in `spawn_blocking`.
//!
//! ```no_run
//! use berth_archive::{Compression, Limits, Source, Target, apply_verified, diff};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Unpack: a layer blob onto a new overlay snapshot's upper dir, checking the diffID
//! // from the image config. On error the caller removes the snapshot.
//! let media_type = "application/vnd.oci.image.layer.v1.tar+gzip";
//! Compression::from_media_type(media_type)?; // refuse what is not a layer
//! let blob = std::fs::File::open("blob")?;
//! let target = Target::Overlay { parents: vec!["lower1".into(), "lower0".into()] };
//! let expected = "sha256:...";
//! let applied = apply_verified(blob, "upper".as_ref(), &target, Limits::default(), Some(expected))?;
//! println!("{} ({} bytes)", applied.diff_id, applied.uncompressed_size);
//!
//! // Commit: the layer of an overlay snapshot's changes, gzip-compressed.
//! let out = std::fs::File::create("layer.tar.gz")?;
//! let written = diff("lower".as_ref(), "upper".as_ref(), Source::OverlayUpper, Compression::Gzip, out)?;
//! println!("{} {} {}", written.compressed_digest, written.size, written.diff_id);
//! # Ok(())
//! # }
//! ```

mod apply;
mod compression;
mod diff;
mod digest;
mod error;
mod path;
mod pipeline;
mod rooted;
mod tarfmt;
mod whiteout;

pub use apply::{Applied, Limits, Target, apply, apply_verified};
pub use compression::Compression;
pub use diff::{Source, Written, diff};
pub use error::Error;

/// Result of this crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
