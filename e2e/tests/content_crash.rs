//! kill -9 of berth-content in the middle of a 200 MiB ingest: berthd restarts it, the client
//! resumes from the offset Status reports, and the committed blob is exactly right.

use std::time::{Duration, Instant};

use berth_e2e::content::{Writer, commit, info, read_all, stat, status_offset, write};
use berth_e2e::{Stack, digest_of, procs, random_bytes};
use containerd_client::services::v1::ListContentRequest;
use containerd_client::services::v1::content_client::ContentClient;
use futures::StreamExt;
use nix::sys::signal::Signal;

const NS: &str = "default";
const SIZE: usize = 200 << 20;
const CHUNK: usize = 1 << 20;

#[tokio::test]
async fn kill_9_of_content_mid_ingest_resumes_and_commits() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let data = random_bytes(SIZE);
    let digest = digest_of(&data);
    let content_pid = stack.wait_service_pid("berth-content", Duration::from_secs(5));

    // Write until a third is acknowledged, then kill the service under the stream.
    let (mut writer, _) = Writer::open(&mut client, NS, stat("big")).await.unwrap();
    let mut acknowledged = 0i64;
    let mut offset = 0usize;
    while acknowledged < (SIZE / 3) as i64 {
        let response = writer.send(write("big", offset as i64, &data[offset..offset + CHUNK])).await.unwrap();
        acknowledged = response.offset;
        offset += CHUNK;
    }
    // Keep a few writes in flight while the process dies.
    for _ in 0..4 {
        writer.send_only(write("big", offset as i64, &data[offset..offset + CHUNK])).await;
        offset += CHUNK;
    }
    procs::signal(content_pid, Signal::SIGKILL);
    let mut stream_failed = false;
    for _ in 0..8 {
        if writer.receive().await.is_err() {
            stream_failed = true;
            break;
        }
    }
    assert!(stream_failed, "the write stream fails when its server dies");
    drop(writer);

    // berthd restarts the service; meanwhile no partial blob is visible.
    let restarted = procs::wait_until(Duration::from_secs(15), || {
        let pids = stack.service_pids("berth-content");
        pids.len() == 1 && pids[0] != content_pid
    });
    assert!(restarted, "berthd restarted berth-content; log:\n{}", stack.logs());
    let deadline = Instant::now() + Duration::from_secs(15);
    let resume_at = loop {
        match status_offset(&mut client, NS, "big").await {
            Ok(offset) => break offset,
            Err(err) if Instant::now() < deadline => {
                assert_ne!(err.code(), tonic::Code::NotFound, "the ingest survived the restart");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("status after restart: {err:?}\n{}", stack.logs()),
        }
    };
    assert!(resume_at >= acknowledged, "acknowledged bytes are kept ({resume_at} < {acknowledged})");
    assert!(resume_at <= offset as i64);
    assert_eq!(info(&mut client, NS, &digest).await.unwrap_err().code(), tonic::Code::NotFound);
    let blobs = stack.root.join("content/blobs/sha256");
    let visible = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(visible, 0, "no partial file is visible as a blob");
    let listed = client
        .list(berth_e2e::content::in_namespace(ListContentRequest { filters: vec![] }, NS))
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    assert!(listed.iter().all(|r| r.as_ref().unwrap().info.is_empty()), "nothing listed before commit");

    // Resume from the reported offset and commit.
    let (mut writer, status) = Writer::open(&mut client, NS, stat("big")).await.unwrap();
    assert_eq!(status.offset, resume_at);
    let mut offset = resume_at as usize;
    while offset < SIZE {
        let end = (offset + CHUNK).min(SIZE);
        writer.send(write("big", offset as i64, &data[offset..end])).await.unwrap();
        offset = end;
    }
    let done = writer.send(commit("big", SIZE as i64, &digest)).await.unwrap();
    assert_eq!(done.digest, digest);
    assert_eq!(info(&mut client, NS, &digest).await.unwrap().size, SIZE as i64);
    let back = read_all(&mut client, NS, &digest).await.unwrap();
    assert!(back == data, "read back equals what was written");
}
