//! `berth run` end to end on real runc: a pull from a loopback registry on first use, output
//! and exit codes, `--rm` leaving nothing behind, and the process's environment, working
//! directory and user taken from the image config and overridden by flags.

mod tasks_common;

use std::path::Path;
use std::process::{Command, Output};

use berth_e2e::images::{self, Image, busybox};
use berth_e2e::registry::Registry;
use berth_e2e::require_tool;
use tasks_common::Host;

/// Not `tasks` (a cgroup v1 file name); containers land in cgroup /e2e-run/<id>.
const NS: &str = "e2e-run";

fn berth(host: &Host, args: &[&str]) -> Output {
    let mut all = vec!["-n", NS];
    all.extend_from_slice(args);
    host.stack.berth(&all)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ctr_lines(host: &Host, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--namespace", NS];
    all.extend_from_slice(args);
    let out = host.stack.ctr(&all);
    assert!(out.status.success(), "ctr {args:?}: {}", text(&out.stderr));
    text(&out.stdout).lines().map(str::to_string).collect()
}

/// busybox with a config of its own: user nobody, working dir /tmp, GREETING=hi.
fn configured_busybox(dir: &Path) -> Image {
    require_tool("umoci");
    let base = busybox();
    let layout = dir.join("configured");
    let copied = Command::new("cp").arg("-a").arg(base.layout()).arg(&layout).status().unwrap();
    assert!(copied.success());
    let image = format!("{}:{}", layout.display(), base.tag());
    let configured = Command::new("umoci")
        .args(["config", "--image", &image, "--no-history", "--config.user=nobody", "--config.workingdir=/tmp"])
        .args(["--config.env=PATH=/usr/sbin:/usr/bin:/sbin:/bin", "--config.env=GREETING=hi"])
        .output()
        .unwrap();
    assert!(configured.status.success(), "umoci config: {}", text(&configured.stderr));
    Image::load(&layout, base.tag())
}

#[tokio::test]
async fn run_pulls_on_first_use_prints_exits_with_the_code_and_rm_leaves_nothing() {
    let host = Host::start().await;
    let registry = Registry::start();
    let reference = images::push(&registry, busybox(), "busybox:run");
    assert!(ctr_lines(&host, &["images", "ls", "-q"]).is_empty());

    let out = berth(&host, &["run", "--rm", &reference, "r1", "echo", "hello from berth"]);
    assert!(out.status.success(), "berth run: {}{}\n{}", text(&out.stdout), text(&out.stderr), host.stack.logs());
    assert_eq!(text(&out.stdout), "hello from berth\n");
    assert_eq!(ctr_lines(&host, &["images", "ls", "-q"]), std::slice::from_ref(&reference), "pulled on first run");
    let manifests = registry.logs().matches("/manifests/").count();

    // The image is there now: no second pull, stderr and the exit code come through.
    let out = berth(&host, &["run", "--rm", &reference, "r2", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(registry.logs().matches("/manifests/").count(), manifests, "no second pull");

    // Stdin reaches the process and ends with ours.
    let mut child = Command::new(berth_e2e::binary("berth"))
        .arg("--address")
        .arg(&host.stack.socket)
        .args(["-n", NS, "run", "--rm", &reference, "r3", "sh", "-c", "read line; echo got $line"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"input\n").unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "got input\n");

    // --rm removed tasks, containers and their snapshots; the image's layers stay.
    assert!(ctr_lines(&host, &["tasks", "ls", "-q"]).is_empty());
    assert!(ctr_lines(&host, &["containers", "ls", "-q"]).is_empty());
    let snapshots = ctr_lines(&host, &["snapshots", "ls"]).join("\n");
    for id in ["r1", "r2", "r3"] {
        assert!(!snapshots.lines().any(|line| line.starts_with(&format!("{id} "))), "snapshot {id} left: {snapshots}");
    }

    // Without --rm the container stays (its task is gone), and its ID cannot be reused.
    let out = berth(&host, &["run", &reference, "kept", "true"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(ctr_lines(&host, &["containers", "ls", "-q"]), ["kept"]);
    assert!(ctr_lines(&host, &["tasks", "ls", "-q"]).is_empty());
    let out = berth(&host, &["run", &reference, "kept", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));
    let out = berth(&host, &["containers", "rm", "kept"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // containers rm takes the container's snapshot with it, as ctr's does.
    let snapshots = ctr_lines(&host, &["snapshots", "ls"]).join("\n");
    assert!(!snapshots.lines().any(|line| line.starts_with("kept ")), "snapshot kept left: {snapshots}");
}

#[tokio::test]
async fn env_cwd_and_user_come_from_the_image_config_and_flags() {
    let host = Host::start().await;
    let registry = Registry::start();
    let image = configured_busybox(host.stack.dir.path());
    let reference = images::push(&registry, &image, "configured:1");
    let script = "echo $GREETING; pwd; id -u; id -g";

    let out = berth(&host, &["run", "--rm", &reference, "c1", "sh", "-c", script]);
    assert!(out.status.success(), "{}{}", text(&out.stderr), host.stack.logs());
    assert_eq!(text(&out.stdout), "hi\n/tmp\n65534\n65534\n", "nobody's uid and primary gid from /etc/passwd");

    let out = berth(
        &host,
        &["run", "--rm", "--env", "GREETING=yo", "--cwd", "/", "-u", "1000:1001", &reference, "c2", "sh", "-c", script],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "yo\n/\n1000\n1001\n");

    let out = berth(&host, &["run", "--rm", "-u", "2147483648", &reference, "c3", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("out of range"), "{}", text(&out.stderr));
    let out = berth(&host, &["run", "--rm", "-u", "ghost", &reference, "c4", "true"]);
    assert!(text(&out.stderr).contains("no user \"ghost\""), "{}", text(&out.stderr));
    assert!(ctr_lines(&host, &["containers", "ls", "-q"]).is_empty(), "failed runs leave no container");

    // A bind mount, read-only.
    let shared = host.stack.dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("note"), "from the host\n").unwrap();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:ro", shared.display());
    let out = berth(
        &host,
        &["run", "--rm", "-u", "0", "--mount", &mount, &reference, "c5", "sh", "-c", "cat /data/note; touch /data/x"],
    );
    assert_eq!(text(&out.stdout), "from the host\n");
    assert_ne!(out.status.code(), Some(0), "read-only: {}", text(&out.stderr));
    assert!(!shared.join("x").exists());

    // The spec keeps containerd's defaults: no inheritable capabilities, explicit rlimits.
    let out = berth(&host, &["run", "--rm", &reference, "c6", "sh", "-c", "grep CapInh /proc/self/status; ulimit -n"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "CapInh:\t0000000000000000\n1024\n");
}

#[tokio::test]
async fn tty_runs_on_this_terminal_with_its_size_and_term() {
    let host = Host::start().await;
    let registry = Registry::start();
    let reference = images::push(&registry, busybox(), "busybox:tty");
    require_tool("script");
    // `script` gives berth a terminal of its own, 91 columns by 13 rows.
    let berth = berth_e2e::binary("berth");
    let command = format!(
        "stty cols 91 rows 13; {} --address {} -n {NS} run --rm -t {reference} t1 sh -c 'stty size; tty; echo $TERM; exit 3'",
        berth.display(),
        host.stack.socket.display()
    );
    let out = Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    let shown = text(&out.stdout).replace('\r', "");
    assert!(shown.contains("13 91\n/dev/pts/0\nxterm\n"), "{shown:?} {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{shown}");
    assert!(ctr_lines(&host, &["containers", "ls", "-q"]).is_empty());
}

#[tokio::test]
async fn run_unpacks_an_image_imported_without_unpacking() {
    let host = Host::start().await;
    let archive = host.stack.dir.path().join("busybox.tar");
    busybox().write_archive(images::ArchiveFormat::Oci, &archive, "docker.io/library/busybox:packed");
    ctr_lines(&host, &["images", "import", "--no-unpack", archive.to_str().unwrap()]);
    assert!(ctr_lines(&host, &["snapshots", "ls"]).len() <= 1, "nothing unpacked yet");

    let out = berth(&host, &["run", "--rm", "busybox:packed", "u1", "cat", "/etc/group"]);
    assert!(out.status.success(), "{}{}", text(&out.stderr), host.stack.logs());
    assert_eq!(text(&out.stdout), "root:x:0:\nnogroup:x:65534:\n", "the short name finds the image too");
    let chain = busybox().manifest().diff_ids[0].clone();
    let snapshots = ctr_lines(&host, &["snapshots", "ls"]).join("\n");
    assert!(snapshots.contains(&chain), "the layer's snapshot stays: {snapshots}");
    let config = busybox().manifest().config.digest.clone();
    let content = ctr_lines(&host, &["content", "ls"]).join("\n");
    let line = content.lines().find(|line| line.starts_with(&config)).unwrap();
    assert!(line.contains(&format!("containerd.io/gc.ref.snapshot.overlayfs={chain}")), "{line}");
    assert!(ctr_lines(&host, &["leases", "ls", "-q"]).is_empty(), "the run's lease is gone");
}
