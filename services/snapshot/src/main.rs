//! `berth-snapshot --root DIR --listen SOCK [--metadata local|etcd://...] [--peer NAME=ADDR]`:
//! the snapshot service (Snapshots and Diff) alone.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_snapshot::{DiffService, SnapshotsService, Snapshotters, server};
use berth_store::Backend;
use clap::Parser;

/// How long open calls may take to finish after SIGTERM/SIGINT.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// containerd's snapshots service (overlayfs and native snapshotters) and diff service on a
/// unix socket.
#[derive(Parser, Debug)]
#[command(name = "berth-snapshot", version)]
struct Args {
    /// Directory holding overlayfs/, native/, tmpmounts/ and snapshot.redb.
    #[arg(long)]
    root: PathBuf,
    /// Unix socket to serve gRPC on.
    #[arg(long)]
    listen: PathBuf,
    /// Where the records live: `local` (a redb file under --root) or `etcd://HOST:PORT[/PREFIX]`.
    #[arg(long, default_value = "local")]
    metadata: String,
    /// A peer service, NAME=ADDRESS[,ADDRESS]: with `metadata`, snapshot publishes its events
    /// there, registers namespaces and adds snapshots made under a lease to it; Diff reads
    /// and writes layers in `content`.
    #[arg(long = "peer")]
    peers: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = berth_telemetry::init("berth-snapshot");

    let backend = Backend::parse(&args.metadata).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.root).with_context(|| format!("create {}", args.root.display()))?;
    // Local records go to ROOT/snapshot.redb; on etcd under PREFIX/snapshot/.
    let records = backend
        .open("snapshot", &args.root)
        .await
        .with_context(|| format!("open the snapshot records ({})", args.metadata))?;
    let snapshotters = Snapshotters::open(&args.root, records)
        .await
        .with_context(|| format!("open the snapshotters in {}", args.root.display()))?;
    let loaded: Vec<&str> = snapshotters.names().collect();
    let peers = berth_peers::Peers::parse(&args.peers)?;
    // Before the socket takes calls: cleans up mounts a killed predecessor left.
    let diff = DiffService::new(&args.root, &peers);
    let listener = server::bind(&args.listen).await?;
    tracing::info!(
        root = %args.root.display(),
        listen = %args.listen.display(),
        snapshotters = %loaded.join(","),
        "berth-snapshot serving"
    );

    berth_core::lifecycle::run_until_signal("berth-snapshot", &args.listen, DRAIN_TIMEOUT, |shutdown| {
        server::serve(listener, SnapshotsService::new(snapshotters).with_peers(&peers), diff, shutdown)
    })
    .await?;
    Ok(())
}
