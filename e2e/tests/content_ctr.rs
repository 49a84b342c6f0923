//! containerd's own `ctr` (Debian's containerd 1.6) against the gateway: content commands.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_e2e::{Stack, digest_of, procs, random_bytes, require_tool};

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "ctr failed: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn ctr_content_ingest_ls_get_label_rm() {
    require_tool("ctr");
    let stack = Stack::start().await;
    let data = random_bytes(5 << 20);
    let digest = digest_of(&data);
    let input = stack.dir.path().join("blob");
    std::fs::write(&input, &data).unwrap();

    let size = data.len().to_string();
    stdout(&stack.ctr_with_stdin(
        &["content", "ingest", "--expected-size", &size, "--expected-digest", &digest, "my-ingest"],
        Some(&input),
    ));

    let listing = stdout(&stack.ctr(&["content", "ls"]));
    assert!(listing.contains(&digest), "ls lists the blob:\n{listing}");
    let quiet = stdout(&stack.ctr(&["content", "ls", "-q"]));
    assert_eq!(quiet.trim(), digest);

    let got = stack.ctr(&["content", "get", &digest]);
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    assert_eq!(got.stdout.len(), data.len());
    assert!(got.stdout == data, "ctr content get returns the same bytes");

    stdout(&stack.ctr(&["content", "label", &digest, "team=blue", "containerd.io/gc.root=now"]));
    let labelled = stdout(&stack.ctr(&["content", "ls"]));
    assert!(labelled.contains("team=blue"), "{labelled}");
    let filtered = stdout(&stack.ctr(&["content", "ls", "-q", "labels.team==blue"]));
    assert_eq!(filtered.trim(), digest);
    let none = stdout(&stack.ctr(&["content", "ls", "-q", "labels.team==red"]));
    assert!(none.trim().is_empty(), "{none}");
    stdout(&stack.ctr(&["content", "label", &digest, "team="]));
    assert!(!stdout(&stack.ctr(&["content", "ls"])).contains("team=blue"), "label removed");

    // Another namespace does not see it.
    let other = stdout(&stack.ctr(&["-n", "other", "content", "ls", "-q"]));
    assert!(other.trim().is_empty(), "{other}");

    stdout(&stack.ctr(&["content", "rm", &digest]));
    assert!(stdout(&stack.ctr(&["content", "ls", "-q"])).trim().is_empty());
    let gone = stack.ctr(&["content", "get", &digest]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"), "{}", String::from_utf8_lossy(&gone.stderr));
}

#[tokio::test]
async fn ctr_content_ingest_rejects_a_wrong_expected_digest() {
    require_tool("ctr");
    let stack = Stack::start().await;
    let input = stack.dir.path().join("blob");
    std::fs::write(&input, b"actual bytes").unwrap();
    let wrong = digest_of(b"other bytes");
    let output = stack.ctr_with_stdin(&["content", "ingest", "--expected-digest", &wrong, "bad"], Some(&input));
    assert!(!output.status.success(), "ingest with a wrong digest must fail");
    assert!(stdout(&stack.ctr(&["content", "ls", "-q"])).trim().is_empty());
}

#[tokio::test]
async fn ctr_content_active_shows_a_writer_mid_stream() {
    let ctr = require_tool("ctr");
    let stack = Stack::start().await;
    let mut writer = Command::new(ctr)
        .arg("--address")
        .arg(&stack.socket)
        .args(["content", "ingest", "slow-writer"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = writer.stdin.take().unwrap();
    stdin.write_all(&random_bytes(256 << 10)).unwrap();
    stdin.flush().unwrap();

    let mut listing = String::new();
    let seen = procs::wait_until(Duration::from_secs(10), || {
        listing = stdout(&stack.ctr(&["content", "active"]));
        listing.contains("slow-writer")
    });
    assert!(seen, "ctr content active lists the ingest while it is written:\n{listing}");

    drop(stdin);
    let status = writer.wait().unwrap();
    assert!(status.success(), "the writer commits once its input ends");
    assert!(
        !stdout(&stack.ctr(&["content", "active"])).contains("slow-writer"),
        "committed ingests are no longer active"
    );
}
