//! `berth-gateway --address SOCK [--tcp HOST:PORT] --backend NAME=ADDR[,ADDR...]...`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth_core::connect::Address;
use berth_gateway::{Config, parse_backend, serve};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// One socket for every berth service: routes containerd v1 calls by gRPC service path.
#[derive(Parser, Debug)]
#[command(name = "berth-gateway", version)]
struct Args {
    /// Unix socket to serve on.
    #[arg(long, default_value = "/run/berth/berth.sock")]
    address: PathBuf,
    /// Also serve on this TCP address (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    tcp: Option<String>,
    /// A berth service and its replicas' addresses (unix socket paths or HOST:PORT); repeatable.
    #[arg(long = "backend", value_name = "NAME=ADDR[,ADDR...]", value_parser = parse_backend_arg)]
    backends: Vec<(String, Vec<Address>)>,
}

fn parse_backend_arg(spec: &str) -> Result<(String, Vec<Address>), String> {
    parse_backend(spec).map_err(|e| e.to_string())
}

// One thread: forwarding is syscall-bound, and on the small hosts berth targets a single
// thread measured a few percent faster than a multi-thread runtime (no cross-thread wakeups
// per frame) for both content writes and many small Read calls.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _telemetry = berth_telemetry::init("berth-gateway");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line with the whole chain of causes; no backtrace.
            eprintln!("berth-gateway: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut backends: BTreeMap<String, Vec<Address>> = BTreeMap::new();
    for (name, addresses) in args.backends {
        backends.entry(name).or_default().extend(addresses);
    }
    let config = Config { address: args.address, tcp: args.tcp, backends };

    let mut terminate = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
    };
    serve(config, shutdown).await?;
    tracing::info!("berth-gateway stopped");
    Ok(())
}
