//! The `berth` command line client: argument parsing, one module per command group, and the
//! pieces they share (connection, error wording, output formatting, progress bars).
//!
//! This is a library only so that `cli/tests/` can drive the pieces against a fake server; the
//! binary in `main.rs` calls [`main`].

pub mod args;
pub mod client;
pub mod commands;
pub mod errors;
pub mod events;
pub mod image_spec;
pub mod ingest;
pub mod output;
pub mod progress;
pub mod rootfs;
pub mod spec;
pub mod taskio;

use std::process::ExitCode;

use clap::Parser as _;

use crate::args::{Cli, Command};
use crate::client::Client;

/// Parses the command line, runs the command and turns its outcome into an exit code:
/// 0 on success, 1 on any failure (usage errors included), after a one-line `berth: ...` message.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // --help and --version also come through here; they are not failures.
            return if err.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("berth: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    // A reader thread may still be blocked on a stdin that never ends (after an error or
    // --timeout); do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `berth content ls | head` closes our stdout early; that is not worth a message.
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        // The container's own exit status: it said what it had to say.
        Err(err) if commands::tasks::Exited::of(&err).is_some() => {
            ExitCode::from(commands::tasks::Exited::of(&err).unwrap_or(1))
        }
        Err(err) => {
            eprintln!("berth: {err:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs one parsed command line, bounded by `--timeout` when it is given.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let namespace = args::resolve_namespace(cli.namespace.clone(), |name| std::env::var(name).ok());
    let client = Client::new(cli.address.clone(), namespace)?;
    let work = dispatch(&client, cli.command);
    match cli.timeout.filter(|timeout| !timeout.is_zero()) {
        None => work.await,
        Some(timeout) => tokio::time::timeout(timeout, work).await.map_err(|_| {
            anyhow::anyhow!(
                "gave up after {timeout:?} (--timeout) before the command finished; raise --timeout, or check that berth at {} answers",
                client.address_text()
            )
        })?,
    }
}

async fn dispatch(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Version(args) => commands::version::run(client, args).await,
        Command::Content(command) => commands::content::run(client, command).await,
        Command::Namespaces(command) => commands::namespaces::run(client, command).await,
        Command::Containers(command) => commands::containers::run(client, command).await,
        Command::Snapshots(group) => commands::snapshots::run(client, group).await,
        Command::Leases(command) => commands::leases::run(client, command).await,
        Command::Events(args) => commands::events::run(client, args).await,
        Command::Run(args) => commands::run::run(client, args).await,
        Command::Tasks(command) => commands::tasks::run(client, command).await,
        Command::Images(command) => commands::images::run(client, command).await,
    }
}
