//! containerd's Write protocol against an in-process berth-content: STAT / WRITE / COMMIT,
//! resume, truncation, offsets, locks, AlreadyExists, commit checks, abort.

mod common;

use berth_api::containerd::services::content::v1::{AbortRequest, WriteAction, WriteContentRequest};
use common::*;
use tonic::Code;

const NS: &str = "default";

#[tokio::test]
async fn write_commit_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let data = bytes((3 << 20) + 17, 1);
    let digest = digest_of(&data);

    let (mut writer, first) =
        Writer::open(&mut client, NS, stat_expecting("blob", data.len() as i64, "")).await.unwrap();
    assert_eq!(first.action, WriteAction::Stat as i32);
    assert_eq!((first.offset, first.total), (0, data.len() as i64));
    assert_eq!(first.digest, digest_of(b""), "digest of nothing yet");
    assert!(first.started_at.is_some() && first.updated_at.is_some());

    let mut offset = 0;
    for chunk in data.chunks(1 << 20) {
        let response = writer.send(write(offset, chunk)).await.unwrap();
        offset += chunk.len() as i64;
        assert_eq!(response.action, WriteAction::Write as i32);
        assert_eq!(response.offset, offset);
        assert_eq!(response.total, data.len() as i64);
        assert_eq!(response.digest, digest_of(&data[..offset as usize]), "digest of the data so far");
    }
    let during = status(&mut client, NS, "blob").await.unwrap();
    assert_eq!((during.offset, during.total, during.r#ref.as_str()), (offset, data.len() as i64, "blob"));

    let done = writer.send(commit_labelled(offset, data.len() as i64, &digest, &[("source", "test")])).await.unwrap();
    assert_eq!(done.action, WriteAction::Commit as i32);
    assert_eq!((done.offset, done.digest.as_str()), (data.len() as i64, digest.as_str()));

    let info = info(&mut client, NS, &digest).await.unwrap();
    assert_eq!(info.size, data.len() as i64);
    assert_eq!(info.labels, labels(&[("source", "test")]));
    assert!(info.created_at.is_some() && info.updated_at.is_some());
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), data);
    assert_eq!(status(&mut client, NS, "blob").await.unwrap_err().code(), Code::NotFound, "ingest gone");
    assert_eq!(server.blob_files(), vec![digest[7..].to_string()]);
    assert!(std::fs::read_dir(dir.path().join("ingest")).unwrap().next().is_none(), "ingest dir removed");
}

#[tokio::test]
async fn resume_after_the_stream_drops() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let data = bytes(3 << 20, 2);
    let digest = digest_of(&data);

    let (mut writer, _) = Writer::open(&mut client, NS, stat("resume")).await.unwrap();
    writer.send(write(0, &data[..1 << 20])).await.unwrap();
    drop(writer);

    assert_eq!(status(&mut client, NS, "resume").await.unwrap().offset, 1 << 20);
    // The lock goes with the stream, shortly after the client drops it.
    let (mut writer, resumed) = open_when_unlocked(&mut client, NS, stat("resume")).await;
    assert_eq!(resumed.offset, 1 << 20, "STAT reports the stored offset");
    assert_eq!(resumed.digest, digest_of(&data[..1 << 20]), "and the digest of the stored bytes");
    writer.send(write(1 << 20, &data[1 << 20..])).await.unwrap();
    // COMMIT without an offset commits what is there (it does not truncate).
    let done = writer.send(commit(0, data.len() as i64, &digest)).await.unwrap();
    assert_eq!(done.digest, digest);
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), data);
}

async fn open_when_unlocked(
    client: &mut Client,
    ns: &str,
    first: WriteContentRequest,
) -> (Writer, berth_api::containerd::services::content::v1::WriteContentResponse) {
    for _ in 0..100 {
        match Writer::open(client, ns, first.clone()).await {
            Ok(opened) => return opened,
            Err(err) if err.code() == Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(err) => panic!("open: {err:?}"),
        }
    }
    panic!("ref still locked after 2 s");
}

