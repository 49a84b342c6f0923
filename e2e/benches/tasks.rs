//! Running containers: `berth run --rm` against `ctr run --rm` on a containerd 1.6 daemon, the
//! memory of each task's shim, and concurrent runs — same run, same image, same runc.
//!
//! The offline busybox image is imported into both (`ctr images import`, which unpacks it).
//! Then, alternating who goes first each round:
//! - latency: `berth run --rm IMAGE ID /bin/true` (our CLI through the gateway) and
//!   `ctr run --rm IMAGE ID /bin/true` (containerd's), RUNS rounds after WARMUP untimed runs,
//!   each timed as a whole process (wall clock);
//! - memory: TASKS detached `sleep` tasks on each; the resident memory of their shims
//!   (berth-shim, containerd-shim-runc-v2: the parents of the task PIDs `tasks ls` reports),
//!   as VmRSS and as Pss (smaps_rollup: shared pages split between the processes
//!   sharing them); the tasks are then killed and removed through the APIs;
//! - throughput: CONCURRENT `run --rm` processes started at once, ROUNDS times: runs/s.
//!
//! Run with e2e/bench/run.sh tasks (release binaries); needs root, runc and containerd.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::images::{ArchiveFormat, busybox};
use berth_e2e::peers::{Containerd, rss_bytes};
use berth_e2e::{Stack, procs, require_root, require_tool};

/// Not `tasks`: ctr puts containers in cgroup /<namespace>/<id>, and `tasks` is a file in every
/// cgroup v1 directory.
const NS: &str = "bench-run";
const IMAGE: &str = "docker.io/library/busybox:bench";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One side of the comparison: how to run its CLI, where its shims record their PIDs.
struct Target {
    name: &'static str,
    /// The CLI and the arguments that point it at the daemon.
    cli: PathBuf,
    prefix: Vec<String>,
    /// What the shim processes are called (/proc/PID/comm).
    shim: &'static str,
    /// The daemon's socket, for cleanup with ctr.
    socket: PathBuf,
}

impl Target {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.cli);
        command.args(&self.prefix).args(args).stdin(Stdio::null());
        command
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap_or_else(|e| panic!("{} {args:?}: {e}", self.cli.display()))
    }

    fn ok(&self, args: &[&str]) -> Output {
        let output = self.output(args);
        assert!(
            output.status.success(),
            "{}: {} {args:?} failed ({}): {}{}",
            self.name,
            self.cli.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `run --rm IMAGE id /bin/true`, timed.
    fn run_true(&self, id: &str) -> f64 {
        let started = Instant::now();
        self.ok(&["run", "--rm", IMAGE, id, "/bin/true"]);
        started.elapsed().as_secs_f64()
    }

    /// `count` runs of /bin/true started at once; runs per second.
    fn run_concurrently(&self, round: usize, count: usize) -> f64 {
        let started = Instant::now();
        let children: Vec<_> = (0..count)
            .map(|i| {
                let id = format!("c{round}-{i}");
                let child = self
                    .command(&["run", "--rm", IMAGE, &id, "/bin/true"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn a run");
                (id, child)
            })
            .collect();
        for (id, child) in children {
            let output = child.wait_with_output().expect("wait for a run");
            assert!(output.status.success(), "{}: run {id}: {}", self.name, String::from_utf8_lossy(&output.stderr));
        }
        count as f64 / started.elapsed().as_secs_f64()
    }

    /// PIDs of the shims of tasks `ids`: the parents of the task PIDs the daemon reports
    /// (a shim is its task's subreaper), checked to be shims.
    fn shim_pids(&self, ids: &[String]) -> Vec<u32> {
        let listed = String::from_utf8_lossy(&self.ok(&["tasks", "ls"]).stdout).into_owned();
        ids.iter()
            .map(|id| {
                let pid: u32 = listed
                    .lines()
                    .find_map(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        (fields.first() == Some(&id.as_str())).then(|| fields.get(1)?.parse().ok()).flatten()
                    })
                    .unwrap_or_else(|| panic!("{}: task {id} not in `tasks ls`:\n{listed}", self.name));
                let shim = parent(pid).unwrap_or_else(|| panic!("{}: task {id} (pid {pid}) is gone", self.name));
                let comm = std::fs::read_to_string(format!("/proc/{shim}/comm")).unwrap_or_default();
                // /proc's comm is cut at 15 bytes.
                assert!(self.shim.starts_with(comm.trim()), "{}: pid {shim} is {comm:?}, not a shim", self.name);
                shim
            })
            .collect()
    }

    /// Kills and removes every task and container in NS, through the daemon's API.
    fn clean_up(&self) {
        let ctr = |args: &[&str]| {
            Command::new("ctr").arg("--address").arg(&self.socket).args(["-n", NS]).args(args).output().ok()
        };
        let ids = |args: &[&str]| -> Vec<String> {
            ctr(args)
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect())
                .unwrap_or_default()
        };
        for id in ids(&["tasks", "ls", "-q"]) {
            ctr(&["tasks", "rm", "-f", &id]);
        }
        for id in ids(&["containers", "ls", "-q"]) {
            ctr(&["containers", "rm", &id]);
        }
    }
}

/// The parent of `pid`, from /proc.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split at the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory of the shims: (VmRSS, Pss) in bytes, summed.
fn shim_memory(pids: &[u32]) -> (u64, u64) {
    let rss = pids.iter().map(|pid| rss_bytes(*pid)).sum();
    let pss = pids
        .iter()
        .map(|pid| {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            rollup
                .lines()
                .find_map(|line| line.strip_prefix("Pss:"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<u64>().ok())
                .map_or(0, |kb| kb * 1024)
        })
        .sum();
    (rss, pss)
}

/// Starts `count` detached sleep tasks; returns (per-task VmRSS, per-task Pss) of their shims in
/// MiB, and removes them again.
fn sleepers(target: &Target, count: usize) -> (f64, f64) {
    let ids: Vec<String> = (0..count).map(|i| format!("sleep-{i}")).collect();
    for id in &ids {
        target.ok(&["run", "-d", IMAGE, id, "sleep", "3600"]);
    }
    // Let the shims finish starting up (first calls, buffers) before reading their memory.
    std::thread::sleep(Duration::from_secs(1));
    let pids = target.shim_pids(&ids);
    let (rss, pss) = shim_memory(&pids);
    target.clean_up();
    assert!(
        procs::wait_until(Duration::from_secs(10), || pids.iter().all(|pid| !procs::alive(*pid))),
        "{}: shims still running after their tasks were removed",
        target.name
    );
    let mib = |bytes: u64| bytes as f64 / count as f64 / (1 << 20) as f64;
    (mib(rss), mib(pss))
}

/// Removes every task and container both daemons still have, even when the bench panics.
struct CleanUp<'a>(&'a [Target]);

impl Drop for CleanUp<'_> {
    fn drop(&mut self) {
        for target in self.0 {
            target.clean_up();
        }
    }
}

