//! Content ingest throughput: berth (through its gateway) vs a containerd 1.6 daemon, same run.
//!
//! A 512 MiB random blob is ingested into each, alternating, ROUNDS times, with two clients:
//! a Rust client on the `containerd-client` crate (STAT, pipelined 1 MiB WRITEs, COMMIT) and
//! `ctr content ingest`. Also measures the disk's own ceiling (`dd ... conv=fdatasync`) and the
//! idle RSS of berth's processes against containerd's daemon. Run with e2e/bench/run.sh, which
//! builds release binaries first; results go to stdout as a Markdown table.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use berth_e2e::content::{Writer, commit, in_namespace, stat, write};
use berth_e2e::peers::{Containerd, rss_bytes};
use berth_e2e::{Stack, digest_of, random_bytes};
use containerd_client::services::v1::DeleteContentRequest;
use containerd_client::services::v1::content_client::ContentClient;

const SIZE: usize = 512 << 20;
const CHUNK: usize = 1 << 20;
const IN_FLIGHT: usize = 8;

fn rounds() -> usize {
    std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3)
}

fn mib_per_s(bytes: usize, seconds: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / seconds
}

/// Ingests `data` with the Rust client and returns MiB/s; deletes the blob afterwards.
async fn rust_client_ingest(socket: &Path, data: &[u8], digest: &str, reference: &str) -> f64 {
    let channel = containerd_client::connect(socket).await.expect("connect");
    let mut client = ContentClient::new(channel);
    let started = Instant::now();
    let (mut writer, _) = Writer::open(&mut client, "bench", stat(reference)).await.expect("stat");
    let mut pending = 0;
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        writer.send_only(write(reference, (i * CHUNK) as i64, chunk)).await;
        pending += 1;
        if pending == IN_FLIGHT {
            writer.receive().await.expect("write");
            pending -= 1;
        }
    }
    for _ in 0..pending {
        writer.receive().await.expect("write");
    }
    writer.send(commit(reference, data.len() as i64, digest)).await.expect("commit");
    let rate = mib_per_s(data.len(), started.elapsed().as_secs_f64());
    client.delete(in_namespace(DeleteContentRequest { digest: digest.into() }, "bench")).await.expect("delete");
    rate
}

/// Ingests the file with `ctr content ingest` and returns MiB/s; deletes the blob afterwards.
fn ctr_ingest(socket: &Path, file: &Path, digest: &str, reference: &str) -> f64 {
    let started = Instant::now();
    let output = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "bench", "content", "ingest", reference])
        .stdin(Stdio::from(std::fs::File::open(file).expect("input")))
        .output()
        .expect("run ctr");
    let seconds = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "ctr ingest: {}", String::from_utf8_lossy(&output.stderr));
    let rm = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "bench", "content", "rm", digest])
        .output()
        .expect("run ctr");
    assert!(rm.status.success(), "ctr rm: {}", String::from_utf8_lossy(&rm.stderr));
    mib_per_s(SIZE, seconds)
}

/// MiB/s of `dd` writing 512 MiB with fdatasync next to the stores.
fn disk_ceiling(dir: &Path) -> f64 {
    let target = dir.join("dd.out");
    let started = Instant::now();
    let status = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", "count=512", "conv=fdatasync", "status=none"])
        .status()
        .expect("run dd");
    assert!(status.success());
    let rate = mib_per_s(SIZE, started.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(target);
    rate
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn berth_rss(stack: &Stack) -> u64 {
    let mut total = rss_bytes(stack.pid());
    for name in ["berth-gateway", "berth-content", "berth-snapshot", "berth-image", "berth-metadata", "berth-execution"]
    {
        total += stack.service_pids(name).into_iter().map(rss_bytes).sum::<u64>();
    }
    total
}

#[tokio::main]
async fn main() {
    let stack = Stack::start().await;
    let containerd = Containerd::start();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let berth_idle = berth_rss(&stack);
    let containerd_idle = rss_bytes(containerd.pid());

    let data = random_bytes(SIZE);
    let digest = digest_of(&data);
    let file = stack.dir.path().join("blob.bin");
    std::fs::write(&file, &data).expect("write input file");

    let (mut berth_rust, mut containerd_rust, mut berth_ctr, mut containerd_ctr, mut dd) =
        (vec![], vec![], vec![], vec![], vec![]);
    for round in 0..rounds() {
        let reference = format!("bench-{round}");
        berth_rust.push(rust_client_ingest(&stack.socket, &data, &digest, &reference).await);
        containerd_rust.push(rust_client_ingest(&containerd.socket, &data, &digest, &reference).await);
        berth_ctr.push(ctr_ingest(&stack.socket, &file, &digest, &reference));
        containerd_ctr.push(ctr_ingest(&containerd.socket, &file, &digest, &reference));
        dd.push(disk_ceiling(stack.dir.path()));
        eprintln!(
            "round {round}: rust berth {:.0} containerd {:.0} | ctr berth {:.0} containerd {:.0} | dd {:.0} MiB/s",
            berth_rust[round], containerd_rust[round], berth_ctr[round], containerd_ctr[round], dd[round]
        );
    }

    let (br, cr, bc, cc, disk) =
        (median(berth_rust), median(containerd_rust), median(berth_ctr), median(containerd_ctr), median(dd));
    println!("| client | berth MiB/s | containerd MiB/s | berth / containerd | berth / disk (dd {disk:.0} MiB/s) |");
    println!("| --- | --- | --- | --- | --- |");
    println!("| Rust (containerd-client) | {br:.0} | {cr:.0} | {:.2}x | {:.0}% |", br / cr, 100.0 * br / disk);
    println!("| ctr content ingest | {bc:.0} | {cc:.0} | {:.2}x | {:.0}% |", bc / cc, 100.0 * bc / disk);
    println!();
    println!(
        "Idle RSS: berth (berthd + gateway + services) {:.1} MiB, containerd daemon {:.1} MiB ({:.2}x)",
        berth_idle as f64 / (1 << 20) as f64,
        containerd_idle as f64 / (1 << 20) as f64,
        berth_idle as f64 / containerd_idle as f64
    );
    println!("Medians of {} alternating rounds of a {} MiB random blob.", rounds(), SIZE >> 20);
}
