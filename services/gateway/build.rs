//! Stamps the gateway with the git revision it was built from, which Version reports.
//! An explicit BERTH_REVISION (e.g. from a packaging script) wins; outside a git checkout
//! the revision stays empty.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BERTH_REVISION");
    if std::env::var_os("BERTH_REVISION").is_some() {
        return;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(revision) = git(&["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=BERTH_REVISION={revision}");
    }
    // Rebuild when HEAD moves (a commit updates the ref HEAD points at).
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={head}");
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])) {
        println!("cargo:rerun-if-changed={reference}");
    }
}
