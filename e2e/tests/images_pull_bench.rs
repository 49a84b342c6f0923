//! Cold pull + unpack of a 200 MB, 6-layer image from a loopback registry: berth's own pull
//! (berth-image fetching and unpacking) against `ctr images pull --plain-http` on a containerd
//! 1.6 daemon, same run, alternating. Also the peak RSS of berth-image during its pulls.
//!
//! Ignored by default (it takes a while); run with release binaries (an absolute
//! `BERTH_BIN_DIR`: tests run in e2e/):
//! `cargo build --release --workspace --bins && BERTH_BIN_DIR=$PWD/target/release \
//!  cargo test --release -p berth-e2e --test images_pull_bench -- --ignored --nocapture`
//! (`ROUNDS`, `SIZE_MIB` and `LAYERS` change the defaults 3, 200 and 6; `UNPACK=0` times
//! berth's fetch alone; `CONCURRENCY` sets berth's downloads at once; `TIMELINE=1` prints when
//! each of berth's blobs and layers finished and the CPU time each service used).

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_api::berth::image::v1::pull_progress::Event;
use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_api::berth::image::v1::{BlobState, LayerState, PullRequest};
use berth_api::containerd::services::snapshots::v1::StatSnapshotRequest;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
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

/// User and system CPU seconds `binary` (a service under berthd) used so far.
fn cpu_seconds(stack: &Stack, binary: &str) -> (f64, f64) {
    let Some(pid) = stack.service_pids(binary).first().copied() else { return (0.0, 0.0) };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (ticks(11), ticks(12))
}

/// One berth pull; returns its wall time. With unpack, checks that every layer was unpacked
/// by this pull (cold) and that the top chain is a committed snapshot once the reply ended,
/// so the time covers the whole unpack. `TIMELINE=1` prints when each blob and layer finished.
async fn berth_pull(stack: &Stack, reference: &str, namespace: &str) -> f64 {
    let mut client = TransferClient::new(stack.channel());
    let unpack = setting("UNPACK", 1) != 0;
    let timeline = setting("TIMELINE", 0) != 0;
    let max_concurrent_downloads = setting("CONCURRENCY", 0) as u32;
    let request = PullRequest {
        reference: reference.into(),
        plain_http: true,
        unpack,
        max_concurrent_downloads,
        ..Default::default()
    };
    let services = ["berth-image", "berth-content", "berth-snapshot", "berth-metadata", "berth-gateway"];
    let cpu_before: Vec<(f64, f64)> = services.iter().map(|s| cpu_seconds(stack, s)).collect();
    let started = Instant::now();
    let mut stream = client.pull(in_namespace(request, namespace)).await.expect("pull").into_inner();
    let (mut unpacked, mut top) = (0usize, String::new());
    while let Some(progress) = stream.message().await.expect("pull progresses") {
        let at = started.elapsed().as_secs_f64();
        match progress.event {
            Some(Event::Blob(blob)) if timeline && blob.state() != BlobState::Downloading => {
                println!("  {at:6.3} s  blob {} {:?}", &blob.digest[7..19], blob.state())
            }
            Some(Event::Layer(layer)) => {
                if timeline {
                    println!("  {at:6.3} s  layer {} {:?}", &layer.digest[7..19], layer.state());
                }
                if layer.state() == LayerState::Done {
                    unpacked += 1;
                    top = layer.chain_id;
                }
            }
            _ => {}
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if timeline {
        let used: Vec<String> = services
            .iter()
            .zip(cpu_before)
            .map(|(s, (user, system))| {
                let now = cpu_seconds(stack, s);
                format!("{s} {:.2}+{:.2}", now.0 - user, now.1 - system)
            })
            .collect();
        println!("  CPU seconds (user+system) during the pull: {}", used.join(", "));
    }
    if unpack {
        let layers = setting("LAYERS", 6) as usize;
        assert_eq!(unpacked, layers, "a cold pull unpacks every layer");
        let stat = StatSnapshotRequest { snapshotter: "overlayfs".into(), key: top.clone() };
        SnapshotsClient::new(stack.channel())
            .stat(in_namespace(stat, namespace))
            .await
            .unwrap_or_else(|s| panic!("top chain {top} is not a snapshot right after the pull: {s}"));
    }
    elapsed
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
    let elapsed = started.elapsed().as_secs_f64();
    assert!(output.status.success(), "ctr pull: {}", String::from_utf8_lossy(&output.stderr));
    // ctr unpacks for this host's platform as part of the pull: the two do the same work.
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("unpacking") && said.contains("done"), "ctr pull did not unpack: {said}");
    elapsed
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
