//! `berth snapshots ...`: snapshots in one snapshotter (containerd.services.snapshots.v1), and
//! layers made from them or unpacked onto them (containerd.services.diff.v1).
//!
//! Shaped like `ctr snapshots`: `--snapshotter` on the group, snapshots made by hand are
//! labelled `containerd.io/gc.root` so that the garbage collector leaves them alone until they
//! are removed by hand, and `diff` works on the parent of a snapshot unless told otherwise.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use berth_api::containerd::services::content::v1::{InfoRequest, ReadContentRequest};
use berth_api::containerd::services::diff::v1::{ApplyRequest, DiffRequest};
use berth_api::containerd::services::leases::v1::{CreateRequest, DeleteRequest};
use berth_api::containerd::services::snapshots::v1::{
    CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
};
use berth_api::containerd::types::{Descriptor, Mount};
use clap::Subcommand;
use serde::Serialize;
use tonic::metadata::AsciiMetadataValue;

use crate::args::{check_filters, parse_label};
use crate::client::Client;
use crate::commands::{content, label_changes, leases, remove_each};
use crate::errors::Subject;
use crate::output::{self, Format, Table};

/// The snapshotter used when neither `--snapshotter` nor the environment names one.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// The label that makes the garbage collector keep a snapshot or blob (what ctr sets).
pub const GC_ROOT_LABEL: &str = "containerd.io/gc.root";

/// gRPC metadata key naming the lease a call works under (containerd's).
pub const LEASE_METADATA_KEY: &str = "containerd-lease";

/// What `diff` makes unless told otherwise, as ctr.
pub const DEFAULT_DIFF_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Where `prepare --mounts` and `view --mounts` put the target when no `--target` is given.
pub const TARGET_PLACEHOLDER: &str = "TARGET";

const FILTER_EXAMPLE: &str = "kind==committed, parent==base or labels.team==blue";

/// `berth snapshots [--snapshotter NAME] COMMAND`.
#[derive(Debug, clap::Args)]
pub struct Group {
    /// Snapshotter to work in [env: BERTH_SNAPSHOTTER, then CONTAINERD_SNAPSHOTTER] [default: overlayfs]
    #[arg(long, global = true, value_name = "NAME")]
    pub snapshotter: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List snapshots (KEY PARENT KIND), optionally only those matching containerd filters
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Print a snapshot's record as JSON
    Info(KeyArgs),
    /// Make an active (writable) snapshot KEY on top of the committed PARENT (or empty)
    Prepare(CreateArgs),
    /// Make a read-only view KEY of the committed PARENT (or empty)
    View(CreateArgs),
    /// Print the mount commands that mount snapshot KEY at TARGET
    #[command(visible_aliases = ["mount", "m"])]
    Mounts(MountsArgs),
    /// Commit the active snapshot KEY as NAME (KEY is gone afterwards)
    Commit(CommitArgs),
    /// Remove snapshots; prints each key removed
    #[command(visible_aliases = ["delete", "del", "remove"])]
    Rm(RmArgs),
    /// Disk usage of snapshots (SIZE INODES): all of them, or the KEYs given
    Usage(UsageArgs),
    /// Show snapshots as a tree of parents and children
    Tree,
    /// Set labels on a snapshot (k=v), or remove them (k=); prints the resulting labels
    Label(LabelArgs),
    /// Write the changes from snapshot IDA to IDB (default: from IDA's parent to IDA) as a
    /// layer blob in content; prints its digest
    Diff(DiffArgs),
    /// Unpack a layer blob from content onto the active snapshot KEY; prints the layer's diffID
    Apply(ApplyArgs),
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print only keys
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// containerd filters, e.g. kind==committed or parent==base (any of them may match)
    pub filters: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    pub key: String,
}

/// `prepare` and `view`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Label, key=value (repeatable); containerd.io/gc.root is always set, as ctr does
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Print the mounts as `mount -t TYPE SOURCE TARGET -o OPTIONS` lines (TARGET stands for
    /// the mount point unless --target is given)
    #[arg(long)]
    pub mounts: bool,
    /// Mount point to put in the printed mount lines (implies --mounts)
    #[arg(short, long, value_name = "DIR")]
    pub target: Option<String>,
    /// Output format of the mounts (json: containerd's Mount records, implies --mounts)
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Key of the new snapshot
    pub key: String,
    /// Committed snapshot to start from [default: an empty one]
    pub parent: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct MountsArgs {
    /// Output format (json: containerd's Mount records)
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Where the snapshot would be mounted
    pub target: String,
    pub key: String,
}

#[derive(Debug, clap::Args)]
pub struct CommitArgs {
    /// Label for the committed snapshot, key=value (repeatable); containerd.io/gc.root is always set
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Name of the committed snapshot
    pub name: String,
    /// Active snapshot to commit
    pub key: String,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "KEY")]
    pub keys: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    /// Sizes in bytes
    #[arg(short = 'b')]
    pub bytes: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    #[arg(value_name = "KEY")]
    pub keys: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    pub key: String,
    /// key=value to set, key= to remove
    #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// Media type of the layer; tar, tar+gzip and tar+zstd are short for the OCI layer types
    #[arg(long, default_value = DEFAULT_DIFF_MEDIA_TYPE, value_parser = parse_media_type)]
    pub media_type: String,
    /// Ingest ref to write the layer through [default: one the server picks]
    #[arg(long = "ref", value_name = "REF")]
    pub reference: Option<String>,
    /// Label for the layer blob, key=value (repeatable); containerd.io/gc.root is always set so
    /// that the blob stays until `berth content rm DIGEST`
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The lower snapshot (or, alone, the upper one: compared with its parent)
    #[arg(value_name = "IDA")]
    pub lower: String,
    /// The upper snapshot
    #[arg(value_name = "IDB")]
    pub upper: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Media type of the blob (tar, tar+gzip and tar+zstd are short for the OCI layer types)
    /// [default: found from its first bytes]
    #[arg(long, value_parser = parse_media_type)]
    pub media_type: Option<String>,
    /// Layer blob, already in content
    #[arg(value_parser = content::parse_digest)]
    pub digest: String,
    /// Active snapshot to unpack into
    pub key: String,
}

