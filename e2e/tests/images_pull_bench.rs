//! Cold pull + unpack of a 200 MB, 6-layer image from a loopback registry: berth's own pull
//! (berth-image fetching and unpacking) against `ctr images pull --plain-http` on a containerd
//! 1.6 daemon, same run, alternating. Also the peak RSS of berth-image during its pulls.
//!
//! Ignored by default (it takes a while); run with release binaries:
//! `cargo build --release --workspace --bins && BERTH_BIN_DIR=target/release \
//!  cargo test --release -p berth-e2e --test images_pull_bench -- --ignored --nocapture`
//! (`ROUNDS`, `SIZE_MIB` and `LAYERS` change the defaults 3, 200 and 6; `UNPACK=0` times
//! berth's fetch alone).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_api::berth::image::v1::PullRequest;
use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_e2e::content::in_namespace;
use berth_e2e::images::{self, large};
use berth_e2e::peers::{Containerd, rss_bytes};
use berth_e2e::registry::Registry;
use berth_e2e::{Stack, require_root, require_tool};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Samples the RSS of `pid` every 20 ms until stopped; returns the peak.
fn watch_rss(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let handle = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            peak.load(Ordering::Relaxed)
        }
    });
    (stop, handle)
}

async fn berth_pull(stack: &Stack, reference: &str, namespace: &str) -> f64 {
    let mut client = TransferClient::new(stack.channel());
    let unpack = setting("UNPACK", 1) != 0;
    let request = PullRequest { reference: reference.into(), plain_http: true, unpack, ..Default::default() };
    let started = Instant::now();
    let mut stream = client.pull(in_namespace(request, namespace)).await.expect("pull").into_inner();
    while stream.message().await.expect("pull progresses").is_some() {}
    started.elapsed().as_secs_f64()
}

/// `ctr images rm --sync` in the bench namespace, then checks no blob is left.
fn remove(socket: &std::path::Path, reference: &str) {
    let ctr = |args: &[&str]| {
        let output =
            Command::new(require_tool("ctr")).arg("--address").arg(socket).args(args).output().expect("run ctr");
        assert!(output.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    ctr(&["-n", "bench", "images", "rm", "--sync", reference]);
    let left = ctr(&["-n", "bench", "content", "ls", "-q"]);
    assert_eq!(left.trim(), "", "blobs left after rm --sync at {}", socket.display());
}

fn containerd_pull(containerd: &Containerd, reference: &str, namespace: &str) -> f64 {
    let started = Instant::now();
    let output = Command::new(require_tool("ctr"))
        .arg("--address")
        .arg(&containerd.socket)
        .args(["-n", namespace, "images", "pull", "--plain-http", reference])
        .output()
        .expect("run ctr");
    assert!(output.status.success(), "ctr pull: {}", String::from_utf8_lossy(&output.stderr));
    started.elapsed().as_secs_f64()
}

#[tokio::test]
#[ignore = "benchmark: run with --ignored and release binaries"]
async fn cold_pull_and_unpack_berth_vs_containerd() {
    require_root();
    let (rounds, size, layers) = (setting("ROUNDS", 3), setting("SIZE_MIB", 200), setting("LAYERS", 6) as usize);
    let registry = Registry::start();
    let image = large(size, layers);
    let reference = images::push(&registry, image, "bench/large:1");
    let stack = Stack::start().await;
    let containerd = Containerd::start();
    let image_pid = stack.wait_service_pid("berth-image", Duration::from_secs(10));

    let (mut berth, mut peer, mut peak) = (Vec::new(), Vec::new(), 0u64);
    for round in 0..rounds as usize {
        // Who goes first alternates, so neither always finds the registry's files cached.
        for turn in 0..2 {
            if (round + turn) % 2 == 0 {
                let (stop, rss) = watch_rss(image_pid);
                berth.push(berth_pull(&stack, &reference, "bench").await);
                stop.store(true, Ordering::Relaxed);
                peak = peak.max(rss.join().unwrap_or(0));
            } else {
                peer.push(containerd_pull(&containerd, &reference, "bench"));
            }
        }
        println!("round {round}: berth {:.2} s, containerd {:.2} s", berth[round], peer[round]);
        // Cold again: the image goes and the collector takes its blobs and snapshots (content
        // is shared between namespaces, so a new namespace would not be cold).
        remove(&stack.socket, &reference);
        remove(&containerd.socket, &reference);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, c) = (median(&mut berth), median(&mut peer));
    println!(
        "| cold pull + unpack, {size} MiB in {layers} layers | berth {b:.2} s | containerd {c:.2} s | ratio {:.2} |",
        b / c
    );
    println!("| berth-image peak RSS during pulls | {:.1} MiB |", peak as f64 / (1 << 20) as f64);
}