#[tokio::test]
async fn write_at_offset_zero_truncates() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let (mut writer, _) = Writer::open(&mut client, NS, stat("trunc")).await.unwrap();
    writer.send(write(0, b"aaaaaaaa")).await.unwrap();
    let restarted = writer.send(write(0, b"bb")).await.unwrap();
    assert_eq!(restarted.offset, 2);
    assert_eq!(restarted.digest, digest_of(b"bb"));
    let done = writer.send(commit(2, 2, &digest_of(b"bb"))).await.unwrap();
    assert_eq!(done.digest, digest_of(b"bb"));
    assert_eq!(read_all(&mut client, NS, &digest_of(b"bb")).await.unwrap(), b"bb");

    // Also across streams: a new writer starting at 0 replaces a partial ingest.
    let (mut writer, _) = Writer::open(&mut client, NS, stat("again")).await.unwrap();
    writer.send(write(0, b"old partial data")).await.unwrap();
    drop(writer);
    let (mut writer, resumed) = open_when_unlocked(&mut client, NS, stat("again")).await;
    assert_eq!(resumed.offset, 16);
    assert_eq!(writer.send(write(0, b"new")).await.unwrap().offset, 3);
    writer.send(commit(3, 3, &digest_of(b"new"))).await.unwrap();
}

#[tokio::test]
async fn write_at_a_wrong_offset_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let (mut writer, _) = Writer::open(&mut client, NS, stat("gap")).await.unwrap();
    writer.send(write(0, b"abcd")).await.unwrap();
    let err = writer.send(write(10, b"efgh")).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(err.message(), "write @10 must occur at current offset 4");
    drop(writer);
    assert_eq!(status(&mut client, NS, "gap").await.unwrap().offset, 4, "the refused write changed nothing");

    let (mut writer, _) = open_when_unlocked(&mut client, NS, stat("gap")).await;
    let err = writer.send(write(2, b"xx")).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "overwriting the middle is refused too");
    let (mut writer, _) = open_when_unlocked(&mut client, NS, stat("gap")).await;
    let err = writer.send(write(i64::MAX, b"x")).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    let (mut writer, _) = open_when_unlocked(&mut client, NS, stat("gap")).await;
    assert_eq!(writer.send(write(4, b"efgh")).await.unwrap().digest, digest_of(b"abcdefgh"));
}

#[tokio::test]
async fn a_second_writer_on_a_locked_ref_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let (mut first, _) = Writer::open(&mut client, NS, stat("locked")).await.unwrap();
    first.send(write(0, b"held")).await.unwrap();

    let err = Writer::open(&mut client, NS, stat("locked")).await.err().expect("second writer refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().starts_with("ref locked locked"), "{}", err.message());
    // The same ref in another namespace is another ingest.
    Writer::open(&mut client, "other", stat("locked")).await.expect("other namespace");
    // The holder is not disturbed.
    assert_eq!(first.send(write(4, b"!")).await.unwrap().offset, 5);

    drop(first);
    let (_writer, response) = open_when_unlocked(&mut client, NS, stat("locked")).await;
    assert_eq!(response.offset, 5);
}

#[tokio::test]
async fn expected_digest_already_present_is_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let digest = ingest(&mut client, NS, "first", b"present").await;

    let err = Writer::open(&mut client, NS, stat_expecting("second", 0, &digest)).await.err().expect("refused");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(status(&mut client, NS, "second").await.unwrap_err().code(), Code::NotFound, "no ingest made");

    // Named later in the stream, it also ends the write and drops the ingest.
    let (mut writer, _) = Writer::open(&mut client, NS, stat("third")).await.unwrap();
    writer.send(write(0, b"pres")).await.unwrap();
    let err = writer.send(commit(4, 7, &digest)).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(status(&mut client, NS, "third").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), b"present");
}

#[tokio::test]
async fn committing_content_the_namespace_got_meanwhile_is_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let digest = digest_of(b"twice");
    let (mut slow, _) = Writer::open(&mut client, NS, stat("slow")).await.unwrap();
    slow.send(write(0, b"twice")).await.unwrap();
    ingest(&mut client, NS, "fast", b"twice").await;
    // No expected digest on this commit: the record check at commit catches it.
    let err = slow.send(commit(5, 5, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(status(&mut client, NS, "slow").await.unwrap_err().code(), Code::NotFound, "ingest cleaned up");
    assert_eq!(server.blob_files().len(), 1);
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), b"twice");
}