/// The snapshotter a command works in: `--snapshotter`, else $BERTH_SNAPSHOTTER, else
/// $CONTAINERD_SNAPSHOTTER (ctr's), else overlayfs. Empty values count as unset.
pub fn resolve_snapshotter(flag: Option<String>, env: impl Fn(&str) -> Option<String>) -> String {
    flag.filter(|value| !value.is_empty())
        .or_else(|| env("BERTH_SNAPSHOTTER").filter(|value| !value.is_empty()))
        .or_else(|| env("CONTAINERD_SNAPSHOTTER").filter(|value| !value.is_empty()))
        .unwrap_or_else(|| DEFAULT_SNAPSHOTTER.to_string())
}

pub async fn run(client: &Client, group: Group) -> anyhow::Result<()> {
    let snapshotter = resolve_snapshotter(group.snapshotter, |name| std::env::var(name).ok());
    let cx = Cx { client, snapshotter: &snapshotter };
    match group.command {
        Command::Ls(args) => ls(cx, args).await,
        Command::Info(args) => info(cx, args).await,
        Command::Prepare(args) => create(cx, args, Create::Prepare).await,
        Command::View(args) => create(cx, args, Create::View).await,
        Command::Mounts(args) => mounts(cx, args).await,
        Command::Commit(args) => commit(cx, args).await,
        Command::Rm(args) => rm(cx, args).await,
        Command::Usage(args) => usage(cx, args).await,
        Command::Tree => tree(cx).await,
        Command::Label(args) => label(cx, args).await,
        Command::Diff(args) => diff(cx, args).await,
        Command::Apply(args) => apply(cx, args).await,
    }
}

/// What every command needs: the connection and the snapshotter it works in.
#[derive(Clone, Copy)]
struct Cx<'a> {
    client: &'a Client,
    snapshotter: &'a str,
}

impl Cx<'_> {
    fn explain(&self, key: &str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
        let key = key.to_string();
        move |status| self.client.explain(status, Subject::Snapshot { key: &key, snapshotter: self.snapshotter })
    }

    fn explain_list(&self) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
        move |status| self.client.explain(status, Subject::Snapshotter(self.snapshotter))
    }

    async fn list(&self, filters: Vec<String>) -> anyhow::Result<Vec<Info>> {
        let request = ListSnapshotsRequest { snapshotter: self.snapshotter.to_string(), filters };
        let mut stream = self.client.snapshots().list(request).await.map_err(self.explain_list())?.into_inner();
        let mut found = Vec::new();
        while let Some(page) = stream.message().await.map_err(self.explain_list())? {
            found.extend(page.info);
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
    }

    async fn stat(&self, key: &str) -> anyhow::Result<Info> {
        let request = StatSnapshotRequest { snapshotter: self.snapshotter.to_string(), key: key.to_string() };
        self.client
            .snapshots()
            .stat(request)
            .await
            .map_err(self.explain(key))?
            .into_inner()
            .info
            .with_context(|| format!("berth answered without the record of snapshot {key}"))
    }

    async fn mounts_of(&self, key: &str) -> anyhow::Result<Vec<Mount>> {
        let request = MountsRequest { snapshotter: self.snapshotter.to_string(), key: key.to_string() };
        Ok(self.client.snapshots().mounts(request).await.map_err(self.explain(key))?.into_inner().mounts)
    }

    /// A read-only view `key` of `parent`, made under `lease`.
    async fn view(&self, key: &str, parent: &str, lease: &str) -> anyhow::Result<Vec<Mount>> {
        let request = ViewSnapshotRequest {
            snapshotter: self.snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        };
        let parent_or_key = if parent.is_empty() { key } else { parent };
        Ok(self
            .client
            .snapshots()
            .view(leased(request, lease)?)
            .await
            .map_err(self.explain(parent_or_key))?
            .into_inner()
            .mounts)
    }

    async fn remove(&self, key: &str) -> anyhow::Result<()> {
        let request = RemoveSnapshotRequest { snapshotter: self.snapshotter.to_string(), key: key.to_string() };
        self.client.snapshots().remove(request).await.map_err(self.explain(key))?;
        Ok(())
    }
}

