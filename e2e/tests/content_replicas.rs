//! `berthd --content-replicas 2 --metadata etcd://...`: two berth-content processes over one
//! blob directory, with their records and ingest locks on a real etcd. A ref has one writer
//! across both replicas, a released ref resumes on the other at the stored offset, a killed
//! holder's ref frees after the lock TTL, blobs written through one are read through the
//! other, and the gateway spreads writers over both.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth_e2e::content::{commit, in_namespace, info, read_all, stat, write};
use berth_e2e::{Stack, digest_of, procs, random_bytes};
use berth_store::testing::EtcdServer;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{WriteContentRequest, WriteContentResponse};
use futures::StreamExt;
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const NS: &str = "default";
/// Lock TTL given to the stack (`?lock-ttl=`): how long a killed holder keeps its refs.
const LOCK_TTL: Duration = Duration::from_secs(3);
const CHUNK: usize = 1 << 20;

type Client = ContentClient<Channel>;

/// etcd, and berthd running two content replicas on it.
async fn replicated_stack() -> (EtcdServer, Stack) {
    let etcd = EtcdServer::start();
    let metadata = format!("etcd://{}/e2e-replicas?lock-ttl={}", etcd.endpoint(), LOCK_TTL.as_secs());
    let stack = Stack::start_with(&["--metadata", &metadata, "--content-replicas", "2"]).await;
    (etcd, stack)
}

fn replica_socket(stack: &Stack, replica: usize) -> PathBuf {
    stack.state.join(format!("content-{replica}.sock"))
}

/// A client of one replica's own socket, bypassing the gateway.
async fn replica(stack: &Stack, replica: usize) -> Client {
    let socket = replica_socket(stack, replica);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match containerd_client::connect(&socket).await {
            Ok(channel) => return ContentClient::new(channel),
            Err(err) if Instant::now() < deadline => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("connect to {}: {err}\n{}", socket.display(), stack.logs()),
        }
    }
}

/// PID of the berth-content process serving `content-<replica>.sock`, if one runs.
fn find_replica_pid(stack: &Stack, replica: usize) -> Option<u32> {
    let socket = replica_socket(stack, replica);
    stack.service_pids("berth-content").into_iter().find(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmdline.split(|b| *b == 0).any(|arg| arg == socket.as_os_str().as_encoded_bytes())
    })
}

fn replica_pid(stack: &Stack, replica: usize) -> u32 {
    let mut found = None;
    let seen = procs::wait_until(Duration::from_secs(10), || {
        found = find_replica_pid(stack, replica);
        found.is_some()
    });
    assert!(seen, "no berth-content serves replica {replica}; log:\n{}", stack.logs());
    found.expect("found")
}

/// One Write stream that can also be closed cleanly (the client ends its side, then waits for
/// the server to end the stream, which it does once the ref is released).
struct Session {
    sender: Option<mpsc::Sender<WriteContentRequest>>,
    responses: tonic::Streaming<WriteContentResponse>,
}

impl Session {
    async fn open(
        client: &mut Client,
        first: WriteContentRequest,
    ) -> Result<(Session, WriteContentResponse), tonic::Status> {
        let (sender, receiver) = mpsc::channel(4);
        sender.send(first).await.expect("stream open");
        let mut responses = client.write(in_namespace(ReceiverStream::new(receiver), NS)).await?.into_inner();
        let response = next(&mut responses).await?;
        Ok((Session { sender: Some(sender), responses }, response))
    }

    async fn send(&mut self, request: WriteContentRequest) -> Result<WriteContentResponse, tonic::Status> {
        self.sender.as_ref().expect("open").send(request).await.expect("stream open");
        next(&mut self.responses).await
    }

    async fn close(mut self) {
        self.sender.take();
        while let Some(message) = self.responses.next().await {
            message.expect("the stream ends cleanly");
        }
    }
}

