//! What a command the tests ran (ours or containerd's `ctr`) printed, and whether it had to work.

use std::process::Output;

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Stdout of a command that must succeed; `what` names it in the failure.
pub fn ok(what: &str, output: Output) -> String {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}\nstdout: {}",
        output.status,
        stderr(&output),
        stdout(&output)
    );
    stdout(&output)
}

/// Stderr of a command that must fail with exit code 1 (`berth` and `ctr` both use 1).
pub fn failed(what: &str, output: Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{what} should have failed; stdout: {}", stdout(&output));
    stderr(&output)
}