async fn ls(cx: Cx<'_>, args: LsArgs) -> anyhow::Result<()> {
    check_filters(&args.filters, FILTER_EXAMPLE)?;
    let snapshots = cx.list(args.filters).await?;
    let text = match (args.quiet, args.format) {
        (true, _) => snapshots.iter().map(|info| format!("{}\n", info.name)).collect(),
        (false, Format::Table) => snapshots_table(&snapshots),
        (false, Format::Json) => output::json(&snapshots.iter().map(SnapshotRow::from).collect::<Vec<_>>())?,
    };
    output::print(&text)?;
    Ok(())
}

async fn info(cx: Cx<'_>, args: KeyArgs) -> anyhow::Result<()> {
    let info = cx.stat(&args.key).await?;
    output::print(&output::json(&SnapshotInfo::from(&info))?)?;
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Create {
    Prepare,
    View,
}

async fn create(cx: Cx<'_>, args: CreateArgs, what: Create) -> anyhow::Result<()> {
    let labels = with_gc_root(&args.labels, SystemTime::now());
    let snapshotter = cx.snapshotter.to_string();
    let (key, parent) = (args.key.clone(), args.parent.clone().unwrap_or_default());
    let mut snapshots = cx.client.snapshots();
    let explain = cx.explain(&args.key);
    let mounts = match what {
        Create::Prepare => {
            let request = PrepareSnapshotRequest { snapshotter, key, parent, labels };
            snapshots.prepare(request).await.map_err(explain)?.into_inner().mounts
        }
        Create::View => {
            let request = ViewSnapshotRequest { snapshotter, key, parent, labels };
            snapshots.view(request).await.map_err(explain)?.into_inner().mounts
        }
    };
    let text = match (args.format, &args.target, args.mounts) {
        (Format::Json, _, _) => mounts_json(&mounts)?,
        (Format::Table, Some(target), _) => mount_lines(target, &mounts),
        (Format::Table, None, true) => mount_lines(TARGET_PLACEHOLDER, &mounts),
        (Format::Table, None, false) => String::new(),
    };
    output::print(&text)?;
    Ok(())
}

async fn mounts(cx: Cx<'_>, args: MountsArgs) -> anyhow::Result<()> {
    let mounts = match cx.mounts_of(&args.key).await {
        Ok(mounts) => mounts,
        Err(err) => {
            // A committed snapshot has no mounts of its own; say how to get some.
            if cx.stat(&args.key).await.is_ok_and(|info| Kind::try_from(info.kind) == Ok(Kind::Committed)) {
                anyhow::bail!(
                    "snapshot {key} is committed and has no mounts of its own: make a view of it with \
                     `berth snapshots view --target {target} VIEW-KEY {key}` (or prepare a writable one)",
                    key = args.key,
                    target = args.target,
                );
            }
            return Err(err);
        }
    };
    let text = match args.format {
        Format::Table => mount_lines(&args.target, &mounts),
        Format::Json => mounts_json(&mounts)?,
    };
    output::print(&text)?;
    Ok(())
}

async fn commit(cx: Cx<'_>, args: CommitArgs) -> anyhow::Result<()> {
    let request = CommitSnapshotRequest {
        snapshotter: cx.snapshotter.to_string(),
        name: args.name.clone(),
        key: args.key.clone(),
        labels: with_gc_root(&args.labels, SystemTime::now()),
    };
    // Commit fails on either name: AlreadyExists names NAME, anything else is about KEY.
    cx.client.snapshots().commit(request).await.map_err(|status| {
        let about = if status.code() == tonic::Code::AlreadyExists { &args.name } else { &args.key };
        cx.explain(about)(status)
    })?;
    Ok(())
}

async fn rm(cx: Cx<'_>, args: RmArgs) -> anyhow::Result<()> {
    remove_each("snapshots", &args.keys, |key| async move { cx.remove(&key).await }).await
}

async fn usage(cx: Cx<'_>, args: UsageArgs) -> anyhow::Result<()> {
    let keys = if args.keys.is_empty() {
        cx.list(Vec::new()).await?.into_iter().map(|info| info.name).collect()
    } else {
        args.keys
    };
    let mut snapshots = cx.client.snapshots();
    let mut rows = Vec::with_capacity(keys.len());
    for key in keys {
        let request = UsageRequest { snapshotter: cx.snapshotter.to_string(), key: key.clone() };
        let usage = snapshots.usage(request).await.map_err(cx.explain(&key))?.into_inner();
        rows.push(UsageRow { key, size: usage.size, inodes: usage.inodes });
    }
    let text = match args.format {
        Format::Table => usage_table(&rows, args.bytes),
        Format::Json => output::json(&rows)?,
    };
    output::print(&text)?;
    Ok(())
}

async fn tree(cx: Cx<'_>) -> anyhow::Result<()> {
    let snapshots = cx.list(Vec::new()).await?;
    output::print(&render_tree(&snapshots))?;
    Ok(())
}

async fn label(cx: Cx<'_>, args: LabelArgs) -> anyhow::Result<()> {
    let info = if args.labels.is_empty() {
        // Nothing to change: show what is there.
        cx.stat(&args.key).await?
    } else {
        let (labels, mask) = label_changes(&args.labels);
        let request = UpdateSnapshotRequest {
            snapshotter: cx.snapshotter.to_string(),
            info: Some(Info { name: args.key.clone(), labels, ..Default::default() }),
            update_mask: Some(mask),
        };
        cx.client
            .snapshots()
            .update(request)
            .await
            .map_err(cx.explain(&args.key))?
            .into_inner()
            .info
            .unwrap_or_default()
    };
    output::print(&format!("{}\n", output::labels_inline(&info.labels)))?;
    Ok(())
}

/// A lease the command works under, so that the garbage collector keeps what it makes (views,
/// the layer being written) until it is done; removed at the end, expiring on its own if the
/// command dies first.
struct Lease<'a> {
    client: &'a Client,
    id: String,
}

