//! Diff: the changes from one mount set to another, written as a layer blob into content.
//!
//! An overlay layer over exactly the base's layers is read in place from its upper directory;
//! anything else is mounted read-only and compared file by file (see [`plan::DiffFrom`]). The
//! layer streams into Content.Write as it is made and is committed with its digest, the
//! request's labels and `containerd.io/uncompressed=<diffID>`, under the caller's lease. The
//! same trees give the same bytes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{Info, InfoRequest, UpdateRequest};
use berth_api::prost_types::FieldMask;
use berth_archive::{Compression, Source};
use berth_peers::{LeaseResources, PeerChannel};

use crate::diff::error::{DiffError, Result};
use crate::diff::plan::{self, DiffFrom};
use crate::diff::tempmount::TempMount;
use crate::diff::upload::{ChunkWriter, Committed, Destination, Produced, upload};
use crate::mount::Mount;

/// The label naming a compressed layer's diffID.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
/// What Diff makes when the request names no media type (as containerd).
pub const DEFAULT_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A Diff request without the gRPC types.
#[derive(Debug, Clone)]
pub struct Request {
    pub left: Vec<Mount>,
    pub right: Vec<Mount>,
    /// Empty for the default.
    pub media_type: String,
    /// Content ingest ref; empty to make one up.
    pub reference: String,
    pub labels: HashMap<String, String>,
}

/// The layer a Diff wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// The media type Diff writes for `requested`, and its compression. Like containerd's walking
/// differ, only OCI layer types (uncompressed, gzip, and here zstd too) are made; any other is
/// Unimplemented.
pub fn media_type(requested: &str) -> Result<(String, Compression)> {
    let media_type = if requested.is_empty() { DEFAULT_MEDIA_TYPE } else { requested };
    let compression = match media_type {
        "application/vnd.oci.image.layer.v1.tar" => Compression::None,
        "application/vnd.oci.image.layer.v1.tar+gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
        other => return Err(DiffError::Unimplemented(format!("unsupported diff media type: {other}"))),
    };
    Ok((media_type.to_string(), compression))
}

/// The peers a Diff talks to and where it mounts.
pub struct Context {
    pub content: PeerChannel,
    pub leases: LeaseResources,
    pub tmpmounts: PathBuf,
}

static REFS: AtomicU64 = AtomicU64::new(0);

/// A content ref for a Diff that named none, unique across processes and restarts.
fn made_up_reference() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("diff-{nanos}-{}-{}", std::process::id(), REFS.fetch_add(1, Ordering::Relaxed))
}

/// How often a Diff is made again when the blob it found in content vanished before it was
/// held (a garbage collection racing the commit).
const ATTEMPTS: usize = 3;

/// Writes the layer from `request.left` to `request.right` into content in `namespace`.
pub async fn diff(context: Context, namespace: &str, lease: Option<String>, request: Request) -> Result<Made> {
    let (media_type, compression) = media_type(&request.media_type)?;
    berth_core::labels::validate(&request.labels).map_err(|s| DiffError::InvalidArgument(s.message().to_string()))?;
    let from = plan::diff_from(&request.left, &request.right);
    let generated = request.reference.is_empty();
    let reference = if generated { made_up_reference() } else { request.reference.clone() };
    let to = Destination {
        content: context.content.clone(),
        namespace: namespace.to_string(),
        lease: lease.clone(),
        reference,
        generated,
    };
    let mut attempt = 1;
    loop {
        let (from, labels, tmpmounts) = (from.clone(), request.labels.clone(), context.tmpmounts.clone());
        let (produced, committed) =
            upload(&to, move |sink| produce(from, compression, &tmpmounts, labels, sink)).await?;
        let diff_id = produced.labels.get(UNCOMPRESSED_LABEL).cloned().unwrap_or_default();
        let made = Made { media_type: media_type.clone(), digest: produced.digest, size: produced.size, diff_id };
        if committed == Committed::New {
            return Ok(made);
        }
        match hold_existing(&context, namespace, lease.as_deref(), &made).await {
            Err(DiffError::Peer { status, .. }) if status.code() == tonic::Code::NotFound && attempt < ATTEMPTS => {
                tracing::debug!(digest = made.digest, attempt, "existing layer was collected meanwhile; diffing again");
                attempt += 1;
            }
            held => return held.map(|()| made),
        }
    }
}

