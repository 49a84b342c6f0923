//! `berthd`: the all-in-one launcher. Starts every berth service found next to it, each on
//! its own socket under `--state`, then the gateway at `--address`; restarts what dies; stops
//! everything on SIGTERM/SIGINT.

mod launch;
mod preflight;
mod services;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Runs a whole berth stack: the services and the gateway in front of them.
#[derive(Parser, Debug)]
#[command(name = "berthd", version)]
struct Args {
    /// Where the services keep their data (one directory per service).
    #[arg(long, default_value = "/var/lib/berth")]
    root: PathBuf,
    /// Where the services' sockets go.
    #[arg(long, default_value = "/run/berth")]
    state: PathBuf,
    /// The gateway's unix socket: the one address clients use.
    #[arg(long, default_value = "/run/berth/berth.sock")]
    address: PathBuf,
    /// Also serve the gateway on this TCP address.
    #[arg(long, value_name = "HOST:PORT")]
    tcp: Option<String>,
    /// Where the services keep their records: `local` or `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`.
    #[arg(long, default_value = "local")]
    metadata: String,
    /// How many content service replicas to run (more than one needs etcd metadata).
    #[arg(long, default_value_t = 1)]
    content_replicas: u32,
    /// Per-registry settings for pulls and pushes, containerd's hosts directory layout
    /// (DIR/<host[:port]>/hosts.toml); default: the image service's /etc/berth/certs.d.
    #[arg(long, value_name = "DIR")]
    registry_config: Option<PathBuf>,
}

// A current-thread runtime on purpose: children get PR_SET_PDEATHSIG, which fires when the
// thread that spawned them exits, so every spawn must happen on the main thread.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let _telemetry = berth_telemetry::init("berthd");
    let result = launch::run(services::Options {
        root: args.root,
        state: args.state,
        address: args.address,
        tcp: args.tcp,
        metadata: args.metadata,
        content_replicas: args.content_replicas,
        registry_config: args.registry_config,
    })
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line with the whole chain of causes; no backtrace.
            eprintln!("berthd: {err:#}");
            ExitCode::FAILURE
        }
    }
}