/// How long a command's lease outlives a command that died without removing it.
const LEASE_EXPIRY: std::time::Duration = std::time::Duration::from_secs(3600);

impl<'a> Lease<'a> {
    async fn create(client: &'a Client) -> anyhow::Result<Lease<'a>> {
        let now = SystemTime::now();
        let id = format!("berth-snapshots-{}", leases::random_id(now));
        let labels = HashMap::from([(leases::EXPIRE_LABEL.to_string(), leases::expiry(now, LEASE_EXPIRY)?)]);
        client
            .leases()
            .create(CreateRequest { id: id.clone(), labels })
            .await
            .map_err(|status| client.explain(status, Subject::Lease(&id)))?;
        Ok(Lease { client, id })
    }

    /// Removes the lease; a failure only warns (it expires by itself).
    async fn remove(self) {
        let request = DeleteRequest { id: self.id.clone(), sync: false };
        if let Err(status) = self.client.leases().delete(request).await {
            let err = self.client.explain(status, Subject::Lease(&self.id));
            eprintln!("berth: could not remove the temporary lease {} (it expires within the hour): {err:#}", self.id);
        }
    }
}

/// `message` as a request made under `lease`.
fn leased<T>(message: T, lease: &str) -> anyhow::Result<tonic::Request<T>> {
    let value: AsciiMetadataValue =
        lease.parse().map_err(|_| anyhow::anyhow!("lease {lease:?} cannot be sent in gRPC metadata"))?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(LEASE_METADATA_KEY, value);
    Ok(request)
}

/// Views made for a command, removed when it is done.
#[derive(Default)]
struct Views {
    keys: Vec<String>,
}

impl Views {
    /// The mounts of `key` to read from: its own for an active snapshot or a view, a fresh
    /// read-only view for a committed one (as ctr does).
    async fn mounts(&mut self, cx: Cx<'_>, key: &str, lease: &str) -> anyhow::Result<Vec<Mount>> {
        let info = cx.stat(key).await?;
        match Kind::try_from(info.kind) {
            Ok(Kind::Active | Kind::View) => cx.mounts_of(key).await,
            _ => self.view_of(cx, key, lease).await,
        }
    }

    /// A fresh read-only view of `parent` (empty for none: an empty tree).
    async fn view_of(&mut self, cx: Cx<'_>, parent: &str, lease: &str) -> anyhow::Result<Vec<Mount>> {
        let key = view_key(parent, SystemTime::now());
        let mounts = cx.view(&key, parent, lease).await?;
        self.keys.push(key);
        Ok(mounts)
    }

