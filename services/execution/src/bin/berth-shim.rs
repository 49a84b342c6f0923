//! `berth-shim --namespace NS --id ID --bundle DIR --socket PATH start`: starts the shim
//! daemon for one task and prints its address (see berth_execution::shim).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// One task's shim: containerd's runtime v2 shim API over ttrpc.
#[derive(Parser, Debug)]
#[command(name = "berth-shim", version)]
struct Args {
    /// The task's namespace.
    #[arg(long)]
    namespace: String,
    /// The task (container) id.
    #[arg(long)]
    id: String,
    /// The bundle directory (config.json; the rootfs is mounted on its rootfs/); default: the
    /// working directory, as containerd starts shims.
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The unix socket to serve on.
    #[arg(long)]
    socket: PathBuf,
    /// Accepted for containerd's shim command line; unused.
    #[arg(long, hide = true)]
    address: Option<String>,
    /// Accepted for containerd's shim command line; unused.
    #[arg(long = "publish-binary", hide = true)]
    publish_binary: Option<String>,
    /// `start`: start the daemon and print its address.
    action: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.action != "start" {
        eprintln!("berth-shim: unknown action {:?}: expected start", args.action);
        return ExitCode::from(2);
    }
    let bundle = match args.bundle.map(Ok).unwrap_or_else(std::env::current_dir) {
        Ok(bundle) => bundle,
        Err(e) => {
            eprintln!("berth-shim: working directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = berth_execution::shim::Config { namespace: args.namespace, id: args.id, bundle, socket: args.socket };
    match berth_execution::shim::start(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth-shim: {e}");
            ExitCode::FAILURE
        }
    }
}
