//! Every rule of containerd's content Write protocol, through the gateway, driven by the
//! `containerd-client` crate exactly as a containerd user would.

use berth_e2e::content::{Writer, commit, commit_at, info, ingest, read_all, stat, status_offset, write};
use berth_e2e::{Stack, digest_of, random_bytes};
use containerd_client::services::v1::content_client::ContentClient;
use tonic::Code;

const NS: &str = "default";

#[tokio::test]
async fn resume_after_the_stream_drops() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let data = random_bytes(3 << 20);
    let digest = digest_of(&data);

    let (mut writer, first) = Writer::open(&mut client, NS, stat("resume")).await.unwrap();
    assert_eq!(first.offset, 0);
    let after = writer.send(write("resume", 0, &data[..1 << 20])).await.unwrap();
    assert_eq!(after.offset, 1 << 20);
    drop(writer);

    assert_eq!(status_offset(&mut client, NS, "resume").await.unwrap(), 1 << 20);
    let (mut writer, resumed) = Writer::open(&mut client, NS, stat("resume")).await.unwrap();
    assert_eq!(resumed.offset, 1 << 20, "STAT after reconnect reports the stored offset");
    writer.send(write("resume", 1 << 20, &data[1 << 20..])).await.unwrap();
    let done = writer.send(commit("resume", data.len() as i64, &digest)).await.unwrap();
    assert_eq!(done.digest, digest);
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), data);
}

#[tokio::test]
async fn write_at_offset_zero_truncates() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let (mut writer, _) = Writer::open(&mut client, NS, stat("trunc")).await.unwrap();
    writer.send(write("trunc", 0, b"aaaaaaaa")).await.unwrap();
    let restarted = writer.send(write("trunc", 0, b"bb")).await.unwrap();
    assert_eq!(restarted.offset, 2);
    let done = writer.send(commit("trunc", 2, &digest_of(b"bb"))).await.unwrap();
    assert_eq!(done.digest, digest_of(b"bb"));
    assert_eq!(read_all(&mut client, NS, &digest_of(b"bb")).await.unwrap(), b"bb");
}

#[tokio::test]
async fn write_at_a_wrong_offset_is_out_of_range() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let (mut writer, _) = Writer::open(&mut client, NS, stat("gap")).await.unwrap();
    writer.send(write("gap", 0, b"abcd")).await.unwrap();
    let err = writer.send(write("gap", 10, b"efgh")).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // The ingest is untouched by the refused write.
    assert_eq!(status_offset(&mut client, NS, "gap").await.unwrap(), 4);
}

#[tokio::test]
async fn a_second_writer_on_a_locked_ref_is_unavailable() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let (mut first, _) = Writer::open(&mut client, NS, stat("locked")).await.unwrap();
    first.send(write("locked", 0, b"held")).await.unwrap();

    let second = Writer::open(&mut client, NS, stat("locked")).await;
    let err = second.err().expect("second writer refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // Once the first writer is gone the ref can be written again.
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok((writer, response)) = Writer::open(&mut client, NS, stat("locked")).await {
            assert_eq!(response.offset, 4);
            reopened = Some(writer);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "lock released after the first stream closed");
}

#[tokio::test]
async fn expected_digest_already_present_is_already_exists() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let digest = ingest(&mut client, NS, "first", b"present").await;
    let mut again = stat("second");
    again.expected = digest.clone();
    let err = Writer::open(&mut client, NS, again).await.err().expect("refused");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
}

#[tokio::test]
async fn size_mismatch_on_commit_fails_and_leaves_no_blob() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let data = b"twelve bytes";
    let (mut writer, _) = Writer::open(&mut client, NS, stat("size")).await.unwrap();
    writer.send(write("size", 0, data)).await.unwrap();
    let err =
        writer.send(commit_at("size", data.len() as i64, data.len() as i64 + 1, &digest_of(data))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let missing = info(&mut client, NS, &digest_of(data)).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_no_blob_files(&stack);
}

#[tokio::test]
async fn digest_mismatch_on_commit_fails_and_leaves_no_blob() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let data = b"these bytes";
    let (mut writer, _) = Writer::open(&mut client, NS, stat("digest")).await.unwrap();
    writer.send(write("digest", 0, data)).await.unwrap();
    let wrong = digest_of(b"other bytes");
    let err = writer.send(commit("digest", data.len() as i64, &wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    for digest in [wrong, digest_of(data)] {
        assert_eq!(info(&mut client, NS, &digest).await.unwrap_err().code(), Code::NotFound);
    }
    assert_no_blob_files(&stack);
}

#[tokio::test]
async fn content_is_shared_across_namespaces_without_reupload() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let data = random_bytes(1 << 20);
    let digest = ingest(&mut client, "team-a", "blob", &data).await;
    assert_eq!(info(&mut client, "team-b", &digest).await.unwrap_err().code(), Code::NotFound);

    let mut expecting = stat("blob");
    expecting.expected = digest.clone();
    expecting.total = data.len() as i64;
    let (mut writer, status) = Writer::open(&mut client, "team-b", expecting).await.unwrap();
    assert_eq!(status.offset, data.len() as i64, "the bytes are already there: nothing to upload");
    writer.send(commit("blob", data.len() as i64, &digest)).await.unwrap();
    assert_eq!(read_all(&mut client, "team-b", &digest).await.unwrap(), data);
}

/// No file in the blob directory: failed commits never leave one behind.
fn assert_no_blob_files(stack: &Stack) {
    let blobs = stack.root.join("content/blobs/sha256");
    let files: Vec<_> = std::fs::read_dir(&blobs).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(files.is_empty(), "unexpected blob files: {files:?}");
}