    /// Removes the views, newest first; failures only warn (the lease still holds them).
    async fn remove(self, cx: Cx<'_>) {
        for key in self.keys.iter().rev() {
            if let Err(err) = cx.remove(key).await {
                eprintln!("berth: could not remove the temporary view {key}: {err:#}");
            }
        }
    }
}

/// Key of a temporary view of `of`: unique, and saying where it comes from.
fn view_key(of: &str, now: SystemTime) -> String {
    let of = if of.is_empty() { "empty" } else { of };
    format!("{of}-view-{}", leases::random_id(now))
}

async fn diff(cx: Cx<'_>, args: DiffArgs) -> anyhow::Result<()> {
    let lease = Lease::create(cx.client).await?;
    let mut views = Views::default();
    let made = diff_under(cx, &args, &lease.id, &mut views).await;
    views.remove(cx).await;
    lease.remove().await;
    let descriptor = made?;
    output::print(&format!("{}\n", descriptor.digest))?;
    Ok(())
}

async fn diff_under(cx: Cx<'_>, args: &DiffArgs, lease: &str, views: &mut Views) -> anyhow::Result<Descriptor> {
    let (left, right) = match &args.upper {
        Some(upper) => {
            let left = views.mounts(cx, &args.lower, lease).await?;
            (left, views.mounts(cx, upper, lease).await?)
        }
        None => {
            // One snapshot: what it changed on top of its parent.
            let info = cx.stat(&args.lower).await?;
            let left = views.view_of(cx, &info.parent, lease).await?;
            (left, views.mounts(cx, &args.lower, lease).await?)
        }
    };
    let labels = with_gc_root(&args.labels, SystemTime::now());
    let request = DiffRequest {
        left,
        right,
        media_type: args.media_type.clone(),
        r#ref: args.reference.clone().unwrap_or_default(),
        labels: labels.clone(),
        source_date_epoch: None,
    };
    let descriptor = cx
        .client
        .diff()
        .diff(leased(request, lease)?)
        .await
        .map_err(|status| cx.client.explain(status, Subject::Server))?
        .into_inner()
        .diff
        .context("berth answered Diff without a descriptor")?;
    // The same changes make the same blob: when it was already there, Diff left its labels
    // as they were, so set them here (still under the lease), or the blob may not be kept.
    let labels: Vec<(String, String)> = labels.into_iter().collect();
    cx.client
        .content()
        .update(content::label_update(&descriptor.digest, &labels))
        .await
        .map_err(|status| cx.client.explain(status, Subject::Content(&descriptor.digest)))?;
    Ok(descriptor)
}

async fn apply(cx: Cx<'_>, args: ApplyArgs) -> anyhow::Result<()> {
    let digest = args.digest.as_str();
    let explain_blob = |status| cx.client.explain(status, Subject::Content(digest));
    let mut content = cx.client.content();
    let blob = content
        .info(InfoRequest { digest: digest.to_string() })
        .await
        .map_err(explain_blob)?
        .into_inner()
        .info
        .with_context(|| format!("berth answered without the record of content {digest}"))?;
    let media_type = match args.media_type {
        Some(media_type) => media_type,
        None => {
            let request = ReadContentRequest { digest: digest.to_string(), offset: 0, size: 4 };
            let mut stream = content.read(request).await.map_err(explain_blob)?.into_inner();
            let head = stream.message().await.map_err(explain_blob)?.map(|chunk| chunk.data).unwrap_or_default();
            layer_media_type(&head).to_string()
        }
    };
    let info = cx.stat(&args.key).await?;
    if Kind::try_from(info.kind) != Ok(Kind::Active) {
        anyhow::bail!(
            "snapshot {} is {}, not active: layers are applied onto active snapshots \
             (make one with `berth snapshots prepare NEW {}`)",
            args.key,
            kind_name(info.kind).to_lowercase(),
            if Kind::try_from(info.kind) == Ok(Kind::Committed) { &args.key } else { "PARENT" },
        );
    }
    let mounts = cx.mounts_of(&args.key).await?;
    let request = ApplyRequest {
        diff: Some(Descriptor { media_type, digest: blob.digest, size: blob.size, annotations: HashMap::new() }),
        mounts,
        payloads: HashMap::new(),
    };
    let applied = cx
        .client
        .diff()
        .apply(request)
        .await
        .map_err(explain_blob)?
        .into_inner()
        .applied
        .context("berth answered Apply without a descriptor")?;
    output::print(&format!("{}\n", applied.digest))?;
    Ok(())
}

/// A media type as given: `tar`, `tar+gzip` (or `gzip`), `tar+zstd` (or `zstd`) stand for the
/// OCI layer types; anything else is taken as written.
pub fn parse_media_type(text: &str) -> Result<String, String> {
    let full = match text {
        "" => return Err("empty media type: use e.g. tar+gzip or application/vnd.oci.image.layer.v1.tar".into()),
        "tar" => "application/vnd.oci.image.layer.v1.tar",
        "tar+gzip" | "gzip" => "application/vnd.oci.image.layer.v1.tar+gzip",
        "tar+zstd" | "zstd" => "application/vnd.oci.image.layer.v1.tar+zstd",
        other => other,
    };
    Ok(full.to_string())
}

/// The layer media type of a blob starting with `head`: gzip and zstd by their magic numbers,
/// plain tar otherwise.
pub fn layer_media_type(head: &[u8]) -> &'static str {
    if head.starts_with(&[0x1f, 0x8b]) {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    } else {
        "application/vnd.oci.image.layer.v1.tar"
    }
}

/// `labels` plus `containerd.io/gc.root` set to `now`, as ctr labels what it creates by hand
/// (a root label given explicitly wins).
pub fn with_gc_root(labels: &[(String, String)], now: SystemTime) -> HashMap<String, String> {
    let mut all = HashMap::from([(GC_ROOT_LABEL.to_string(), output::rfc3339_seconds(Some(&now.into())))]);
    for (key, value) in labels {
        if value.is_empty() {
            all.remove(key);
        } else {
            all.insert(key.clone(), value.clone());
        }
    }
    all
}

/// A kind as ctr prints it.
pub fn kind_name(kind: i32) -> &'static str {
    match Kind::try_from(kind) {
        Ok(Kind::View) => "View",
        Ok(Kind::Active) => "Active",
        Ok(Kind::Committed) => "Committed",
        Ok(Kind::Unknown) | Err(_) => "Unknown",
    }
}

/// `snapshots ls` as ctr prints it: KEY PARENT KIND (no parent: empty).
pub fn snapshots_table(snapshots: &[Info]) -> String {
    let mut table = Table::new(&["KEY", "PARENT", "KIND"]);
    for info in snapshots {
        table.row(vec![info.name.clone(), info.parent.clone(), kind_name(info.kind).to_string()]);
    }
    table.render()
}