async fn next(responses: &mut tonic::Streaming<WriteContentResponse>) -> Result<WriteContentResponse, tonic::Status> {
    match responses.next().await {
        Some(result) => result,
        None => Err(tonic::Status::unknown("write stream ended without a response")),
    }
}

/// Opening `reference` is refused as locked; returns the message.
async fn refused(client: &mut Client, reference: &str) -> String {
    match Session::open(client, stat(reference)).await {
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
            assert!(status.message().starts_with(&format!("ref {reference} locked for ")), "{status:?}");
            status.message().to_string()
        }
        Ok((_, response)) => panic!("a second writer of {reference} was let in at offset {}", response.offset),
    }
}

async fn write_all(session: &mut Session, reference: &str, data: &[u8], from: usize) {
    for offset in (from..data.len()).step_by(CHUNK) {
        let end = (offset + CHUNK).min(data.len());
        let response = session.send(write(reference, offset as i64, &data[offset..end])).await.expect("write");
        assert_eq!(response.offset, end as i64);
    }
}

#[tokio::test]
async fn a_ref_has_one_writer_across_replicas_and_resumes_on_the_other() {
    let (_etcd, stack) = replicated_stack().await;
    let (mut zero, mut one) = (replica(&stack, 0).await, replica(&stack, 1).await);
    let data = random_bytes(3 * CHUNK + 123);
    let digest = digest_of(&data);

    let (mut first, _) = Session::open(&mut zero, stat("layer")).await.unwrap();
    write_all(&mut first, "layer", &data[..2 * CHUNK], 0).await;
    let message = refused(&mut one, "layer").await;
    let holder = replica_pid(&stack, 0);
    assert!(message.contains(&format!("by berth-content pid {holder} ")), "names the holder: {message}");
    // Refused on the holder's own replica too.
    refused(&mut zero, "layer").await;

    // Once the first writer's stream has ended the ref is free at once, on either replica,
    // and the ingest resumes where it stopped.
    first.close().await;
    let (mut second, resumed) = Session::open(&mut one, stat("layer")).await.expect("the released ref is free");
    assert_eq!(resumed.offset, (2 * CHUNK) as i64);
    write_all(&mut second, "layer", &data, 2 * CHUNK).await;
    let done = second.send(commit("layer", data.len() as i64, &digest)).await.unwrap();
    assert_eq!(done.digest, digest);
    second.close().await;

    // Written (and committed) through replica 1, read through replica 0 and the gateway.
    assert_eq!(read_all(&mut zero, NS, &digest).await.unwrap(), data);
    assert_eq!(info(&mut zero, NS, &digest).await.unwrap().size, data.len() as i64);
    let mut gateway = ContentClient::new(stack.containerd_channel().await);
    assert_eq!(read_all(&mut gateway, NS, &digest).await.unwrap(), data);
    // Committing the same digest again, through the other replica: AlreadyExists.
    let again = Session::open(&mut zero, WriteContentRequest { expected: digest.clone(), ..stat("again") }).await;
    assert_eq!(again.err().map(|s| s.code()), Some(tonic::Code::AlreadyExists));
}

