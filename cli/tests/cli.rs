//! The `berth` binary end to end against the in-process fake: arguments, output, exit codes,
//! namespace propagation.

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::{Server, digest_of};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

fn berth(server: &Server, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
    command
        .arg("--address")
        .arg(&server.socket)
        .args(args)
        .env_remove("BERTH_ADDRESS")
        .env_remove("BERTH_NAMESPACE")
        .env_remove("CONTAINERD_NAMESPACE")
        .stdin(Stdio::null());
    command
}

async fn run(server: &Server, args: &[&str]) -> Output {
    berth(server, args).output().await.expect("run berth")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

fn assert_failed(output: &Output) {
    assert_eq!(output.status.code(), Some(1), "stdout: {}\nstderr: {}", stdout(output), stderr(output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_from_redirected_file_and_from_pipe() {
    let server = Server::start().await;
    let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let path = server.dir.path().join("blob");
    std::fs::write(&path, &bytes).unwrap();

    // `< FILE`
    let output = berth(&server, &["-n", "ns-a", "content", "ingest", "from-file", "--label", "a=b"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .await
        .unwrap();
    assert_ok(&output);
    assert_eq!(stdout(&output), format!("{}\n", digest_of(&bytes)));
    assert!(stderr(&output).is_empty(), "no progress when stderr is not a terminal: {}", stderr(&output));
    {
        let state = server.state();
        assert_eq!(state.blobs[&digest_of(&bytes)].labels["a"], "b");
        assert!(state.namespaces.iter().all(|ns| ns == "ns-a"), "{:?}", state.namespaces);
        let writes = state.writes.iter().filter(|seen| seen.action == 1).count();
        assert_eq!(writes, 3, "1 MiB chunks");
    }

    // A pipe, and the blob already exists: still success.
    let mut child = berth(&server, &["content", "ingest", "from-pipe"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = bytes.clone();
    tokio::spawn(async move {
        stdin.write_all(&feed).await.unwrap();
    });
    let output = child.wait_with_output().await.unwrap();
    assert_ok(&output);
    assert_eq!(stdout(&output), format!("{}\n", digest_of(&bytes)));
    assert!(stderr(&output).contains("already exists"), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_with_file_flag_and_wrong_size_fails() {
    let server = Server::start().await;
    let path = server.dir.path().join("blob");
    std::fs::write(&path, b"hello").unwrap();
    let file = path.to_str().unwrap();

    let output = run(&server, &["content", "ingest", "r1", "--file", file]).await;
    assert_ok(&output);
    assert_eq!(stdout(&output).trim(), digest_of(b"hello"));

    let output = run(&server, &["content", "ingest", "r2", "--file", file, "--expected-size", "6"]).await;
    assert_failed(&output);
    assert!(stderr(&output).starts_with("berth: input is 5 bytes but --expected-size says 6"), "{}", stderr(&output));

    let output = run(&server, &["content", "ingest", "r3", "--file", "/nonexistent/blob"]).await;
    assert_failed(&output);
    assert!(stderr(&output).starts_with("berth: cannot open /nonexistent/blob"), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_as_table_json_and_quiet() {
    let server = Server::start().await;
    let one = server.add_blob(b"one", &[("k", "v"), ("a", "b")]);
    let two = server.add_blob(b"two", &[]);

    let output = run(&server, &["content", "ls"]).await;
    assert_ok(&output);
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["DIGEST", "SIZE", "AGE", "LABELS"]);
    assert_eq!(lines.len(), 3, "{text}");
    let row = lines.iter().find(|line| line.starts_with(&one)).expect("row for one");
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), [one.as_str(), "3B", "2", "minutes", "a=b,k=v"]);
    let row = lines.iter().find(|line| line.starts_with(&two)).expect("row for two");
    assert!(row.ends_with(" -"), "{row}");

    let output = run(&server, &["content", "ls", "--format", "json"]).await;
    assert_ok(&output);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let items = value.as_array().expect("array");
    assert_eq!(items.len(), 2);
    let item = items.iter().find(|item| item["digest"] == one.as_str()).expect("one in json");
    assert_eq!(item["size"], 3);
    assert_eq!(item["labels"], serde_json::json!({"a": "b", "k": "v"}));
    assert!(item["created_at"].as_str().expect("created_at").ends_with('Z'));
    assert!(item["updated_at"].is_string());

    let output = run(&server, &["content", "ls", "-q", &format!("digest=={two}")]).await;
    assert_ok(&output);
    assert_eq!(stdout(&output), format!("{two}\n"));

    let output = run(&server, &["content", "ls", "labels.a=="]).await;
    assert_failed(&output);
    assert!(stderr(&output).contains("filter"), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_to_stdout_and_to_a_file() {
    let server = Server::start().await;
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
    let digest = server.add_blob(&bytes, &[]);

    let output = run(&server, &["content", "get", &digest]).await;
    assert_ok(&output);
    assert_eq!(output.stdout, bytes);

    let path = server.dir.path().join("out");
    let output = run(&server, &["content", "get", &digest, "--output", path.to_str().unwrap()]).await;
    assert_ok(&output);
    assert_eq!(std::fs::read(&path).unwrap(), bytes);

    let missing = digest_of(b"missing");
    let path = server.dir.path().join("not-created");
    let output = run(&server, &["-n", "ns2", "content", "get", &missing, "-o", path.to_str().unwrap()]).await;
    assert_failed(&output);
    assert!(
        stderr(&output).starts_with(&format!("berth: content {missing} not found in namespace ns2")),
        "{}",
        stderr(&output)
    );
    assert!(!path.exists(), "a missing blob leaves no output file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_continues_past_errors_and_fails_at_the_end() {
    let server = Server::start().await;
    let one = server.add_blob(b"one", &[]);
    let two = server.add_blob(b"two", &[]);
    let missing = digest_of(b"missing");

    let output = run(&server, &["content", "rm", &one, &missing, "not-a-digest", &two]).await;
    assert_failed(&output);
    assert_eq!(stdout(&output), format!("{one}\n{two}\n"));
    let errors = stderr(&output);
    assert!(errors.contains(&format!("content {missing} not found in namespace default")), "{errors}");
    assert!(errors.contains("invalid digest \"not-a-digest\""), "{errors}");
    assert!(errors.contains("2 of 4 blobs could not be removed"), "{errors}");
    assert!(server.state().blobs.is_empty());

    let three = server.add_blob(b"three", &[]);
    let output = run(&server, &["content", "delete", &three]).await;
    assert_ok(&output);
    assert_eq!(stdout(&output), format!("{three}\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_lists_ingests() {
    let server = Server::start().await;
    server.state().ingests.insert("layer-1".into(), vec![0; 500]);

    let output = run(&server, &["content", "active"]).await;
    assert_ok(&output);
    let text = stdout(&output);
    let lines: Vec<Vec<&str>> = text.lines().map(|line| line.split_whitespace().collect()).collect();
    assert_eq!(lines, [vec!["REF", "SIZE", "AGE"], vec!["layer-1", "500B/1kB", "30", "seconds"]]);

    let output = run(&server, &["content", "active", "--format", "json"]).await;
    assert_ok(&output);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(value[0]["ref"], "layer-1");
    assert_eq!(value[0]["offset"], 500);
    assert_eq!(value[0]["total"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_sets_and_removes() {
    let server = Server::start().await;
    let digest = server.add_blob(b"x", &[("old", "1"), ("keep", "2")]);

    let output = run(&server, &["content", "label", &digest, "new=3", "old="]).await;
    assert_ok(&output);
    assert_eq!(stdout(&output), "keep=2,new=3\n");
    let labels = server.state().blobs[&digest].labels.clone();
    assert_eq!(labels.len(), 2);
    assert_eq!(labels["new"], "3");
    assert!(!labels.contains_key("old"));

    let output = run(&server, &["content", "label", &digest]).await;
    assert_ok(&output);
    assert_eq!(stdout(&output), "keep=2,new=3\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_namespace_from_the_environment() {
    let server = Server::start().await;

    let output = run(&server, &["version"]).await;
    assert_ok(&output);
    let text = stdout(&output);
    assert!(text.starts_with(&format!("Client:\n  Version:  {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("Server:\n  Version:  9.9.9-fake\n  Revision: f4k3\n"), "{text}");

    let output = berth(&server, &["version", "--format", "json"])
        .env("CONTAINERD_NAMESPACE", "from-ctr")
        .output()
        .await
        .unwrap();
    assert_ok(&output);
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(value["server"]["version"], "9.9.9-fake");

    let output = berth(&server, &["version"])
        .env("CONTAINERD_NAMESPACE", "from-ctr")
        .env("BERTH_NAMESPACE", "from-berth")
        .output()
        .await
        .unwrap();
    assert_ok(&output);
    assert_eq!(server.state().namespaces, ["default", "from-ctr", "from-berth"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_unreachable_server() {
    let server = Server::start().await;
    server.state().version_delay = Some(Duration::from_secs(5));
    let output = run(&server, &["--timeout", "300ms", "version"]).await;
    assert_failed(&output);
    assert!(stderr(&output).starts_with("berth: gave up after 300ms (--timeout)"), "{}", stderr(&output));

    let gone = server.dir.path().join("gone.sock");
    let output = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("--address")
        .arg(&gone)
        .args(["content", "ls"])
        .output()
        .await
        .unwrap();
    assert_failed(&output);
    assert_eq!(
        stderr(&output),
        format!(
            "berth: cannot reach berth at {} (no such socket): is berthd running? (start it with `berthd`)\n",
            gone.display()
        )
    );

    let output = run(&server, &["content", "frobnicate"]).await;
    assert_failed(&output);
}
