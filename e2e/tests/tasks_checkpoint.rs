//! Checkpoint and restore of tasks (CRIU through runc) via the gateway, ctr and `berth`.
//!
//! Where `criu check` passes, a task is checkpointed and restored and carries on where it
//! was; elsewhere that test prints a visible SKIPPED line with the reason. Where CRIU fails
//! (Debian's 3.17 on this kernel: vdso), a checkpoint fails with CRIU's log in its error, the
//! task runs on as it was (not left paused) and nothing half-made is registered. A Create from
//! a checkpoint that is not there is refused clearly. Around a stand-in for CRIU (a runc
//! wrapper), everything else runs for real on any host: checkpoint images made by `berth` and
//! by ctr (`tasks checkpoint`, `containers checkpoint`), restored by `berth run --checkpoint`
//! and `ctr containers restore --live --rw`, with the read-write layer and spec coming back.

mod tasks_common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth_e2e::content::in_namespace;
use berth_e2e::outcome;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    CheckpointTaskRequest, CreateTaskRequest, GetRequest, ListContentRequest, ListImagesRequest, ListPidsRequest,
    PauseTaskRequest, ResumeTaskRequest,
};
use containerd_client::types::Descriptor;
use nix::sys::signal::Signal;
use tasks_common::{Host, NS};
use tonic::Code;