#[tokio::test]
async fn the_gateway_spreads_writers_over_both_replicas() {
    let (_etcd, stack) = replicated_stack().await;
    let mut gateway = ContentClient::new(stack.containerd_channel().await);
    let mut zero = replica(&stack, 0).await;
    let one_pid = replica_pid(&stack, 1);

    let mut sessions = Vec::new();
    for i in 0..4 {
        let (session, _) = Session::open(&mut gateway, stat(&format!("spread-{i}"))).await.unwrap();
        sessions.push(session);
    }
    // Ask replica 0 for each ref: it refuses its own writers as "another writer" and replica
    // 1's by that process's lock.
    let (mut on_zero, mut on_one) = (0, 0);
    for i in 0..4 {
        let message = refused(&mut zero, &format!("spread-{i}")).await;
        if message.ends_with("by another writer") {
            on_zero += 1;
        } else {
            assert!(message.contains(&format!("by berth-content pid {one_pid} ")), "{message}");
            on_one += 1;
        }
    }
    assert!(on_zero > 0 && on_one > 0, "writers spread over both replicas: {on_zero} on 0, {on_one} on 1");
    for session in sessions {
        session.close().await;
    }

    // containerd's ctr, unchanged, through the gateway: ingests land on both replicas in
    // turn, and every blob reads back through whichever replica serves the get.
    berth_e2e::require_tool("ctr");
    let mut blobs = Vec::new();
    for i in 0..4 {
        let data = random_bytes(CHUNK + i);
        let digest = digest_of(&data);
        let input = stack.dir.path().join(format!("blob-{i}"));
        std::fs::write(&input, &data).unwrap();
        let size = data.len().to_string();
        let args = ["content", "ingest", "--expected-size", &size, "--expected-digest", &digest, &format!("ctr-{i}")];
        let ingested = stack.ctr_with_stdin(&args, Some(&input));
        assert!(ingested.status.success(), "ctr ingest: {}", String::from_utf8_lossy(&ingested.stderr));
        blobs.push((digest, data));
    }
    for (digest, data) in &blobs {
        for _ in 0..2 {
            let got = stack.ctr(&["content", "get", digest]);
            assert!(got.status.success() && got.stdout == *data, "ctr content get {digest}");
        }
    }
}

#[tokio::test]
async fn kill_9_of_a_lock_holder_frees_its_ref_after_the_ttl() {
    let (_etcd, stack) = replicated_stack().await;
    let (mut zero, mut one) = (replica(&stack, 0).await, replica(&stack, 1).await);
    let data = random_bytes(4 * CHUNK);
    let digest = digest_of(&data);
    let victim = replica_pid(&stack, 0);

    let (mut session, _) = Session::open(&mut zero, stat("doomed")).await.unwrap();
    write_all(&mut session, "doomed", &data[..CHUNK], 0).await;
    procs::signal(victim, Signal::SIGKILL);
    let killed = Instant::now();
    drop(session);

    // The dead process's lease outlives it by up to the TTL; meanwhile the ref stays locked.
    let message = refused(&mut one, "doomed").await;
    assert!(message.contains(&format!("by berth-content pid {victim} ")), "{message}");
    let (mut resumed, stat_response) = loop {
        match Session::open(&mut one, stat("doomed")).await {
            Ok(opened) => break opened,
            Err(status) if status.code() == tonic::Code::Unavailable && killed.elapsed() < LOCK_TTL * 3 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("the dead holder's ref never freed: {status:?}\n{}", stack.logs()),
        }
    };
    let waited = killed.elapsed();
    // The holder renewed at most a quarter TTL before it died.
    assert!(waited >= LOCK_TTL / 2, "freed after the lease expired, not before: {waited:?}");
    assert_eq!(stat_response.offset, CHUNK as i64, "resumes from the stored offset");
    write_all(&mut resumed, "doomed", &data, CHUNK).await;
    let done = resumed.send(commit("doomed", data.len() as i64, &digest)).await.unwrap();
    assert_eq!(done.digest, digest);
    resumed.close().await;

    // berthd restarts replica 0, which serves the blob replica 1 committed.
    let restarted =
        procs::wait_until(Duration::from_secs(15), || find_replica_pid(&stack, 0).is_some_and(|pid| pid != victim));
    assert!(restarted, "berthd restarted replica 0; log:\n{}", stack.logs());
    let mut zero = replica(&stack, 0).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let read = loop {
        match read_all(&mut zero, NS, &digest).await {
            Ok(read) => break read,
            Err(status) if Instant::now() < deadline => {
                assert_ne!(status.code(), tonic::Code::NotFound, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("replica 0 did not come back: {status:?}\n{}", stack.logs()),
        }
    };
    assert_eq!(read, data);
}
