//! `berth-image --root DIR --listen SOCK [--metadata local|etcd://...] [--peer NAME=ADDR]...`:
//! the image service alone.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_image::{ImageStore, Neighbours, Puller, server};
use berth_peers::Peers;
use berth_store::Backend;
use clap::Parser;

/// How long open calls may take to finish after SIGTERM/SIGINT.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// containerd's image records on a unix socket.
#[derive(Parser, Debug)]
#[command(name = "berth-image", version)]
struct Args {
    /// Directory holding image.redb (with `--metadata local`).
    #[arg(long)]
    root: PathBuf,
    /// Unix socket to serve gRPC on.
    #[arg(long)]
    listen: PathBuf,
    /// Where the records live: `local` (a redb file under --root) or etcd://HOST:PORT[,HOST:PORT][/PREFIX].
    #[arg(long, default_value = "local")]
    metadata: String,
    /// A peer service, NAME=ADDRESS[,ADDRESS]: `metadata` receives events and runs garbage
    /// collection after deletes; `content` and `snapshot` hold what pulls fetch and unpack.
    #[arg(long = "peer")]
    peers: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = berth_telemetry::init("berth-image");

    let backend = Backend::parse(&args.metadata).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&args.root).with_context(|| format!("create {}", args.root.display()))?;
    let records = backend
        .open("image", &args.root)
        .await
        .with_context(|| format!("open the image records ({})", args.metadata))?;
    let peers = Peers::parse(&args.peers)?;
    let store = ImageStore::new(records, Neighbours::from_peers(&peers));
    let puller = Puller::new(store.clone(), &peers);
    let listener = server::bind(&args.listen).await?;
    tracing::info!(root = %args.root.display(), listen = %args.listen.display(), "berth-image serving");

    berth_core::lifecycle::run_until_signal("berth-image", &args.listen, DRAIN_TIMEOUT, |shutdown| {
        server::serve(listener, store, puller, shutdown)
    })
    .await?;
    Ok(())
}
