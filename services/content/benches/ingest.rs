//! Content ingest and read throughput of the `berth-content` binary alone (no gateway), over
//! its unix socket, with a client on berth-api's generated code: STAT, 1 MiB WRITEs (8 in
//! flight, or 1 at a time like `ctr content ingest`), COMMIT (with its fsync); then a Read of
//! the whole blob. `cargo bench -p berth-content --bench ingest`; SIZE_MIB and ROUNDS tune it.
//! The end-to-end comparison with containerd (through the gateway) is e2e's content_ingest.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{
    DeleteContentRequest, ReadContentRequest, WriteAction, WriteContentRequest,
};
use berth_core::connect::{Address, lazy_channel};
use futures::StreamExt;
use sha2::Digest as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const CHUNK: usize = 1 << 20;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("containerd-namespace", "bench".parse().expect("ascii"));
    request
}

/// Ingests `data`; returns how long the COMMIT took (fsync, rename, record).
async fn ingest(
    client: &mut ContentClient<tonic::transport::Channel>,
    data: &[u8],
    digest: &str,
    in_flight: usize,
) -> Duration {
    let (sender, receiver) = mpsc::channel(in_flight + 1);
    let stat = WriteContentRequest { action: WriteAction::Stat as i32, r#ref: "bench".into(), ..Default::default() };
    sender.send(stat).await.expect("send");
    let mut responses = client.write(request(ReceiverStream::new(receiver))).await.expect("write").into_inner();
    responses.next().await.expect("stat answer").expect("stat");
    let mut pending = 0;
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        let write = WriteContentRequest {
            action: WriteAction::Write as i32,
            offset: (i * CHUNK) as i64,
            data: chunk.to_vec(),
            ..Default::default()
        };
        sender.send(write).await.expect("send");
        pending += 1;
        if pending == in_flight {
            responses.next().await.expect("answer").expect("write");
            pending -= 1;
        }
    }
    for _ in 0..pending {
        responses.next().await.expect("answer").expect("write");
    }
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        offset: data.len() as i64,
        total: data.len() as i64,
        expected: digest.into(),
        ..Default::default()
    };
    let written = Instant::now();
    sender.send(commit).await.expect("send");
    let done = responses.next().await.expect("answer").expect("commit");
    assert_eq!(done.digest, digest);
    written.elapsed()
}

fn mib_per_s(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let size = env_or("SIZE_MIB", 512) << 20;
    let rounds = env_or("ROUNDS", 3);
    let dir = tempfile::tempdir().expect("temp dir");
    // CONTENT_SOCKET: measure a server started elsewhere (e.g. under perf) instead.
    let (socket, mut child) = match std::env::var_os("CONTENT_SOCKET") {
        Some(socket) => (std::path::PathBuf::from(socket), None),
        None => {
            let socket = dir.path().join("content.sock");
            let child = Command::new(env!("CARGO_BIN_EXE_berth-content"))
                .arg("--root")
                .arg(dir.path().join("root"))
                .arg("--listen")
                .arg(&socket)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()
                .expect("start berth-content");
            (socket, Some(child))
        }
    };
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut client = ContentClient::new(lazy_channel(&Address::Unix(socket.clone())))
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);

    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&data)));

    for round in 0..rounds {
        let mut line = format!("round {round}:");
        for in_flight in [8, 1] {
            let started = Instant::now();
            let commit = ingest(&mut client, &data, &digest, in_flight).await;
            line += &format!(
                " ingest({in_flight} in flight) {:.0} MiB/s (commit {:.0} ms)",
                mib_per_s(size, started.elapsed()),
                commit.as_secs_f64() * 1000.0
            );
            if in_flight == 8 {
                let started = Instant::now();
                let read = ReadContentRequest { digest: digest.clone(), offset: 0, size: 0 };
                let mut stream = client.read(request(read)).await.expect("read").into_inner();
                let mut total = 0;
                while let Some(chunk) = stream.next().await {
                    total += chunk.expect("chunk").data.len();
                }
                assert_eq!(total, size);
                line += &format!(" | read {:.0} MiB/s |", mib_per_s(size, started.elapsed()));
            }
            client.delete(request(DeleteContentRequest { digest: digest.clone() })).await.expect("delete");
        }
        println!("{line}");
    }
    if let Some(child) = child.as_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}
