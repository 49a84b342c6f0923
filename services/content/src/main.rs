//! `berth-content --root DIR --listen SOCK [--metadata local|etcd://...]`: the content service alone.
//!
//! With etcd, several processes may serve one --root (replicas): they share records and
//! ingest/digest locks through etcd (see `berth_content::locks`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_content::{ContentService, ContentStore, server};
use berth_store::Backend;
use clap::Parser;

/// How long open calls (a Write stream, say) may take to finish after SIGTERM/SIGINT.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// containerd's content service (blobs and ingests) on a unix socket.
#[derive(Parser, Debug)]
#[command(name = "berth-content", version)]
struct Args {
    /// Directory holding blobs/, ingest/ and content.redb.
    #[arg(long)]
    root: PathBuf,
    /// Unix socket to serve gRPC on.
    #[arg(long)]
    listen: PathBuf,
    /// Where the records and locks live: `local` (a redb file under --root, one process), or
    /// `etcd://HOST:PORT[,HOST:PORT...][/PREFIX][?lock-ttl=SECONDS]` (shared by replicas).
    #[arg(long, default_value = "local")]
    metadata: String,
    /// A peer service, NAME=ADDRESS[,ADDRESS]: with `metadata`, content publishes its events
    /// there, registers the namespaces it writes in and adds leased writes to their leases.
    #[arg(long = "peer")]
    peers: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = berth_telemetry::init("berth-content");

    let backend = Backend::parse(&args.metadata).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.root).with_context(|| format!("create {}", args.root.display()))?;
    // Local records go to ROOT/content.redb; on etcd under PREFIX/content/.
    let records = backend
        .open("content", &args.root)
        .await
        .with_context(|| format!("open the content records ({})", args.metadata))?;
    let store = ContentStore::open(&args.root, records)
        .with_context(|| format!("open the content store in {}", args.root.display()))?;
    let listener = server::bind(&args.listen).await?;
    tracing::info!(root = %args.root.display(), listen = %args.listen.display(), "berth-content serving");

    let peers = berth_peers::Peers::parse(&args.peers)?;
    berth_core::lifecycle::run_until_signal("berth-content", &args.listen, DRAIN_TIMEOUT, |shutdown| {
        server::serve(listener, ContentService::new(store).with_peers(&peers), shutdown)
    })
    .await?;
    Ok(())
}