const RUNNING: i32 = 2;
const PAUSED: i32 = 4;
const CRIU_MEDIA_TYPE: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
const CONFIG_MEDIA_TYPE: &str = "application/vnd.containerd.container.checkpoint.config.v1+proto";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// Ok when `criu check` passes here; else the last line it printed (the reason).
fn criu_check() -> Result<(), String> {
    let criu =
        ["/usr/sbin/criu", "/usr/local/sbin/criu", "/sbin/criu"].into_iter().map(PathBuf::from).find(|p| p.is_file());
    let criu = criu.expect("criu is not installed: run scripts/install-deps.sh (Debian package criu)");
    let out = Command::new(criu).arg("check").output().map_err(|e| format!("run criu: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Err(text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string())
}

/// containerd.runc.v1.CheckpointOptions with `exit` set, encoded by hand (field 1, varint 1).
fn exit_options() -> prost_types::Any {
    prost_types::Any { type_url: "containerd.runc.v1.CheckpointOptions".into(), value: vec![0x08, 0x01] }
}

fn checkpoint_request(id: &str) -> CheckpointTaskRequest {
    CheckpointTaskRequest { container_id: id.into(), ..Default::default() }
}

async fn pids(host: &Host, id: &str) -> Vec<u32> {
    let request = ListPidsRequest { container_id: id.into() };
    let listed = host.tasks().list_pids(in_namespace(request, NS)).await.unwrap().into_inner();
    let mut pids: Vec<u32> = listed.processes.iter().map(|p| p.pid).collect();
    pids.sort();
    pids
}

/// What the runtime itself says of the container: running, paused, ... (containerd's shim
/// keeps runc's state one namespace deeper).
fn runc_status(host: &Host, id: &str) -> String {
    let root = host.execution_root().join("runc").join(NS);
    for root in [root.clone(), root.join(NS)] {
        let out = Command::new("runc").arg("--root").arg(&root).args(["state", id]).output().unwrap();
        let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(status) = state["status"].as_str() {
            return status.to_string();
        }
    }
    "unknown".to_string()
}

async fn image_names(host: &Host) -> Vec<String> {
    let listed = ImagesClient::new(host.channel.clone())
        .list(in_namespace(ListImagesRequest { filters: vec![] }, NS))
        .await
        .unwrap()
        .into_inner();
    listed.images.into_iter().map(|i| i.name).collect()
}

async fn blob_count(host: &Host) -> usize {
    let mut listed = ContentClient::new(host.channel.clone())
        .list(in_namespace(ListContentRequest { filters: vec![] }, NS))
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(page) = listed.message().await.unwrap() {
        count += page.info.len();
    }
    count
}

/// The task is running as before: the shim, the runtime and the kernel all say so.
async fn assert_runs_on(host: &Host, id: &str, before: &[u32], after_what: &str) {
    assert_eq!(host.status(id, "").await.0, RUNNING, "{after_what}: task status");
    assert_eq!(runc_status(host, id), "running", "{after_what}: runc's view (not frozen)");
    assert_eq!(pids(host, id).await, before, "{after_what}: the same processes");
    for pid in before {
        assert!(berth_e2e::procs::alive(*pid), "{after_what}: pid {pid} alive");
    }
}

#[tokio::test]
async fn checkpoint_and_restore_round_trip() {
    if let Err(reason) = criu_check() {
        println!("SKIPPED checkpoint/restore: criu check fails on this host: {reason}");
        return;
    }
    let host = Host::start().await;
    let script = "i=0; while true; do i=$((i+1)); echo $i > /count; sleep 0.1; done";
    let pid = host.run_detached("counter", &["sh", "-c", script]).await;
    let count = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/root/count")).ok().and_then(|t| t.trim().parse::<u64>().ok())
    };
    assert!(berth_e2e::procs::wait_until(Duration::from_secs(10), || count(pid).is_some_and(|n| n >= 10)));

    // Leave running first: the task goes on, the descriptors are containerd's two.
    let response = host.tasks().checkpoint(in_namespace(checkpoint_request("counter"), NS)).await;
    let descriptors =
        response.unwrap_or_else(|e| panic!("checkpoint: {e}\n{}", host.stack.logs())).into_inner().descriptors;
    let types: Vec<&str> = descriptors.iter().map(|d| d.media_type.as_str()).collect();
    assert_eq!(types, [CRIU_MEDIA_TYPE, CONFIG_MEDIA_TYPE]);
    assert_eq!(host.status("counter", "").await.0, RUNNING);

    // Then with exit: the task stops, and a new one comes back from the dump.
    let request = CheckpointTaskRequest { options: Some(exit_options()), ..checkpoint_request("counter") };
    let descriptors = host.tasks().checkpoint(in_namespace(request, NS)).await.unwrap().into_inner().descriptors;
    host.wait("counter", "").await;
    let before = count(pid).unwrap_or_default();
    host.delete("counter").await.unwrap();
    let request = CreateTaskRequest {
        container_id: "counter".into(),
        checkpoint: Some(descriptors[0].clone()),
        ..Default::default()
    };
    host.tasks().create(in_namespace(request, NS)).await.unwrap_or_else(|e| panic!("restore: {e}"));
    let restored = host.start_task("counter", "").await;
    assert!(restored > 0);
    assert_eq!(host.status("counter", "").await.0, RUNNING);
    assert!(
        berth_e2e::procs::wait_until(Duration::from_secs(10), || count(restored).is_some_and(|n| n > before)),
        "the count goes on from {before}"
    );

    // berth's CLI makes a checkpoint image of it.
    let name = outcome::ok(
        "berth tasks checkpoint",
        host.stack.berth(&["-n", NS, "tasks", "checkpoint", "--name", "ck:1", "counter"]),
    );
    assert_eq!(name.trim(), "ck:1");
    assert!(image_names(&host).await.contains(&"ck:1".to_string()));
    host.kill("counter", "", Signal::SIGKILL, true).await.unwrap();
    host.delete_after_exit("counter").await;
}

#[tokio::test]
async fn failed_checkpoint_carries_criu_log_and_the_task_runs_on() {
    if criu_check().is_ok() {
        println!("SKIPPED failing checkpoint: criu check passes on this host (the round trip covers it)");
        return;
    }
    berth_e2e::require_tool("criu");
    let host = Host::start().await;
    host.run_detached("sleeper", &["sleep", "1000"]).await;
    let before = pids(&host, "sleeper").await;
    let (images, blobs) = (image_names(&host).await, blob_count(&host).await);

    // Through the gateway, as containerd's client calls it.
    let events = host.watch_events();
    let err = host.tasks().checkpoint(in_namespace(checkpoint_request("sleeper"), NS)).await.unwrap_err();
    let message = err.message();
    assert!(message.contains("checkpoint of task sleeper"), "{message}");
    assert!(message.contains("criu failed"), "runc's error: {message}");
    assert!(message.contains("CRIU's dump log") && message.contains("dump.log"), "the log is named: {message}");
    assert!(message.contains("Error (criu/"), "CRIU's own error lines: {message}");
    assert_runs_on(&host, "sleeper", &before, "after a failed checkpoint").await;
    assert_eq!(image_names(&host).await, images, "no checkpoint image");
    assert_eq!(blob_count(&host).await, blobs, "nothing written to content");
    let bundle = host.execution_root().join("tasks").join(NS).join("sleeper");
    for entry in std::fs::read_dir(&bundle).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint-") {
            assert!(!entry.path().join("image").exists(), "no dump left in {name}");
        }
    }
    let seen = tasks_common::events_seen(events);
    assert!(!seen.contains("/tasks/checkpointed"), "no checkpointed event: {seen}");

    // A task its caller paused stays paused.
    let pause = PauseTaskRequest { container_id: "sleeper".into() };
    host.tasks().pause(in_namespace(pause, NS)).await.unwrap();
    host.tasks().checkpoint(in_namespace(checkpoint_request("sleeper"), NS)).await.unwrap_err();
    assert_eq!(host.status("sleeper", "").await.0, PAUSED);
    assert_eq!(runc_status(&host, "sleeper"), "paused");
    let resume = ResumeTaskRequest { container_id: "sleeper".into() };
    host.tasks().resume(in_namespace(resume, NS)).await.unwrap();
    assert_runs_on(&host, "sleeper", &before, "resumed by its caller").await;

    // With exit asked for, a failed dump stops nothing either.
    let request = CheckpointTaskRequest { options: Some(exit_options()), ..checkpoint_request("sleeper") };
    host.tasks().checkpoint(in_namespace(request, NS)).await.unwrap_err();
    assert_runs_on(&host, "sleeper", &before, "after a failed checkpoint with exit").await;

    // containerd's ctr pauses, calls Checkpoint and resumes.
    let stderr = outcome::failed("ctr tasks checkpoint", host.ctr(&["tasks", "checkpoint", "sleeper"]));
    assert!(stderr.contains("Error (criu/"), "ctr shows CRIU's log: {stderr}");
    assert_runs_on(&host, "sleeper", &before, "after ctr's checkpoint").await;

    // berth's CLI likewise, and leaves no checkpoint image behind.
    let out = host.stack.berth(&["-n", NS, "tasks", "checkpoint", "--name", "never:1", "sleeper"]);
    let stderr = outcome::failed("berth tasks checkpoint", out);
    assert!(stderr.contains("CRIU's dump log") && stderr.contains("Error (criu/"), "{stderr}");
    assert_runs_on(&host, "sleeper", &before, "after berth's checkpoint").await;
    assert_eq!(image_names(&host).await, images, "no checkpoint image from the CLI");

    host.kill("sleeper", "", Signal::SIGKILL, true).await.unwrap();
    host.delete_after_exit("sleeper").await;

    // containerd's own shim as the runtime: the same.
    const SHIM: &str = "/usr/bin/containerd-shim-runc-v2";
    assert!(
        std::path::Path::new(SHIM).exists(),
        "{SHIM} is not installed: run scripts/install-deps.sh (Debian package containerd)"
    );
    host.container("foreign", &["sleep", "1000"]).await;
    let request = CreateTaskRequest { container_id: "foreign".into(), runtime_path: SHIM.into(), ..Default::default() };
    host.tasks().create(in_namespace(request, NS)).await.unwrap_or_else(|e| panic!("create on {SHIM}: {e}"));
    host.start_task("foreign", "").await;
    let before = pids(&host, "foreign").await;
    let err = host.tasks().checkpoint(in_namespace(checkpoint_request("foreign"), NS)).await.unwrap_err();
    assert!(err.message().contains("Error (criu/"), "CRIU's log through containerd's shim: {}", err.message());
    assert_runs_on(&host, "foreign", &before, "after a failed checkpoint on containerd's shim").await;
    host.kill("foreign", "", Signal::SIGKILL, true).await.unwrap();
    host.delete_after_exit("foreign").await;
}

