//! `berth images ls` and `berth images check`: image records with what the content store
//! knows about them, as ctr shows them.

use berth_api::containerd::services::images::v1::{Image, ListImagesRequest};
use berth_api::containerd::services::snapshots::v1::StatSnapshotRequest;
use berth_api::containerd::types::Descriptor;
use serde::Serialize;
use tonic::Code;

use super::documents::{self, Tree};
use crate::client::Client;
use crate::errors::Subject;
use crate::output::{self, Format, Table, binary_size, human_size};

const FILTER_EXAMPLE: &str = "name==busybox, labels.\"a.b\"==v or target.mediatype~=index";

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// containerd filters, e.g. name~=busybox or labels."a.b"==v (any of them may match)
    pub filters: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Print only the names of complete images
    #[arg(short, long)]
    pub quiet: bool,
    /// Snapshotter whose snapshots count as unpacked
    #[arg(long, default_value = "overlayfs")]
    pub snapshotter: String,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// containerd filters, as for `images ls`
    pub filters: Vec<String>,
}

/// The image records matching `filters`, sorted by name.
pub async fn list(client: &Client, filters: &[String]) -> anyhow::Result<Vec<Image>> {
    crate::args::check_filters(filters, FILTER_EXAMPLE)?;
    let request = ListImagesRequest { filters: filters.to_vec() };
    let mut images = super::images(client)
        .list(request)
        .await
        .map_err(|status| client.explain(status, Subject::Server))?
        .into_inner()
        .images;
    images.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(images)
}

fn target(image: &Image) -> Descriptor {
    image.target.clone().unwrap_or_default()
}

#[derive(Serialize)]
struct Listed {
    name: String,
    media_type: String,
    digest: String,
    /// What this host's platform needs, in bytes; absent when the content store lacks a manifest.
    size: Option<u64>,
    platforms: Vec<String>,
    labels: std::collections::BTreeMap<String, String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

pub async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<()> {
    let images = list(client, &args.filters).await?;
    if args.quiet {
        let names: String = images.iter().map(|image| format!("{}\n", image.name)).collect();
        return output::print(&names).map_err(Into::into);
    }
    let host = documents::host_platform();
    let mut listed = Vec::new();
    for image in &images {
        let target = target(image);
        let tree = Tree::read(client, &target).await?;
        let size = tree.size(&target, &host);
        listed.push(Listed {
            name: image.name.clone(),
            media_type: target.media_type.clone(),
            digest: target.digest.clone(),
            size,
            platforms: tree.platforms().split(',').filter(|p| !p.is_empty()).map(str::to_string).collect(),
            labels: output::sorted(&image.labels),
            created_at: output::rfc3339(image.created_at.as_ref()),
            updated_at: output::rfc3339(image.updated_at.as_ref()),
        });
    }
    if args.format == Format::Json {
        return output::print(&output::json(&listed)?).map_err(Into::into);
    }
    let mut table = Table::new(&["REF", "TYPE", "DIGEST", "SIZE", "PLATFORMS", "LABELS"]);
    for image in &listed {
        let labels = output::labels_inline(&image.labels.clone().into_iter().collect());
        table.row(vec![
            image.name.clone(),
            image.media_type.clone(),
            image.digest.clone(),
            image.size.map_or_else(|| "-".to_string(), human_size),
            image.platforms.join(","),
            if labels.is_empty() { "-".to_string() } else { labels },
        ]);
    }
    output::print(&table.render()).map_err(Into::into)
}

#[derive(Serialize)]
struct Checked {
    name: String,
    media_type: String,
    digest: String,
    complete: bool,
    /// `complete`, `incomplete`, or `missing` (no manifest for this platform), as ctr says.
    status: &'static str,
    present: usize,
    required: usize,
    available_size: u64,
    required_size: u64,
    /// Digests the content store lacks.
    missing: Vec<String>,
    unpacked: bool,
}

pub async fn check(client: &Client, args: CheckArgs) -> anyhow::Result<()> {
    let images = list(client, &args.filters).await?;
    let host = documents::host_platform();
    let mut checked = Vec::new();
    for image in &images {
        let target = target(image);
        let tree = Tree::read(client, &target).await?;
        let required = tree.required(&host);
        // No manifest for the platform to read: ctr calls that missing.
        let unread =
            tree.for_platform(&host).is_empty() || tree.for_platform(&host).iter().any(|m| m.document.is_none());
        let mut missing = Vec::new();
        let (mut available_size, mut required_size) = (0u64, 0u64);
        for descriptor in &required {
            let size = u64::try_from(descriptor.size).unwrap_or(0);
            required_size += size;
            if documents::present(client, &descriptor.digest).await? {
                available_size += size;
            } else {
                missing.push(descriptor.digest.clone());
            }
        }
        let unpacked = is_unpacked(client, &tree, &host, &args.snapshotter).await?;
        checked.push(Checked {
            name: image.name.clone(),
            media_type: target.media_type.clone(),
            digest: target.digest.clone(),
            complete: missing.is_empty() && !unread,
            status: if unread {
                "missing"
            } else if missing.is_empty() {
                "complete"
            } else {
                "incomplete"
            },
            present: required.len() - missing.len(),
            required: required.len(),
            available_size,
            required_size,
            missing,
            unpacked,
        });
    }
    if args.quiet {
        let names: String = checked.iter().filter(|c| c.complete).map(|c| format!("{}\n", c.name)).collect();
        return output::print(&names).map_err(Into::into);
    }
    if args.format == Format::Json {
        return output::print(&output::json(&checked)?).map_err(Into::into);
    }
    let mut table = Table::new(&["REF", "TYPE", "DIGEST", "STATUS", "SIZE", "UNPACKED"]);
    for c in &checked {
        table.row(vec![
            c.name.clone(),
            c.media_type.clone(),
            c.digest.clone(),
            format!("{} ({}/{})", c.status, c.present, c.required),
            format!("{}/{}", binary_size(c.available_size as i64), binary_size(c.required_size as i64)),
            c.unpacked.to_string(),
        ]);
    }
    output::print(&table.render()).map_err(Into::into)
}

/// Whether the top layer's chain of the host's manifest is a snapshot in `snapshotter`.
pub async fn is_unpacked(client: &Client, tree: &Tree, platform: &str, snapshotter: &str) -> anyhow::Result<bool> {
    let Some(manifest) = tree.for_platform(platform).into_iter().next() else { return Ok(false) };
    let Some(chain_id) = Tree::chain_id(manifest) else { return Ok(false) };
    let request = StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: chain_id.clone() };
    match client.snapshots().stat(request).await {
        Ok(_) => Ok(true),
        Err(status) if matches!(status.code(), Code::NotFound | Code::InvalidArgument) => Ok(false),
        Err(status) => Err(client.explain(status, Subject::Snapshot { key: &chain_id, snapshotter })),
    }
}
