//! Container record throughput: create / list / delete with 16 concurrent clients through
//! berth's gateway (embedded store, then etcd) and against a containerd 1.6 daemon, same run.
//!
//! Each client is a `containerd-client` channel of its own. A round creates CONTAINERS
//! records (split across the clients), lists the namespace LISTS times per client, then
//! deletes every record. Reports ops/s and p99 latency per operation; medians over ROUNDS
//! alternating rounds. Run with e2e/bench/run.sh metadata_ops.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_e2e::Stack;
use berth_e2e::content::in_namespace;
use berth_e2e::peers::Containerd;
use berth_store::testing::EtcdServer;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, ListContainersRequest,
};
use tonic::transport::Channel;

const CLIENTS: usize = 16;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A record shaped like what `ctr run` writes: a ~2 KiB spec, a few labels.
fn container(id: &str) -> Container {
    let spec = format!(
        r#"{{"ociVersion":"1.0.2","process":{{"args":["sh","-c","echo {id}"],"env":["PATH=/usr/bin:/bin"],"cwd":"/"}},"root":{{"path":"rootfs"}},"linux":{{"namespaces":[{{"type":"pid"}},{{"type":"ipc"}},{{"type":"uts"}},{{"type":"mount"}},{{"type":"network"}}],"maskedPaths":["/proc/acpi","/proc/kcore","/proc/keys","/proc/latency_stats","/proc/timer_list","/proc/timer_stats","/proc/sched_debug","/sys/firmware","/proc/scsi"],"readonlyPaths":["/proc/asound","/proc/bus","/proc/fs","/proc/irq","/proc/sys","/proc/sysrq-trigger"]}},"pad":"{}"}}"#,
        "x".repeat(1200)
    );
    Container {
        id: id.to_string(),
        image: "docker.io/library/busybox:latest".into(),
        labels: [("bench".to_string(), "yes".to_string()), ("io.cri.kind".to_string(), "container".to_string())].into(),
        runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: spec.into_bytes(),
        }),
        snapshotter: "overlayfs".into(),
        snapshot_key: id.to_string(),
        ..Default::default()
    }
}

#[derive(Default, Clone, Copy)]
struct Measured {
    ops_per_s: f64,
    p99_ms: f64,
}

fn measured(latencies: &mut [Duration], wall: Duration) -> Measured {
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
    Measured { ops_per_s: latencies.len() as f64 / wall.as_secs_f64(), p99_ms: p99.as_secs_f64() * 1000.0 }
}

/// Runs `op(client, client_index, i)` for i in 0..per_client on every client at once.
async fn concurrently<F, Fut>(clients: &[ContainersClient<Channel>], per_client: usize, op: F) -> Measured
where
    F: Fn(ContainersClient<Channel>, usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, client) in clients.iter().enumerate() {
        let client = client.clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let began = Instant::now();
                op(client.clone(), index, i).await;
                latencies.push(began.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    measured(&mut latencies, started.elapsed())
}

async fn round(socket: &Path, round: usize) -> [Measured; 3] {
    let containers = env_or("CONTAINERS", 4000);
    let lists = env_or("LISTS", 10);
    let per_client = containers / CLIENTS;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let channel = containerd_client::connect(socket).await.expect("connect");
        // A list of 4000 records with ~2 KiB specs is ~8 MiB, past the 4 MiB default.
        clients.push(ContainersClient::new(channel).max_decoding_message_size(64 << 20));
    }
    let create = concurrently(&clients, per_client, move |mut client, c, i| async move {
        let id = format!("r{round}-c{c}-{i}");
        let request = CreateContainerRequest { container: Some(container(&id)) };
        client.create(in_namespace(request, "bench")).await.expect("create");
    })
    .await;
    let list = concurrently(&clients, lists, move |mut client, _, _| async move {
        let listed = client.list(in_namespace(ListContainersRequest { filters: vec![] }, "bench")).await.expect("list");
        assert_eq!(listed.into_inner().containers.len(), per_client * CLIENTS);
    })
    .await;
    let delete = concurrently(&clients, per_client, move |mut client, c, i| async move {
        let id = format!("r{round}-c{c}-{i}");
        client.delete(in_namespace(DeleteContainerRequest { id }, "bench")).await.expect("delete");
    })
    .await;
    [create, list, delete]
}

fn median(values: &[Measured], pick: impl Fn(&Measured) -> f64) -> f64 {
    let mut picked: Vec<f64> = values.iter().map(pick).collect();
    picked.sort_by(f64::total_cmp);
    picked[picked.len() / 2]
}

#[tokio::main]
async fn main() {
    let rounds = env_or("ROUNDS", 3);
    let embedded = Stack::start().await;
    let etcd = EtcdServer::start();
    let on_etcd = Stack::start_with(&["--metadata", &format!("etcd://{}/bench", etcd.endpoint())]).await;
    let containerd = Containerd::start();

    let targets: [(&str, &Path); 3] = [
        ("berth (embedded)", &embedded.socket),
        ("berth (etcd)", &on_etcd.socket),
        ("containerd 1.6", &containerd.socket),
    ];
    let mut results: Vec<Vec<[Measured; 3]>> = vec![Vec::new(); targets.len()];
    for r in 0..rounds {
        for (t, (name, socket)) in targets.iter().enumerate() {
            let measured = round(socket, r).await;
            eprintln!(
                "round {r} {name}: create {:.0}/s p99 {:.1} ms | list {:.1}/s p99 {:.1} ms | delete {:.0}/s p99 {:.1} ms",
                measured[0].ops_per_s,
                measured[0].p99_ms,
                measured[1].ops_per_s,
                measured[1].p99_ms,
                measured[2].ops_per_s,
                measured[2].p99_ms
            );
            results[t].push(measured);
        }
    }

    let containerd_create = median(&results[2].iter().map(|m| m[0]).collect::<Vec<_>>(), |m| m.ops_per_s);
    println!("| target | create ops/s (p99 ms) | list ops/s (p99 ms) | delete ops/s (p99 ms) | create vs containerd |");
    println!("| --- | --- | --- | --- | --- |");
    for (t, (name, _)) in targets.iter().enumerate() {
        let column = |op: usize| {
            let values: Vec<Measured> = results[t].iter().map(|m| m[op]).collect();
            (median(&values, |m| m.ops_per_s), median(&values, |m| m.p99_ms))
        };
        let (create, create_p99) = column(0);
        let (list, list_p99) = column(1);
        let (delete, delete_p99) = column(2);
        println!(
            "| {name} | {create:.0} ({create_p99:.1}) | {list:.1} ({list_p99:.1}) | {delete:.0} ({delete_p99:.1}) | {:.2}x |",
            create / containerd_create
        );
    }
    println!();
    println!(
        "{CLIENTS} concurrent clients (containerd-client channels), {} containers per round, {} lists of the whole namespace per client; medians of {rounds} alternating rounds.",
        env_or("CONTAINERS", 4000),
        env_or("LISTS", 10)
    );
}