/// For a layer content already had: as containerd's content store does, the caller's lease
/// holds it, and it gets its uncompressed label (the request's other labels are not applied).
/// NotFound when it was collected before the lease held it.
async fn hold_existing(context: &Context, namespace: &str, lease: Option<&str>, made: &Made) -> Result<()> {
    if let Some(lease) = lease {
        context
            .leases
            .add(namespace, lease, "content", &made.digest)
            .await
            .map_err(|s| DiffError::peer(format!("add {} to lease {lease}", made.digest), s))?;
    }
    ensure_uncompressed_label(context.content.clone(), namespace, &made.digest, &made.diff_id).await
}

/// Writes the layer into `sink` (blocking: mounts, walks, compresses).
fn produce(
    from: DiffFrom,
    compression: Compression,
    tmpmounts: &std::path::Path,
    mut labels: HashMap<String, String>,
    sink: &mut ChunkWriter,
) -> Result<Produced> {
    let written = match from {
        DiffFrom::OverlayUpper { lower, upper } => {
            berth_archive::diff(&lower, &upper, Source::OverlayUpper, compression, &mut *sink)
        }
        DiffFrom::Compare { left, right } => {
            let lower = TempMount::new(tmpmounts, &left)?;
            let upper = TempMount::new(tmpmounts, &right)?;
            berth_archive::diff(lower.path(), upper.path(), Source::Compare, compression, &mut *sink)
        }
    }
    .map_err(DiffError::from_archive)?;
    labels.insert(UNCOMPRESSED_LABEL.to_string(), written.diff_id);
    Ok(Produced { digest: written.compressed_digest, size: written.size, labels })
}

async fn ensure_uncompressed_label(content: PeerChannel, namespace: &str, digest: &str, diff_id: &str) -> Result<()> {
    let mut client = ContentClient::new(content);
    let failed = |s| DiffError::peer(format!("label layer {digest}"), s);
    let info = client
        .info(berth_peers::request(namespace, InfoRequest { digest: digest.to_string() }))
        .await
        .map_err(failed)?
        .into_inner()
        .info
        .ok_or_else(|| DiffError::Internal(format!("content answered Info for {digest} without info")))?;
    if info.labels.contains_key(UNCOMPRESSED_LABEL) {
        return Ok(());
    }
    let update = UpdateRequest {
        info: Some(Info {
            digest: digest.to_string(),
            labels: [(UNCOMPRESSED_LABEL.to_string(), diff_id.to_string())].into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths: vec![format!("labels.{UNCOMPRESSED_LABEL}")] }),
    };
    client.update(berth_peers::request(namespace, update)).await.map_err(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_like_containerds_walking_differ() {
        assert_eq!(media_type("").unwrap(), (DEFAULT_MEDIA_TYPE.to_string(), Compression::Gzip));
        assert_eq!(media_type("application/vnd.oci.image.layer.v1.tar").unwrap().1, Compression::None);
        assert_eq!(media_type("application/vnd.oci.image.layer.v1.tar+zstd").unwrap().1, Compression::Zstd);
        let err = media_type("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap_err();
        assert!(matches!(err, DiffError::Unimplemented(_)), "{err:?}");
        assert_eq!(err.to_string(), "unsupported diff media type: application/vnd.docker.image.rootfs.diff.tar.gzip");
    }

    #[test]
    fn made_up_references_differ() {
        assert_ne!(made_up_reference(), made_up_reference());
    }
}