/// `snapshots tree` as ctr prints it: roots first in key order, each child two spaces further
/// in and marked `\_`. A parent that is not listed shows as a root of its own.
pub fn render_tree(snapshots: &[Info]) -> String {
    // Nodes in the order they are first named, as a snapshot or as a parent.
    let mut order: Vec<&str> = Vec::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut parents: HashMap<&str, &str> = HashMap::new();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for info in snapshots {
        for name in [info.name.as_str(), info.parent.as_str()] {
            if !name.is_empty() && seen.insert(name) {
                order.push(name);
            }
        }
        parents.insert(&info.name, &info.parent);
        if !info.parent.is_empty() {
            children.entry(&info.parent).or_default().push(&info.name);
        }
    }
    let mut text = String::new();
    for name in order {
        if parents.get(name).is_none_or(|parent| parent.is_empty()) {
            print_node(name, 0, &children, &mut text);
        }
    }
    text
}

fn print_node(name: &str, level: usize, children: &HashMap<&str, Vec<&str>>, text: &mut String) {
    text.push_str(&"  ".repeat(level));
    if level > 0 {
        text.push_str("\\_");
    }
    text.push(' ');
    text.push_str(name);
    text.push('\n');
    for child in children.get(name).into_iter().flatten() {
        print_node(child, level + 1, children, text);
    }
}