#[tokio::test]
async fn create_from_a_checkpoint_that_is_not_there_is_refused() {
    let host = Host::start().await;
    host.container("ghost", &["sleep", "1000"]).await;
    let missing = format!("sha256:{}", "0".repeat(64));
    let create = |checkpoint: Descriptor| CreateTaskRequest {
        container_id: "ghost".into(),
        checkpoint: Some(checkpoint),
        ..Default::default()
    };
    let descriptor = |media_type: &str, digest: &str| Descriptor {
        media_type: media_type.into(),
        digest: digest.into(),
        size: 10,
        annotations: Default::default(),
    };
    let cases = [
        (descriptor(CRIU_MEDIA_TYPE, &missing), Code::NotFound, "not found in content"),
        (descriptor(INDEX_MEDIA_TYPE, &missing), Code::NotFound, "not found in content"),
        (descriptor("text/plain", &missing), Code::InvalidArgument, "is not a checkpoint"),
        (descriptor("", &missing), Code::InvalidArgument, "no media type"),
        (descriptor(CRIU_MEDIA_TYPE, "sha256:nope"), Code::InvalidArgument, "is not a sha256 digest"),
    ];
    for (checkpoint, code, text) in cases {
        let what = format!("{checkpoint:?}");
        let err = host.tasks().create(in_namespace(create(checkpoint), NS)).await.unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(err.message().contains(text), "{what}: {}", err.message());
        let get = GetRequest { container_id: "ghost".into(), exec_id: String::new() };
        let err = host.tasks().get(in_namespace(get, NS)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{what}: no task left behind");
    }
    let bundle = host.execution_root().join("tasks").join(NS).join("ghost");
    assert!(!bundle.exists(), "no bundle left behind");
    // The container is unharmed: its task runs.
    host.create("ghost", &host.fifos("ghost")).await;
    host.start_task("ghost", "").await;
    assert_eq!(host.status("ghost", "").await.0, RUNNING);
    host.kill("ghost", "", Signal::SIGKILL, true).await.unwrap();
    host.delete_after_exit("ghost").await;

    // berth run --checkpoint with a name that is no checkpoint says so before doing anything.
    let out = host.stack.berth(&["-n", NS, "run", "--checkpoint", "no-such-checkpoint", "busybox:e2e", "ghost2"]);
    let stderr = outcome::failed("berth run --checkpoint", out);
    assert!(stderr.contains("checkpoint no-such-checkpoint not found"), "{stderr}");
}

/// A tar of `files` (name, content) made by tar(1), gzipped when asked.
fn tar_of(dir: &std::path::Path, files: &[(&str, &[u8])], gzip: bool) -> Vec<u8> {
    std::fs::create_dir_all(dir).unwrap();
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    let out = Command::new("tar")
        .arg(if gzip { "-czf" } else { "-cf" })
        .arg("-")
        .arg("-C")
        .arg(dir)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[tokio::test]
async fn restore_unpacks_the_checkpoint_applies_its_layer_and_reaches_criu() {
    let host = Host::start().await;
    host.container("phoenix", &["sleep", "1000"]).await;
    let mut content = ContentClient::new(host.channel.clone());
    let scratch = host.stack.dir.path().join("checkpoint-parts");
    let criu =
        tar_of(&scratch.join("image"), &[("core-1.img", b"not really a dump"), ("descriptors.json", b"[]")], false);
    let criu_digest = berth_e2e::content::ingest(&mut content, NS, "phoenix-criu", &criu).await;
    let layer = tar_of(&scratch.join("rw"), &[("restored.txt", b"from the checkpoint\n")], true);
    let layer_digest = berth_e2e::content::ingest(&mut content, NS, "phoenix-rw", &layer).await;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {"mediaType": CRIU_MEDIA_TYPE, "digest": criu_digest, "size": criu.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()},
        ],
    });
    let index = serde_json::to_vec(&index).unwrap();
    let index_digest = berth_e2e::content::ingest(&mut content, NS, "phoenix-index", &index).await;

    let checkpoint = Descriptor {
        media_type: INDEX_MEDIA_TYPE.into(),
        digest: index_digest,
        size: index.len() as i64,
        annotations: Default::default(),
    };
    let request =
        CreateTaskRequest { container_id: "phoenix".into(), checkpoint: Some(checkpoint), ..Default::default() };
    let created = host.tasks().create(in_namespace(request, NS)).await;
    assert_eq!(
        created.unwrap_or_else(|e| panic!("create from the checkpoint: {e}")).into_inner().pid,
        0,
        "no process before Start"
    );
    assert_eq!(host.status("phoenix", "").await.0, 1, "created");
    let bundle = host.execution_root().join("tasks").join(NS).join("phoenix");
    assert_eq!(
        std::fs::read(bundle.join("checkpoint/core-1.img")).unwrap(),
        b"not really a dump",
        "the CRIU image unpacked"
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/restored.txt")).unwrap(),
        "from the checkpoint\n",
        "the read-write layer applied to the rootfs"
    );

    // Start is the restore; this dump is no dump (and CRIU may not work here at all).
    let start =
        containerd_client::services::v1::StartRequest { container_id: "phoenix".into(), exec_id: String::new() };
    let err = host.tasks().start(in_namespace(start, NS)).await.unwrap_err();
    assert!(err.message().contains("runc restore"), "{}", err.message());
    assert!(err.message().contains("CRIU's restore log"), "{}", err.message());
    assert_eq!(host.status("phoenix", "").await.0, 1, "still created after a failed restore");
    host.delete("phoenix").await.unwrap();
    assert!(!bundle.exists(), "bundle removed");
}