#[tokio::test]
async fn size_mismatch_on_commit_fails_and_leaves_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let data = b"twelve bytes";
    let (mut writer, _) = Writer::open(&mut client, NS, stat("size")).await.unwrap();
    writer.send(write(0, data)).await.unwrap();
    let err = writer.send(commit(12, 13, &digest_of(data))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("unexpected commit size 12, expected 13"), "{}", err.message());
    assert_eq!(info(&mut client, NS, &digest_of(data)).await.unwrap_err().code(), Code::NotFound);
    assert!(server.blob_files().is_empty());
    assert_eq!(status(&mut client, NS, "size").await.unwrap().offset, 12, "the ingest is kept");

    // A total announced at STAT is checked at commit too.
    let (mut writer, _) = open_when_unlocked(&mut client, NS, stat_expecting("size", 100, "")).await;
    let err = writer.send(commit(12, 0, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(server.blob_files().is_empty());
}

#[tokio::test]
async fn digest_mismatch_on_commit_fails_and_leaves_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let data = b"these bytes";
    let wrong = digest_of(b"other bytes");
    let (mut writer, _) = Writer::open(&mut client, NS, stat("digest")).await.unwrap();
    writer.send(write(0, data)).await.unwrap();
    let err = writer.send(commit(11, 11, &wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("unexpected commit digest"), "{}", err.message());
    for digest in [&wrong, &digest_of(data)] {
        assert_eq!(info(&mut client, NS, digest).await.unwrap_err().code(), Code::NotFound);
    }
    assert!(server.blob_files().is_empty());

    // An expected digest from STAT is checked at a COMMIT that names none.
    let (mut writer, _) = Writer::open(&mut client, NS, stat_expecting("digest2", 0, &wrong)).await.unwrap();
    writer.send(write(0, data)).await.unwrap();
    assert_eq!(writer.send(commit(11, 0, "")).await.unwrap_err().code(), Code::FailedPrecondition);
    assert!(server.blob_files().is_empty());
}

#[tokio::test]
async fn expected_and_total_may_come_with_any_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let data = b"announced late";
    let (mut writer, first) = Writer::open(&mut client, NS, stat("late")).await.unwrap();
    assert_eq!(first.total, 0);
    let mut message = write(0, &data[..5]);
    message.total = data.len() as i64;
    assert_eq!(writer.send(message).await.unwrap().total, data.len() as i64);
    let stat_again = writer.send(WriteContentRequest { action: WriteAction::Stat as i32, ..Default::default() }).await;
    assert_eq!(stat_again.unwrap().offset, 5);
    drop(writer);
    let stored = status(&mut client, NS, "late").await.unwrap();
    assert_eq!((stored.offset, stored.total), (5, data.len() as i64), "total is persisted with the ingest");
}

#[tokio::test]
async fn abort_removes_an_ingest_even_under_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let (mut writer, _) = Writer::open(&mut client, NS, stat("doomed")).await.unwrap();
    writer.send(write(0, b"partial")).await.unwrap();
    client.abort(in_ns(AbortRequest { r#ref: "doomed".into() }, NS)).await.unwrap();
    assert_eq!(status(&mut client, NS, "doomed").await.unwrap_err().code(), Code::NotFound);
    let err = writer.send(write(7, b"more")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "the writer learns its ingest is gone: {err:?}");
    let err = client.abort(in_ns(AbortRequest { r#ref: "doomed".into() }, NS)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(server.blob_files().is_empty());
}

#[tokio::test]
async fn pipelined_writes_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let data = bytes(16 << 20, 3);
    let digest = digest_of(&data);
    let (mut writer, _) = Writer::open(&mut client, NS, stat("pipelined")).await.unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        writer.send_only(write((i << 20) as i64, chunk)).await;
    }
    for i in 1..=16 {
        assert_eq!(writer.receive().await.unwrap().offset, i << 20);
    }
    assert_eq!(writer.send(commit(16 << 20, 16 << 20, &digest)).await.unwrap().digest, digest);
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), data);
}
