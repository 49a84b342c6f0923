//! `berth`: the command line client for berth, shaped like containerd's `ctr`.

fn main() -> std::process::ExitCode {
    berth_cli::main()
}
