//! `berth-execution --root DIR --listen SOCK [--metadata local] [--peer NAME=ADDR]...`: the
//! execution service alone. Tasks run in their own shim processes and outlive it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_execution::server;
use berth_execution::tasks::{Tasks, shim};
use berth_peers::{Peers, Publisher};
use clap::Parser;

/// How long open calls (a Wait, say) may take to finish after SIGTERM/SIGINT.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// containerd's tasks, one shim process per task, on runc or crun.
#[derive(Parser, Debug)]
#[command(name = "berth-execution", version)]
struct Args {
    /// Directory holding task bundles, shim sockets and the runtime's state.
    #[arg(long)]
    root: PathBuf,
    /// Unix socket to serve gRPC on.
    #[arg(long)]
    listen: PathBuf,
    /// Accepted like every service's; tasks are machine-local and kept in files under --root.
    #[arg(long, default_value = "local")]
    metadata: String,
    /// A peer service, NAME=ADDRESS: metadata (container records, events) and snapshot
    /// (rootfs mounts). Repeat for each.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// The shim binary; default: berth-shim beside this binary.
    #[arg(long)]
    shim: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = berth_telemetry::init("berth-execution");

    let peers = Peers::parse(&args.peers)?;
    let events = peers.channel("metadata").map(Publisher::new).unwrap_or_else(Publisher::disabled);
    let shim = args.shim.unwrap_or_else(shim::default_binary);
    anyhow::ensure!(shim.is_file(), "{} not found: build or install berth-shim beside berth-execution", shim.display());
    let tasks = Tasks::new(args.root.clone(), shim, peers, events)
        .with_context(|| format!("prepare {}", args.root.display()))?;
    tasks.recover().await;
    let listener = server::bind(&args.listen).await?;
    tracing::info!(root = %args.root.display(), listen = %args.listen.display(), "berth-execution serving");

    berth_core::lifecycle::run_until_signal("berth-execution", &args.listen, DRAIN_TIMEOUT, |shutdown| {
        server::serve(listener, tasks, shutdown)
    })
    .await?;
    Ok(())
}
