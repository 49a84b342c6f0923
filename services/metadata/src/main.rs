//! `berth-metadata --root DIR --listen SOCK [--metadata local|etcd://...] [--peer NAME=ADDR]...`:
//! the metadata service alone.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_metadata::{Metadata, server};
use berth_peers::Peers;
use berth_store::Backend;
use clap::Parser;

/// How long open calls (an events subscription, say) may take to finish after SIGTERM/SIGINT.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// containerd's namespaces, containers, leases and events, and berth's garbage collector.
#[derive(Parser, Debug)]
#[command(name = "berth-metadata", version)]
struct Args {
    /// Directory holding metadata.redb (with `--metadata local`).
    #[arg(long)]
    root: PathBuf,
    /// Unix socket to serve gRPC on.
    #[arg(long)]
    listen: PathBuf,
    /// Where the records live: `local` (a redb file under --root) or etcd://HOST:PORT[,HOST:PORT][/PREFIX].
    #[arg(long, default_value = "local")]
    metadata: String,
    /// A peer service, NAME=ADDRESS[,ADDRESS]: content, snapshot and image are asked what they
    /// hold (namespace deletes, garbage collection). Repeat for each.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Seconds between scheduled garbage collections (deletions trigger one sooner).
    #[arg(long, default_value_t = 300)]
    gc_interval: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = berth_telemetry::init("berth-metadata");

    let backend = Backend::parse(&args.metadata).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.root).with_context(|| format!("create {}", args.root.display()))?;
    let records = backend
        .open("metadata", &args.root)
        .await
        .with_context(|| format!("open the metadata records ({})", args.metadata))?;
    let peers = Peers::parse(&args.peers)?;
    let metadata = Metadata::start(records, peers, Duration::from_secs(args.gc_interval.max(1)));
    let listener = server::bind(&args.listen).await?;
    tracing::info!(root = %args.root.display(), listen = %args.listen.display(), "berth-metadata serving");

    berth_core::lifecycle::run_until_signal("berth-metadata", &args.listen, DRAIN_TIMEOUT, |shutdown| {
        server::serve(listener, metadata, shutdown)
    })
    .await?;
    Ok(())
}