/// runc, except that checkpoint and restore pretend CRIU did its part: checkpoint leaves a
/// stand-in image, and restore (which insists on finding it) starts the bundle afresh. With
/// it, everything around CRIU runs for real where CRIU itself cannot.
const STAND_IN_RUNC: &str = r#"#!/bin/sh
root=""; cmd=""; image=""; bundle=""; pidfile=""; console=""; leave=""; id=""; prev=""
for arg in "$@"; do
  case "$prev" in
    --root) root=$arg ;;
    --image-path) image=$arg ;;
    --bundle) bundle=$arg ;;
    --pid-file) pidfile=$arg ;;
    --console-socket) console=$arg ;;
  esac
  case "$arg" in
    checkpoint|restore) [ -z "$cmd" ] && cmd=$arg ;;
    --leave-running) leave=1 ;;
  esac
  prev=$arg
  id=$arg
done
case "$cmd" in
  checkpoint)
    mkdir -p "$image" && echo stand-in > "$image/core-1.img" || exit 1
    [ -n "$leave" ] || exec runc --root "$root" kill "$id" KILL
    exit 0 ;;
  restore)
    [ "$(cat "$image/core-1.img")" = stand-in ] || { echo "no stand-in image in $image" >&2; exit 1; }
    exec runc --root "$root" run --detach --bundle "$bundle" --pid-file "$pidfile" ${console:+--console-socket "$console"} "$id" ;;
  *) exec runc "$@" ;;
