//! `berth-image --root DIR --listen SOCK [--metadata local|etcd://...] [--peer NAME=ADDR]...
//! [--registry-config DIR] [--max-import-size SIZE]`: the image service alone.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use berth_image::hosts::{self, HostsDir};
use berth_image::transfer::{DEFAULT_MAX_IMPORT, Spool};
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
    /// Per-registry settings for pulls and pushes in containerd's hosts directory layout:
    /// DIR/<host[:port]>/hosts.toml (server, [host."URL"] mirrors, ca, client, skip_verify),
    /// or docker's *.crt / *.cert + *.key files there. Read at each pull and push.
    #[arg(long, value_name = "DIR", default_value = hosts::DEFAULT_DIR)]
    registry_config: PathBuf,
    /// Largest image archive an import accepts (spooled under --root meanwhile): bytes, or
    /// with a K, M, G or T suffix (powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value_t = DEFAULT_MAX_IMPORT)]
    max_import_size: u64,
}

/// `1024`, `512M`, `32G`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{text:?}: the suffix may be K, M, G or T")),
            };
            (&text[..i], shift)
        }
        _ => (text, 0),
    };
    let number: u64 = digits.parse().map_err(|_| format!("{text:?} is not a size like 1024, 512M or 32G"))?;
    number.checked_shl(shift).filter(|n| n >> shift == number).ok_or_else(|| format!("{text:?} is too large"))
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
    let puller = Puller::new(store.clone(), &peers).with_hosts(HostsDir::new(Some(args.registry_config.clone())));
    // Import archives are spooled next to the records (temp dirs are often small tmpfs).
    let spool_dir = args.root.join("spool");
    std::fs::create_dir_all(&spool_dir).with_context(|| format!("create {}", spool_dir.display()))?;
    let spool = Spool { dir: spool_dir, max_size: args.max_import_size };
    let listener = server::bind(&args.listen).await?;
    tracing::info!(
        root = %args.root.display(),
        listen = %args.listen.display(),
        registry_config = %args.registry_config.display(),
        "berth-image serving"
    );

    berth_core::lifecycle::run_until_signal("berth-image", &args.listen, DRAIN_TIMEOUT, |shutdown| {
        server::serve(listener, store, puller, spool, shutdown)
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("32G"), Ok(32 << 30));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
