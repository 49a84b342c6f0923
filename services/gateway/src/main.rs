//! `berth-gateway --address SOCK [--tcp HOST:PORT] --backend NAME=ADDR[,ADDR...]...`

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use berth_core::connect::Address;
use berth_gateway::{Config, routes};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// One socket for every berth service: routes containerd v1 calls to the service serving them.
#[derive(Parser, Debug)]
#[command(name = "berth-gateway", version)]
struct Args {
    /// Unix socket clients connect to.
    #[arg(long, default_value = "/run/berth/berth.sock")]
    address: PathBuf,
    /// Also listen on this TCP address (HOST:PORT).
    #[arg(long)]
    tcp: Option<String>,
    /// A service and its replicas: NAME=ADDR[,ADDR...] (NAME: content, snapshot, image, metadata, execution).
    #[arg(long = "backend", value_name = "NAME=ADDR[,ADDR...]")]
    backends: Vec<String>,
}

fn parse_backends(specs: &[String]) -> anyhow::Result<BTreeMap<String, Vec<Address>>> {
    let mut backends: BTreeMap<String, Vec<Address>> = BTreeMap::new();
    for spec in specs {
        let Some((name, addresses)) = spec.split_once('=') else {
            bail!("--backend {spec:?}: expected NAME=ADDR[,ADDR...]");
        };
        if !routes::is_known(name) {
            let known: Vec<&str> = routes::SERVICES.iter().map(|(n, _)| *n).collect();
            bail!("--backend {spec:?}: unknown service {name:?} (known: {})", known.join(", "));
        }
        for address in addresses.split(',').filter(|a| !a.is_empty()) {
            let address = Address::parse(address).map_err(anyhow::Error::msg)?;
            backends.entry(name.to_string()).or_default().push(address);
        }
    }
    Ok(backends)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = berth_telemetry::init("berth-gateway");
    let backends = parse_backends(&args.backends)?;
    let mut terminate = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
    };
    berth_gateway::serve(Config { address: args.address, tcp: args.tcp, backends }, shutdown).await?;
    tracing::info!("berth-gateway stopped");
    Ok(())
}