/// The mount commands for `mounts` at `target`, one line each, as ctr prints them (quoted for
/// a shell where needed).
pub fn mount_lines(target: &str, mounts: &[Mount]) -> String {
    let mut text = String::new();
    for mount in mounts {
        let at = if mount.target.is_empty() {
            target.to_string()
        } else {
            Path::new(target).join(mount.target.trim_start_matches('/')).display().to_string()
        };
        text.push_str(&format!("mount -t {} {} {}", quote(&mount.r#type), quote(&mount.source), quote(&at)));
        if !mount.options.is_empty() {
            text.push_str(" -o ");
            text.push_str(&quote(&mount.options.join(",")));
        }
        text.push('\n');
    }
    text
}

/// `text` as one shell word: as is when it is plain, in single quotes otherwise.
fn quote(text: &str) -> String {
    let plain = !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./:=,@%+".contains(&b));
    if plain { text.to_string() } else { format!("'{}'", text.replace('\'', "'\\''")) }
}

/// Mounts as ctr's `--mounts` prints them: containerd's Go `mount.Mount` field names.
fn mounts_json(mounts: &[Mount]) -> anyhow::Result<String> {
    output::json(&mounts.iter().map(MountRecord::from).collect::<Vec<_>>())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountRecord {
    #[serde(rename = "Type")]
    pub kind: String,
    pub source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub target: String,
    pub options: Vec<String>,
}

impl From<&Mount> for MountRecord {
    fn from(mount: &Mount) -> MountRecord {
        MountRecord {
            kind: mount.r#type.clone(),
            source: mount.source.clone(),
            target: mount.target.clone(),
            options: mount.options.clone(),
        }
    }
}

/// One snapshot in `snapshots ls --format json`.
#[derive(Debug, Serialize)]
pub struct SnapshotRow {
    pub key: String,
    pub parent: String,
    pub kind: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<&Info> for SnapshotRow {
    fn from(info: &Info) -> SnapshotRow {
        SnapshotRow {
            key: info.name.clone(),
            parent: info.parent.clone(),
            kind: kind_name(info.kind).to_lowercase(),
            labels: output::sorted(&info.labels),
            created_at: output::rfc3339(info.created_at.as_ref()),
            updated_at: output::rfc3339(info.updated_at.as_ref()),
        }
    }
}

/// `snapshots info`: the record with ctr's field names (containerd's Go `snapshots.Info`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SnapshotInfo {
    pub kind: &'static str,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub parent: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub created: Option<String>,
    pub updated: Option<String>,
}

impl From<&Info> for SnapshotInfo {
    fn from(info: &Info) -> SnapshotInfo {
        SnapshotInfo {
            kind: kind_name(info.kind),
            name: info.name.clone(),
            parent: info.parent.clone(),
            labels: output::sorted(&info.labels),
            created: output::rfc3339(info.created_at.as_ref()),
            updated: output::rfc3339(info.updated_at.as_ref()),
        }
    }
}

/// One snapshot's disk usage, as `usage --format json` prints it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct UsageRow {
    pub key: String,
    pub size: i64,
    pub inodes: i64,
}

/// `snapshots usage` as ctr prints it: KEY SIZE INODES, sizes in binary units unless `bytes`.
pub fn usage_table(rows: &[UsageRow], bytes: bool) -> String {
    let mut table = Table::new(&["KEY", "SIZE", "INODES"]);
    for row in rows {
        let size = if bytes { row.size.to_string() } else { output::binary_size(row.size) };
        table.row(vec![row.key.clone(), size, row.inodes.to_string()]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::prost_types::Timestamp;
    use clap::Parser as _;

    use crate::args::{Cli, Command as Top};

    fn group(args: &[&str]) -> Result<Group, clap::Error> {
        let cli = Cli::try_parse_from(["berth", "snapshots"].iter().chain(args.iter()).copied())?;
        match cli.command {
            Top::Snapshots(group) => Ok(group),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn command(args: &[&str]) -> Command {
        group(args).unwrap_or_else(|err| panic!("{args:?}: {err}")).command
    }

    #[test]
    fn snapshotter_flag_before_or_after_the_command() {
        assert_eq!(group(&["ls"]).unwrap().snapshotter, None);
        assert_eq!(group(&["--snapshotter", "native", "ls"]).unwrap().snapshotter.as_deref(), Some("native"));
        assert_eq!(
            group(&["apply", "--snapshotter", "native", DIGEST, "k"]).unwrap().snapshotter.as_deref(),
            Some("native")
        );
    }

    #[test]
    fn snapshotter_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
        };
        assert_eq!(resolve_snapshotter(None, env(&[])), "overlayfs");
        assert_eq!(resolve_snapshotter(None, env(&[("CONTAINERD_SNAPSHOTTER", "native")])), "native");
        assert_eq!(
            resolve_snapshotter(None, env(&[("CONTAINERD_SNAPSHOTTER", "native"), ("BERTH_SNAPSHOTTER", "b")])),
            "b"
        );
        assert_eq!(resolve_snapshotter(Some("flag".into()), env(&[("BERTH_SNAPSHOTTER", "b")])), "flag");
        assert_eq!(resolve_snapshotter(Some(String::new()), env(&[])), "overlayfs");
    }

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn arguments() {
        let Command::Prepare(args) = command(&["prepare", "--label", "a=b", "--mounts", "k", "p"]) else {
            panic!("not prepare")
        };
        assert_eq!((args.key.as_str(), args.parent.as_deref(), args.mounts), ("k", Some("p"), true));
        assert_eq!(args.labels, [("a".to_string(), "b".to_string())]);
        let Command::View(args) = command(&["view", "-t", "/mnt", "v"]) else { panic!("not view") };
        assert_eq!((args.target.as_deref(), args.parent), (Some("/mnt"), None));
        assert!(
            matches!(command(&["m", "/mnt", "k"]), Command::Mounts(args) if args.target == "/mnt" && args.key == "k")
        );
        assert!(matches!(command(&["commit", "name", "key"]), Command::Commit(args) if args.name == "name"));
        assert!(matches!(command(&["delete", "a", "b"]), Command::Rm(args) if args.keys == ["a", "b"]));
        assert!(group(&["rm"]).is_err());
        let Command::Usage(args) = command(&["usage", "-b", "--format", "json", "a"]) else { panic!("not usage") };
        assert!(args.bytes && args.format == Format::Json && args.keys == ["a"]);
        assert!(matches!(command(&["tree"]), Command::Tree));
        let Command::Diff(args) = command(&["diff", "--ref", "r", "--label", "x=y", "a"]) else { panic!("not diff") };
        assert_eq!(args.media_type, DEFAULT_DIFF_MEDIA_TYPE);
        assert_eq!((args.lower.as_str(), args.upper, args.reference.as_deref()), ("a", None, Some("r")));
        let Command::Apply(args) = command(&["apply", "--media-type", "t", DIGEST, "k"]) else { panic!("not apply") };
        assert_eq!((args.media_type.as_deref(), args.key.as_str()), (Some("t"), "k"));
        let err = group(&["apply", "sha256:nope", "k"]).unwrap_err();
        assert!(err.to_string().contains("invalid digest"), "{err}");
        let Command::Ls(args) = command(&["list", "-q", "kind==committed"]) else { panic!("not ls") };
        assert!(args.quiet && args.filters == ["kind==committed"]);
    }

    fn info(name: &str, parent: &str, kind: Kind) -> Info {
        Info {
            name: name.to_string(),
            parent: parent.to_string(),
            kind: kind.into(),
            created_at: Some(Timestamp { seconds: 60, nanos: 0 }),
            updated_at: Some(Timestamp { seconds: 61, nanos: 0 }),
            labels: HashMap::from([("team".to_string(), "blue".to_string())]),
        }
    }

    #[test]
    fn table_like_ctr() {
        let text = snapshots_table(&[info("base", "", Kind::Committed), info("child", "base", Kind::Active)]);
        assert_eq!(
            text,
            "KEY     PARENT   KIND\n\
             base             Committed\n\
             child   base     Active\n"
        );
    }

    #[test]
    fn tree_like_ctr() {
        let snapshots = [
            info("a", "", Kind::Committed),
            info("b", "a", Kind::Committed),
            info("c", "b", Kind::Active),
            info("d", "a", Kind::View),
            info("e", "", Kind::Active),
            info("orphan", "missing", Kind::Active),
        ];
        assert_eq!(render_tree(&snapshots), " a\n  \\_ b\n    \\_ c\n  \\_ d\n e\n missing\n  \\_ orphan\n");
        assert_eq!(render_tree(&[]), "");
        // A parent listed after its child is still printed once, as the root it is.
        let snapshots = [info("child", "parent", Kind::Active), info("parent", "", Kind::Committed)];
        assert_eq!(render_tree(&snapshots), " parent\n  \\_ child\n");
    }

    #[test]
    fn mount_lines_like_ctr() {
        let overlay = Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec!["index=off".into(), "workdir=/w".into(), "upperdir=/u".into(), "lowerdir=/l1:/l2".into()],
        };
        assert_eq!(
            mount_lines("/mnt/x", &[overlay]),
            "mount -t overlay overlay /mnt/x -o index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2\n"
        );
        let bind = Mount {
            r#type: "bind".into(),
            source: "/var/lib/my dir".into(),
            target: "/sub".into(),
            options: vec!["ro".into(), "rbind".into()],
        };
        assert_eq!(mount_lines("/t", &[bind]), "mount -t bind '/var/lib/my dir' /t/sub -o ro,rbind\n");
        let bare = Mount { r#type: "tmpfs".into(), source: "it's".into(), target: String::new(), options: vec![] };
        assert_eq!(mount_lines("TARGET", &[bare]), "mount -t tmpfs 'it'\\''s' TARGET\n");
    }

    #[test]
    fn mounts_json_has_ctr_names() {
        let mount =
            Mount { r#type: "bind".into(), source: "/s".into(), target: String::new(), options: vec!["rw".into()] };
        let value: serde_json::Value = serde_json::from_str(&mounts_json(&[mount]).unwrap()).unwrap();
        assert_eq!(value, serde_json::json!([{"Type": "bind", "Source": "/s", "Options": ["rw"]}]));
    }

    #[test]
    fn info_and_rows() {
        let text = output::json(&SnapshotInfo::from(&info("child", "base", Kind::Active))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "Kind": "Active", "Name": "child", "Parent": "base", "Labels": {"team": "blue"},
                "Created": "1970-01-01T00:01:00Z", "Updated": "1970-01-01T00:01:01Z",
            })
        );
        assert!(text.find("\"Kind\"").unwrap() < text.find("\"Name\"").unwrap(), "ctr's field order: {text}");
        let mut root = info("base", "", Kind::Committed);
        root.labels.clear();
        let value: serde_json::Value =
            serde_json::from_str(&output::json(&SnapshotInfo::from(&root)).unwrap()).unwrap();
        assert!(value.get("Parent").is_none() && value.get("Labels").is_none(), "{value}");
        let row = serde_json::to_value(SnapshotRow::from(&info("child", "base", Kind::View))).unwrap();
        assert_eq!(row["kind"], "view");
        assert_eq!(row["key"], "child");
        assert_eq!(row["labels"], serde_json::json!({"team": "blue"}));
    }

    #[test]
    fn usage_like_ctr() {
        let rows = [
            UsageRow { key: "base".into(), size: 1 << 20, inodes: 2 },
            UsageRow { key: "empty".into(), size: 4096, inodes: 1 },
        ];
        assert_eq!(usage_table(&rows, false), "KEY     SIZE      INODES\nbase    1.0 MiB   2\nempty   4.0 KiB   1\n");
        assert_eq!(usage_table(&rows, true), "KEY     SIZE      INODES\nbase    1048576   2\nempty   4096      1\n");
    }

    #[test]
    fn gc_root_is_always_set_unless_given() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(90);
        let labels = with_gc_root(&[("a".into(), "1".into())], now);
        assert_eq!(labels[GC_ROOT_LABEL], "1970-01-01T00:01:30Z");
        assert_eq!(labels["a"], "1");
        let labels = with_gc_root(&[(GC_ROOT_LABEL.into(), "mine".into())], now);
        assert_eq!(labels[GC_ROOT_LABEL], "mine");
        assert!(with_gc_root(&[(GC_ROOT_LABEL.into(), String::new())], now).is_empty(), "k= removes it");
    }

    #[test]
    fn media_type_short_names() {
        assert_eq!(parse_media_type("tar").unwrap(), TAR);
        assert_eq!(parse_media_type("tar+gzip").unwrap(), DEFAULT_DIFF_MEDIA_TYPE);
        assert_eq!(parse_media_type("zstd").unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd");
        assert_eq!(parse_media_type("application/x-custom").unwrap(), "application/x-custom");
        assert!(parse_media_type("").is_err());
        let Command::Diff(args) = command(&["diff", "--media-type", "tar", "a", "b"]) else { panic!("not diff") };
        assert_eq!((args.media_type.as_str(), args.upper.as_deref()), (TAR, Some("b")));
    }

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

    #[test]
    fn media_type_from_magic() {
        assert_eq!(layer_media_type(&[0x1f, 0x8b, 8, 0]), "application/vnd.oci.image.layer.v1.tar+gzip");
        assert_eq!(layer_media_type(&[0x28, 0xb5, 0x2f, 0xfd]), "application/vnd.oci.image.layer.v1.tar+zstd");
        assert_eq!(layer_media_type(b"etc/"), "application/vnd.oci.image.layer.v1.tar");
        assert_eq!(layer_media_type(b""), "application/vnd.oci.image.layer.v1.tar");
    }

    #[test]
    fn view_keys_are_unique_and_say_what_they_view() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(5);
        let key = view_key("base", now);
        assert!(key.starts_with("base-view-5-"), "{key}");
        assert_ne!(key, view_key("base", now));
        assert!(view_key("", now).starts_with("empty-view-"));
    }

    #[test]
    fn leased_requests_carry_the_lease() {
        let request = leased((), "l-1").unwrap();
        assert_eq!(request.metadata().get(LEASE_METADATA_KEY).unwrap(), "l-1");
        assert!(leased((), "bad\nlease").is_err());
    }
}
