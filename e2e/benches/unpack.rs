//! Unpack throughput: the layers of a 200 MiB, 6-layer image applied into overlayfs snapshots,
//! berth (through its gateway) vs a containerd 1.6 daemon, same run.
//!
//! Both already hold the layer blobs: berth's content gets them with Content.Write, containerd's
//! with one `ctr images pull --plain-http` from a loopback registry. A round is what an unpacker
//! does per layer — Prepare on the previous layer, Diff.Apply, Commit, under a lease — with the
//! same Rust client (containerd's client crate) against each daemon, alternating, ROUNDS times
//! (default 3) after one untimed warm-up round each; snapshots are removed between rounds,
//! untimed, and dirty pages flushed before each timed round. For reference, containerd's own
//! `ctr images pull` of the image whose blobs are all present (so: resolve + unpack) is timed
//! too. Run with e2e/bench/run.sh, which builds release binaries first; results go to stdout
//! as a Markdown table.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use berth_e2e::peers::Containerd;
use berth_e2e::registry::Registry;
use berth_e2e::{Stack, images};
use containerd_client::services::v1::ApplyRequest;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{CreateRequest, DeleteRequest, Info, UpdateRequest};
use containerd_client::types::Descriptor;
use prost_types::FieldMask;
use tonic::Request;

const TOTAL_MIB: u64 = 200;
const LAYERS: usize = 6;
const NS: &str = "bench";
const SNAPSHOTTER: &str = "overlayfs";

fn rounds() -> usize {
    std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3)
}

/// A request in the bench namespace under `lease` (as unpackers run, so that no garbage
/// collection takes a snapshot half-made).
fn leased<T>(message: T, lease: &str) -> Request<T> {
    let mut request = berth_e2e::content::in_namespace(message, NS);
    request.metadata_mut().insert("containerd-lease", lease.parse().expect("lease id is ASCII"));
    request
}

fn mib_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / seconds
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The chain IDs of the image's layers (OCI image spec).
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => berth_e2e::digest_of(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

/// CPU seconds (user + system) `pids` have used so far.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command name: state is 3rd, utime 14th, stime 15th.
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
            let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            (field(11) + field(12)) / ticks
        })
        .sum()
}

/// Flushes dirty pages so that one round's writeback does not land in the next one's time.
fn settle() {
    let status = Command::new("sync").status().expect("run sync");
    assert!(status.success());
}

/// What one unpack took.
struct Took {
    seconds: f64,
    /// CPU seconds the daemon's processes used meanwhile.
    cpu: f64,
    bytes: u64,
}

/// Prepare + Apply + Commit of every layer on `socket`, served by `pids`. Removes the snapshots
/// afterwards (untimed).
async fn unpack(socket: &Path, pids: &[u32], layers: &[Descriptor], diff_ids: &[String], round: &str) -> Took {
    let channel = containerd_client::connect(socket).await.expect("connect");
    let mut snapshots = SnapshotsClient::new(channel.clone());
    let mut diff = DiffClient::new(channel.clone());
    let mut leases = LeasesClient::new(channel);
    let lease = format!("bench-unpack-{round}");
    let create = CreateRequest { id: lease.clone(), labels: HashMap::new() };
    leases.create(berth_e2e::content::in_namespace(create, NS)).await.expect("create lease");
    let names: Vec<String> = (0..layers.len()).map(|i| format!("bench-{round}-layer-{i}")).collect();
    settle();
    let cpu = cpu_seconds(pids);
    let started = Instant::now();
    let mut bytes = 0;
    let mut parent = String::new();
    for (i, layer) in layers.iter().enumerate() {
        let key = format!("bench-{round}-extract-{i}");
        let prepare = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: parent.clone(),
            labels: HashMap::new(),
        };
        let mounts = snapshots.prepare(leased(prepare, &lease)).await.expect("prepare").into_inner().mounts;
        let apply = ApplyRequest { diff: Some(layer.clone()), mounts, ..Default::default() };
        let applied = diff.apply(leased(apply, &lease)).await.expect("apply").into_inner().applied.expect("applied");
        assert_eq!(applied.digest, diff_ids[i], "layer {i}");
        bytes += applied.size as u64;
        let commit = CommitSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            name: names[i].clone(),
            key,
            labels: HashMap::new(),
        };
        snapshots.commit(leased(commit, &lease)).await.expect("commit");
        parent = names[i].clone();
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pids) - cpu;
    for name in names.iter().rev() {
        let remove = RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: name.clone() };
        snapshots.remove(leased(remove, &lease)).await.expect("remove");
    }
    let delete = DeleteRequest { id: lease.clone(), sync: false };
    leases.delete(berth_e2e::content::in_namespace(delete, NS)).await.expect("delete lease");
    Took { seconds, cpu, bytes }
}