esac
"#;

#[tokio::test]
async fn checkpoint_image_round_trip_around_a_stand_in_criu() {
    let host = Host::start().await;
    let fake = host.stack.dir.path().join("stand-in-runc");
    std::fs::write(&fake, STAND_IN_RUNC).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fake = fake.to_str().unwrap();
    let image = "docker.io/library/busybox:checkpoint";
    let archive = host.stack.dir.path().join("busybox.tar");
    berth_e2e::images::busybox().write_archive(berth_e2e::images::ArchiveFormat::Oci, &archive, image);
    outcome::ok("ctr images import", host.ctr(&["images", "import", archive.to_str().unwrap()]));
    let berth = |args: &[&str]| {
        let mut all = vec!["-n", NS];
        all.extend_from_slice(args);
        host.stack.berth(&all)
    };

    outcome::ok("berth run", berth(&["run", "-d", "--runc-binary", fake, image, "mover", "sleep", "1000"]));
    assert_eq!(host.status("mover", "").await.0, RUNNING);
    let init = pids(&host, "mover").await[0];
    std::fs::write(format!("/proc/{init}/root/state.txt"), "written before the checkpoint\n").unwrap();

    let events = host.watch_events();
    let printed = outcome::ok("berth tasks checkpoint", berth(&["tasks", "checkpoint", "--name", "ck:1", "mover"]));
    assert_eq!(printed, "ck:1\n");
    assert_runs_on(&host, "mover", &[init], "after a checkpoint that left it running").await;
    let seen = tasks_common::events_seen(events);
    assert!(seen.contains("/tasks/checkpointed"), "{seen}");

    // The checkpoint image: containerd's label, an index of the CRIU image, the spec, the image
    // the container ran and its read-write layer.
    let found = ImagesClient::new(host.channel.clone())
        .get(in_namespace(containerd_client::services::v1::GetImageRequest { name: "ck:1".into() }, NS))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(found.labels.get("containerd.io/checkpoint").map(String::as_str), Some("true"));
    let target = found.target.unwrap();
    assert_eq!(target.media_type, INDEX_MEDIA_TYPE);
    let mut content = ContentClient::new(host.channel.clone());
    let index = berth_e2e::content::read_all(&mut content, NS, &target.digest).await.unwrap();
    let index: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let types: Vec<&str> =
        index["manifests"].as_array().unwrap().iter().map(|m| m["mediaType"].as_str().unwrap()).collect();
    assert_eq!(types[..2], [CRIU_MEDIA_TYPE, CONFIG_MEDIA_TYPE], "{index}");
    assert!(types[2].contains("manifest") || types[2].contains("index"), "the image's target: {index}");
    assert!(types[3].starts_with("application/vnd.oci.image.layer.v1.tar"), "the read-write layer: {index}");
    assert_eq!(index["annotations"]["image.name"], image);

    // containerd's ctr around the same Checkpoint: its own index and image record...
    outcome::ok("ctr tasks checkpoint", host.ctr(&["tasks", "checkpoint", "mover"]));
    assert_runs_on(&host, "mover", &[init], "after ctr's checkpoint").await;
    let names = image_names(&host).await;
    assert!(names.iter().any(|n| n.starts_with("containerd.io/checkpoint/mover:")), "{names:?}");
    // ... and its container checkpoint, restored as a new container with ctr.
    let ctr_checkpoint = ["containers", "checkpoint", "--task", "--image", "--rw", "mover", "ctr-ck:1"];
    outcome::ok("ctr containers checkpoint", host.ctr(&ctr_checkpoint));
    assert_runs_on(&host, "mover", &[init], "after ctr's container checkpoint").await;
    outcome::ok("berth tasks rm", berth(&["tasks", "rm", "-f", "mover"]));
    outcome::ok("ctr containers restore", host.ctr(&["containers", "restore", "--live", "--rw", "mover3", "ctr-ck:1"]));
    assert_eq!(host.status("mover3", "").await.0, RUNNING);
    let restored = pids(&host, "mover3").await[0];
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{restored}/root/state.txt")).unwrap(),
        "written before the checkpoint\n",
        "ctr's restore of the read-write layer"
    );
    host.kill("mover3", "", Signal::SIGKILL, true).await.unwrap();
    host.delete_after_exit("mover3").await;

    // Restored as another container by berth: the spec and the file written come back.
    let restore = ["run", "-d", "--checkpoint", "ck:1", "--runc-binary", fake, image, "mover2"];
    assert_eq!(outcome::ok("berth run --checkpoint", berth(&restore)), "mover2\n");
    assert_eq!(host.status("mover2", "").await.0, RUNNING);
    let restored = pids(&host, "mover2").await[0];
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{restored}/root/state.txt")).unwrap(),
        "written before the checkpoint\n"
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{restored}/cmdline")).unwrap();
    assert_eq!(cmdline, "sleep\u{0}1000\u{0}", "the checkpoint's spec, not the image's");

    // With exit, the task stops once checkpointed.
    outcome::ok("berth tasks checkpoint --exit", berth(&["tasks", "checkpoint", "--exit", "--name", "ck:2", "mover2"]));
    assert_eq!(host.wait("mover2", "").await, 137);
    host.delete("mover2").await.unwrap();
}