fn import(socket: &Path, archive: &Path) {
    let output = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", NS, "images", "import"])
        .arg(archive)
        .output()
        .expect("run ctr");
    assert!(output.status.success(), "ctr images import: {}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::main]
async fn main() {
    require_root();
    require_tool("runc");
    let rounds = env_or("ROUNDS", 3);
    let runs = env_or("RUNS", 20);
    let warmup = env_or("WARMUP", 3);
    let tasks = env_or("TASKS", 20);
    let concurrent = env_or("CONCURRENT", 8);
    eprintln!("load average at start: {}", load());

    let stack = Stack::start().await;
    let containerd = Containerd::start();
    let archive = stack.dir.path().join("busybox.tar");
    busybox().write_archive(ArchiveFormat::Oci, &archive, IMAGE);
    import(&stack.socket, &archive);
    import(&containerd.socket, &archive);

    let targets = [
        Target {
            name: "berth",
            cli: berth_e2e::binary("berth"),
            prefix: vec!["--address".into(), stack.socket.display().to_string(), "-n".into(), NS.into()],
            shim: "berth-shim",
            socket: stack.socket.clone(),
        },
        Target {
            name: "containerd 1.6",
            cli: require_tool("ctr"),
            prefix: vec!["--address".into(), containerd.socket.display().to_string(), "-n".into(), NS.into()],
            shim: "containerd-shim-runc-v2",
            socket: containerd.socket.clone(),
        },
    ];
    let _clean_up = CleanUp(&targets);
    // Alternating who goes first: [berth, containerd] on even rounds, reversed on odd ones.
    let order = |round: usize| if round.is_multiple_of(2) { [0, 1] } else { [1, 0] };

    for i in 0..warmup {
        for target in &targets {
            target.run_true(&format!("warm-{i}"));
        }
    }
    let mut latency = [Vec::new(), Vec::new()];
    for round in 0..runs {
        for t in order(round) {
            latency[t].push(targets[t].run_true(&format!("true-{round}")));
        }
        eprintln!("run {round}: berth {:.3} s, containerd {:.3} s", latency[0][round], latency[1][round]);
    }
    let ratios: Vec<f64> = latency[0].iter().zip(&latency[1]).map(|(b, c)| b / c).collect();

    let mut memory = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for t in order(round) {
            memory[t].push(sleepers(&targets[t], tasks));
        }
        eprintln!(
            "memory {round}: berth-shim {:.2} MiB RSS {:.2} MiB Pss | containerd-shim-runc-v2 {:.2} MiB RSS {:.2} MiB Pss",
            memory[0][round].0, memory[0][round].1, memory[1][round].0, memory[1][round].1
        );
    }

    let mut throughput = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for t in order(round) {
            throughput[t].push(targets[t].run_concurrently(round, concurrent));
        }
        eprintln!(
            "concurrent {round}: berth {:.1} runs/s, containerd {:.1} runs/s",
            throughput[0][round], throughput[1][round]
        );
    }
    eprintln!("load average at the end: {}", load());

    let [bl, cl] = latency.map(median);
    let [(br, bp), (cr, cp)] = memory
        .map(|m| (median(m.iter().map(|(rss, _)| *rss).collect()), median(m.iter().map(|(_, pss)| *pss).collect())));
    let [bt, ct] = throughput.map(median);
    println!("| measure | berth | containerd 1.6 | berth / containerd |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| `run --rm IMAGE ID /bin/true`, wall s (median of {runs}) | {bl:.3} | {cl:.3} | {:.2}x (per-pair median {:.2}x) |",
        bl / cl,
        median(ratios)
    );
    println!("| shim memory per task, VmRSS MiB ({tasks} sleep tasks) | {br:.2} | {cr:.2} | {:.2}x |", br / cr);
    println!("| shim memory per task, Pss MiB | {bp:.2} | {cp:.2} | {:.2}x |", bp / cp);
    println!("| {concurrent} concurrent `run --rm`, runs/s | {bt:.1} | {ct:.1} | {:.2}x |", bt / ct);
    println!();
    println!(
        "Alternating rounds (who goes first swaps each round); memory and throughput: medians of {rounds} rounds. \
         Load average at the end: {}.",
        load()
    );
}
