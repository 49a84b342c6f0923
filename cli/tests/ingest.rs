//! The Write protocol client (STAT, pipelined WRITEs, COMMIT) against the in-process fake.

mod common;

use std::io::{Seek as _, SeekFrom, Write as _};
use std::time::Duration;

use berth_api::containerd::services::content::v1::WriteAction;
use berth_cli::client::Client;
use berth_cli::errors::CallError;
use berth_cli::ingest::{self, Input, Options};
use berth_core::connect::Address;
use common::{Server, digest_of};
use indicatif::ProgressBar;
use tonic::Code;

fn client(server: &Server) -> Client {
    Client::new(Address::Unix(server.socket.clone()), "ns1".to_string()).expect("client")
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn small_chunks(reference: &str) -> Options {
    let mut options = Options::new(reference);
    options.chunk_size = 1024;
    options.window = 4;
    options
}

fn seekable(bytes: &[u8]) -> Input {
    let mut file = tempfile::tempfile().expect("temp file");
    file.write_all(bytes).expect("write temp file");
    file.seek(SeekFrom::Start(0)).expect("rewind");
    Input::from_file(file).expect("input")
}

fn actions(server: &Server) -> Vec<i32> {
    server.state().writes.iter().map(|seen| seen.action).collect()
}

fn write_offsets(server: &Server) -> Vec<i64> {
    server
        .state()
        .writes
        .iter()
        .filter(|seen| seen.action == WriteAction::Write as i32)
        .map(|seen| seen.offset)
        .collect()
}

fn call_error(err: &anyhow::Error) -> &CallError {
    err.downcast_ref::<CallError>().unwrap_or_else(|| panic!("not a call error: {err:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_pipelined_within_the_window() {
    let server = Server::start().await;
    server.state().hold_answers = Some(Duration::from_millis(200));
    let bytes = data(12 * 1024 + 100);

    let outcome =
        ingest::ingest(&client(&server), seekable(&bytes), &small_chunks("pipelined"), &ProgressBar::hidden())
            .await
            .expect("ingest");

    assert_eq!(outcome.digest, digest_of(&bytes));
    assert!(!outcome.already_exists);
    assert_eq!(outcome.sent, bytes.len() as u64);
    let state = server.state();
    // The client kept exactly `window` WRITEs unanswered: more than one (pipelined) and no more
    // than the window (bounded).
    assert_eq!(state.max_unanswered, 4);
    assert_eq!(state.blobs[&outcome.digest].data, bytes);
    assert!(state.namespaces.iter().all(|ns| ns == "ns1"), "{:?}", state.namespaces);
    let seen = &state.writes;
    assert_eq!(seen[0].action, WriteAction::Stat as i32);
    assert_eq!(seen[0].reference, "pipelined");
    assert_eq!(seen[0].total, bytes.len() as i64, "a file's size goes out with STAT");
    let commit = seen.last().unwrap();
    assert_eq!(commit.action, WriteAction::Commit as i32);
    assert_eq!(commit.expected, digest_of(&bytes));
    assert_eq!(commit.total, bytes.len() as i64);
    let writes: Vec<_> = seen.iter().filter(|s| s.action == WriteAction::Write as i32).collect();
    assert_eq!(writes.len(), 13);
    assert!(writes.iter().enumerate().all(|(i, w)| w.offset == (i * 1024) as i64));
    assert!(writes[..12].iter().all(|w| w.len == 1024));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_a_partial_ingest_from_a_seekable_input() {
    let server = Server::start().await;
    let bytes = data(10_000);
    server.state().ingests.insert("resume-me".into(), bytes[..3000].to_vec());

    let outcome =
        ingest::ingest(&client(&server), seekable(&bytes), &small_chunks("resume-me"), &ProgressBar::hidden())
            .await
            .expect("ingest");

    assert_eq!(outcome.resumed_from, 3000);
    assert_eq!(outcome.restarted_over, 0);
    assert_eq!(outcome.sent, 7000);
    // The digest covers the whole input, including the part sent by the earlier attempt.
    assert_eq!(outcome.digest, digest_of(&bytes));
    assert_eq!(write_offsets(&server)[0], 3000);
    assert_eq!(server.state().blobs[&outcome.digest].data, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_with_a_given_digest_without_rereading_the_prefix() {
    let server = Server::start().await;
    let bytes = data(5000);
    server.state().ingests.insert("r".into(), bytes[..2048].to_vec());
    let mut options = small_chunks("r");
    options.expected_digest = Some(digest_of(&bytes));
    options.expected_size = Some(5000);

    let outcome =
        ingest::ingest(&client(&server), seekable(&bytes), &options, &ProgressBar::hidden()).await.expect("ingest");

    assert_eq!(outcome.resumed_from, 2048);
    assert_eq!(write_offsets(&server), [2048, 3072, 4096]);
    assert_eq!(server.state().blobs[&digest_of(&bytes)].data, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_at_zero_when_the_input_cannot_seek() {
    let server = Server::start().await;
    let bytes = data(6000);
    server.state().ingests.insert("piped".into(), vec![0xff; 3000]);

    let input = Input::stream(std::io::Cursor::new(bytes.clone()));
    let outcome =
        ingest::ingest(&client(&server), input, &small_chunks("piped"), &ProgressBar::hidden()).await.expect("ingest");

    assert_eq!(outcome.resumed_from, 0);
    assert_eq!(outcome.restarted_over, 3000);
    assert_eq!(write_offsets(&server)[0], 0, "offset 0 makes the server truncate");
    assert_eq!(server.state().blobs[&outcome.digest].data, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_when_the_file_is_shorter_than_the_partial_ingest() {
    let server = Server::start().await;
    let bytes = data(1000);
    server.state().ingests.insert("r".into(), vec![1; 4000]);

    let outcome = ingest::ingest(&client(&server), seekable(&bytes), &small_chunks("r"), &ProgressBar::hidden())
        .await
        .expect("ingest");

    assert_eq!(outcome.restarted_over, 4000);
    assert_eq!(server.state().blobs[&outcome.digest].data, bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_exists_at_stat_is_success_without_sending_data() {
    let server = Server::start().await;
    let bytes = data(3000);
    let digest = server.add_blob(&bytes, &[]);
    let mut options = small_chunks("dup");
    options.expected_digest = Some(digest.clone());

    let outcome =
        ingest::ingest(&client(&server), seekable(&bytes), &options, &ProgressBar::hidden()).await.expect("ingest");

    assert!(outcome.already_exists);
    assert_eq!(outcome.digest, digest);
    assert_eq!(actions(&server), [WriteAction::Stat as i32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_exists_at_commit_is_success() {
    let server = Server::start().await;
    let bytes = data(3000);
    let digest = server.add_blob(&bytes, &[]);

    let outcome = ingest::ingest(&client(&server), seekable(&bytes), &small_chunks("dup"), &ProgressBar::hidden())
        .await
        .expect("ingest");

    assert!(outcome.already_exists);
    assert_eq!(outcome.digest, digest);
    assert_eq!(actions(&server).last(), Some(&(WriteAction::Commit as i32)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_input_commits_the_empty_blob() {
    let server = Server::start().await;
    let outcome = ingest::ingest(
        &client(&server),
        Input::stream(std::io::empty()),
        &small_chunks("empty"),
        &ProgressBar::hidden(),
    )
    .await
    .expect("ingest");
    assert_eq!(outcome.digest, digest_of(b""));
    assert_eq!(actions(&server), [WriteAction::Stat as i32, WriteAction::Commit as i32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_mismatch_fails_before_commit() {
    let server = Server::start().await;
    let mut options = small_chunks("short");
    options.expected_size = Some(5000);

    let err = ingest::ingest(
        &client(&server),
        Input::stream(std::io::Cursor::new(data(4000))),
        &options,
        &ProgressBar::hidden(),
    )
    .await
    .expect_err("size mismatch");

    assert!(err.to_string().contains("input is 4000 bytes but --expected-size says 5000"), "{err:#}");
    assert!(!actions(&server).contains(&(WriteAction::Commit as i32)));
    assert!(server.state().blobs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expected_digest_is_refused_by_the_server() {
    let server = Server::start().await;
    let mut options = small_chunks("wrong");
    options.expected_digest = Some(digest_of(b"something else"));

    let err = ingest::ingest(&client(&server), seekable(&data(2000)), &options, &ProgressBar::hidden())
        .await
        .expect_err("digest mismatch");

    assert_eq!(call_error(&err).code, Code::FailedPrecondition);
    assert!(err.to_string().contains("unexpected commit digest"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_mid_stream_is_reported() {
    let server = Server::start().await;
    server.state().fail_write = Some((2, tonic::Status::out_of_range("write @2048 must occur at current offset 0")));

    let err = ingest::ingest(&client(&server), seekable(&data(8000)), &small_chunks("broken"), &ProgressBar::hidden())
        .await
        .expect_err("write failure");

    let call = call_error(&err);
    assert_eq!(call.code, Code::OutOfRange);
    assert!(call.message.starts_with("ingest \"broken\" changed while writing"), "{}", call.message);
    assert!(server.state().blobs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_says_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(Address::Unix(dir.path().join("none.sock")), "default".into()).unwrap();
    let err = ingest::ingest(&client, seekable(b"x"), &Options::new("r"), &ProgressBar::hidden())
        .await
        .expect_err("no server");
    let call = call_error(&err);
    assert_eq!(call.code, Code::Unavailable);
    assert!(call.message.starts_with("cannot reach berth at "), "{}", call.message);
    assert!(call.message.ends_with("is berthd running? (start it with `berthd`)"), "{}", call.message);
}