fn ctr(socket: &Path, args: &[&str]) -> std::process::Output {
    let output =
        Command::new("ctr").arg("--address").arg(socket).args(["-n", NS]).args(args).output().expect("run ctr");
    assert!(output.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    output
}

/// containerd's own pull of an image whose blobs it has: the unpack, plus resolving the tag.
fn ctr_pull(socket: &Path, reference: &str, chain: &[String]) -> f64 {
    // Top-down; containerd's collector may take the parents first (nothing references them
    // once their child is gone), which is as good.
    for snapshot in chain.iter().rev() {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(socket)
            .args(["-n", NS, "snapshots", "rm", snapshot])
            .output()
            .expect("run ctr");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() || stderr.contains("not found"), "ctr snapshots rm {snapshot}: {stderr}");
    }
    settle();
    let started = Instant::now();
    ctr(socket, &["images", "pull", "--plain-http", reference]);
    started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let image = images::large(TOTAL_MIB, LAYERS);
    let manifest = image.manifest();
    let layers: Vec<Descriptor> = manifest
        .layers
        .iter()
        .map(|l| Descriptor {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size as i64,
            annotations: HashMap::new(),
        })
        .collect();
    let diff_ids = &manifest.diff_ids;
    let chain = chain_ids(diff_ids);

    let stack = Stack::start().await;
    let mut content = ContentClient::new(stack.containerd_channel().await);
    for layer in &manifest.layers {
        let blob = image.read_blob(&layer.digest);
        berth_e2e::content::ingest(&mut content, NS, &format!("bench-{}", layer.digest), &blob).await;
        // Held for the whole run: nothing references the blobs but this label.
        let root = Info {
            digest: layer.digest.clone(),
            labels: HashMap::from([("containerd.io/gc.root".to_string(), "bench".to_string())]),
            ..Default::default()
        };
        let mask = FieldMask { paths: vec!["labels.containerd.io/gc.root".to_string()] };
        let update = UpdateRequest { info: Some(root), update_mask: Some(mask) };
        content.update(berth_e2e::content::in_namespace(update, NS)).await.expect("label the layer gc.root");
    }

    let containerd = Containerd::start();
    let registry = Registry::start();
    let reference = images::push(&registry, image, "large:1");
    ctr(&containerd.socket, &["images", "pull", "--plain-http", &reference]);

    let mut berth_pids = vec![stack.pid()];
    for service in ["berth-gateway", "berth-content", "berth-snapshot", "berth-metadata"] {
        berth_pids.extend(stack.service_pids(service));
    }
    let containerd_pids = [containerd.pid()];

    // One untimed round each: first-use costs (thread pools, allocator, page cache) are not
    // what this measures.
    unpack(&stack.socket, &berth_pids, &layers, diff_ids, "warm-up").await;
    unpack(&containerd.socket, &containerd_pids, &layers, diff_ids, "warm-up").await;

    let (mut berth, mut theirs, mut pulls) = (vec![], vec![], vec![]);
    let (mut berth_cpu, mut their_cpu) = (vec![], vec![]);
    let mut size = 0;
    for round in 0..rounds() {
        let b = unpack(&stack.socket, &berth_pids, &layers, diff_ids, &round.to_string()).await;
        let c = unpack(&containerd.socket, &containerd_pids, &layers, diff_ids, &round.to_string()).await;
        let p = ctr_pull(&containerd.socket, &reference, &chain);
        size = b.bytes;
        berth.push(mib_per_s(b.bytes, b.seconds));
        theirs.push(mib_per_s(c.bytes, c.seconds));
        pulls.push(mib_per_s(b.bytes, p));
        berth_cpu.push(b.cpu);
        their_cpu.push(c.cpu);
        eprintln!(
            "round {round}: berth {:.2} s ({:.0} MiB/s, {:.2} CPU s) | containerd {:.2} s ({:.0} MiB/s, {:.2} CPU s) | \
             ctr images pull {p:.2} s",
            b.seconds, berth[round], b.cpu, c.seconds, theirs[round], c.cpu
        );
    }

    let paired: Vec<f64> = berth.iter().zip(&theirs).map(|(b, c)| b / c).collect();
    let (b, c, p, ratio) = (median(berth), median(theirs), median(pulls), median(paired));
    let (bc, cc) = (median(berth_cpu), median(their_cpu));
    let mib = size as f64 / (1 << 20) as f64;
    println!("| unpack ({mib:.0} MiB, {LAYERS} layers, overlayfs) | MiB/s | seconds | CPU seconds | berth / this |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| berth: Prepare + Apply + Commit per layer (Rust client, gateway) | {b:.0} | {:.2} | {bc:.2} | 1.00x |",
        mib / b
    );
    println!("| containerd 1.6: the same calls (Rust client) | {c:.0} | {:.2} | {cc:.2} | {:.2}x |", mib / c, b / c);
    println!("| containerd 1.6: `ctr images pull`, blobs present | {p:.0} | {:.2} | | {:.2}x |", mib / p, b / p);
    println!();
    println!(
        "Medians of {} alternating rounds (median of the per-round berth / containerd ratios: {ratio:.2}x); \
         layers of seeded random data, gzip, already in each content store. CPU seconds: all of \
         berth's processes, containerd's daemon.",
        rounds()
    );
}
