//! Our `berth images` CLI against the real stack and a docker-registry on loopback:
//! `pull` (JSON lines, plain lines, plain HTTP by default for 127.0.0.1, errors that say what
//! to do), `ls`, `check`, `tag`, `inspect` and `rm`, cross-checked with containerd's `ctr`.

use berth_e2e::images::{self, busybox, layered, multi_platform};
use berth_e2e::outcome::{failed, ok, stderr, stdout};
use berth_e2e::registry::Registry;
use berth_e2e::{Stack, require_root, require_tool};
use serde_json::Value;

const SNAPSHOTTER: &str = "native";

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))).collect()
}

/// The last state reported per blob digest.
fn blob_states(events: &[Value]) -> std::collections::HashMap<String, String> {
    events
        .iter()
        .filter(|e| e["event"] == "blob")
        .map(|e| (e["digest"].as_str().unwrap().to_string(), e["state"].as_str().unwrap().to_string()))
        .collect()
}

fn line_of<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing.lines().find(|line| line.split_whitespace().next() == Some(name))
}

#[tokio::test]
async fn pull_shows_progress_as_json_lines_and_a_second_pull_fetches_nothing() {
    require_root();
    require_tool("ctr");
    let registry = Registry::start();
    let image = busybox();
    let reference = images::push(&registry, image, "busybox:1");
    let stack = Stack::start().await;

    // No --plain-http: 127.0.0.1 registries get plain HTTP by default.
    let text =
        ok("pull", stack.berth(&["images", "pull", "--snapshotter", SNAPSHOTTER, "--format", "json", &reference]));
    let events = json_lines(&text);
    assert_eq!(events[0]["event"], "resolved", "{text}");
    assert_eq!(events[0]["digest"], image.digest());
    let manifest = image.manifest();
    let states = blob_states(&events);
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        assert_eq!(states.get(&blob.digest).map(String::as_str), Some("done"), "{}: {text}", blob.digest);
    }
    let layer = &manifest.layers[0].digest;
    assert!(events.iter().any(|e| e["event"] == "blob" && e["digest"] == *layer && e["state"] == "waiting"), "{text}");
    assert!(events.iter().any(|e| e["event"] == "layer" && e["digest"] == *layer && e["state"] == "done"), "{text}");
    let last = events.last().unwrap();
    assert_eq!((last["event"].as_str(), last["name"].as_str()), (Some("image"), Some(reference.as_str())), "{text}");
    assert_eq!(last["digest"], image.digest());

    // ctr sees it; our ls and check agree.
    assert_eq!(ok("ctr ls", stack.ctr(&["images", "ls", "-q"])).trim(), reference);
    let listing = ok("ls", stack.berth(&["images", "ls"]));
    let row = line_of(&listing, &reference).unwrap_or_else(|| panic!("{listing}"));
    assert!(listing.starts_with("REF"), "{listing}");
    assert!(row.contains(image.digest()) && row.contains(images::MANIFEST_MEDIA_TYPE), "{row}");
    assert!(row.contains(&format!("linux/{}", images::host_arch())), "{row}");
    let listed: Value =
        serde_json::from_str(&ok("ls json", stack.berth(&["images", "ls", "--format", "json"]))).unwrap();
    let expected_size = image.root.size + manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
    assert_eq!(listed[0]["size"].as_u64(), Some(expected_size), "{listed}");
    assert_eq!(ok("ls -q", stack.berth(&["images", "ls", "-q"])).trim(), reference);

    let check = ok("check", stack.berth(&["images", "check", "--snapshotter", SNAPSHOTTER]));
    let row = line_of(&check, &reference).unwrap_or_else(|| panic!("{check}"));
    assert!(
        row.contains("complete (2/2)") && row.ends_with("true"),
        "{check}\n{}",
        stdout(&stack.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]))
    );
    let ctr_check = ok("ctr check", stack.ctr(&["images", "check"]));
    assert!(line_of(&ctr_check, &reference).unwrap().contains("complete (2/2)"), "{ctr_check}");

    // Again, in plain lines: everything is there already; stdout says what was pulled.
    let again = stack.berth(&["images", "pull", "--snapshotter", SNAPSHOTTER, &reference]);
    let out = ok("second pull", again.clone());
    assert_eq!(out.trim(), format!("{reference} {}", image.digest()));
    let lines = stderr(&again);
    assert!(lines.contains("already exists") && !lines.contains("downloading"), "{lines}");
    assert!(lines.contains("already unpacked"), "{lines}");

    // A missing layer makes the image incomplete, for us and for ctr.
    ok("ctr content rm", stack.ctr(&["content", "rm", layer]));
    let check = ok("check", stack.berth(&["images", "check", "--format", "json"]));
    let checked: Value = serde_json::from_str(&check).unwrap();
    assert_eq!(checked[0]["complete"], false, "{checked}");
    assert_eq!(checked[0]["missing"], serde_json::json!([layer]), "{checked}");
    let check = ok("check", stack.berth(&["images", "check"]));
    assert!(line_of(&check, &reference).unwrap().contains("incomplete (1/2)"), "{check}");
    assert_eq!(ok("check -q", stack.berth(&["images", "check", "-q"])).trim(), "");
}

#[tokio::test]
async fn tag_inspect_and_rm() {
    require_tool("ctr");
    let registry = Registry::start();
    let image = layered();
    let reference = images::push(&registry, image, "app/layered:v2");
    let stack = Stack::start().await;
    ok("pull", stack.berth(&["images", "pull", "--no-unpack", "--label", "team=a", &reference]));

    assert_eq!(ok("tag", stack.berth(&["images", "tag", &reference, "app:one", "app:two"])), "app:one\napp:two\n");
    let listing = ok("ctr ls", stack.ctr(&["images", "ls"]));
    for name in ["app:one", "app:two"] {
        let row = line_of(&listing, name).unwrap_or_else(|| panic!("{name}: {listing}"));
        assert!(row.contains(image.digest()) && row.contains("team=a"), "{row}");
    }
    let err = failed("tag onto an existing name", stack.berth(&["images", "tag", &reference, "app:one"]));
    assert!(err.contains("app:one already exists") && err.contains("--force"), "{err}");
    ok("ctr tag", stack.ctr(&["images", "tag", &reference, "other:1"]));
    ok("tag --force", stack.berth(&["images", "tag", "--force", "other:1", "app:one"]));

    let inspected: Value =
        serde_json::from_str(&ok("inspect", stack.berth(&["images", "inspect", &reference]))).unwrap();
    assert_eq!(inspected["record"]["name"], reference.as_str());
    assert_eq!(inspected["record"]["target"]["digest"], image.digest());
    assert_eq!(inspected["record"]["labels"]["team"], "a");
    let manifest = &inspected["manifests"][0];
    assert_eq!(manifest["document"]["layers"].as_array().unwrap().len(), 5, "{inspected}");
    assert_eq!(manifest["document"]["config"]["digest"], image.manifest().config.digest.as_str());
    let diff_ids: Vec<&str> =
        manifest["config"]["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(diff_ids, image.manifest().diff_ids);

    let listing = ok("ls filtered", stack.berth(&["images", "ls", "-q", "name~=^app:"]));
    assert_eq!(listing, "app:one\napp:two\n");
    let err = failed("bad filter", stack.berth(&["images", "ls", "name=="]));
    assert!(err.contains("filters look like"), "{err}");

    assert_eq!(
        ok("rm", stack.berth(&["images", "rm", "app:one", "app:two", "other:1"])),
        "app:one\napp:two\nother:1\n"
    );
    let err = failed("rm missing", stack.berth(&["images", "rm", "app:one"]));
    assert!(err.contains("image app:one not found in namespace default"), "{err}");
    let err = failed("inspect missing", stack.berth(&["images", "inspect", "nope:1"]));
    assert!(err.contains("berth -n default images ls"), "{err}");
    ok("rm --sync", stack.berth(&["images", "rm", "--sync", &reference]));
    assert_eq!(ok("ls", stack.berth(&["images", "ls", "-q"])), "");
    let blobs = ok("ctr content ls", stack.ctr(&["content", "ls", "-q"]));
    assert!(!blobs.contains(image.digest()), "rm --sync collected the blobs: {blobs}");
}

#[tokio::test]
async fn a_multi_platform_image_lists_its_platforms() {
    let registry = Registry::start();
    let image = multi_platform();
    let reference = images::push(&registry, image, "multi:1");
    let stack = Stack::start().await;
    ok("pull", stack.berth(&["images", "pull", "--no-unpack", "--all-platforms", &reference]));
    let listing = ok("ls", stack.berth(&["images", "ls"]));
    let row = line_of(&listing, &reference).unwrap();
    assert!(row.contains(images::INDEX_MEDIA_TYPE), "{row}");
    for manifest in &image.manifests {
        let platform = format!("{}/{}", manifest.platform.os, manifest.platform.architecture);
        assert!(row.contains(&platform), "{platform}: {row}");
    }
    let check = ok("check", stack.berth(&["images", "check"]));
    assert!(line_of(&check, &reference).unwrap().contains("complete (2/2)"), "{check}");
    let inspected: Value =
        serde_json::from_str(&ok("inspect", stack.berth(&["images", "inspect", &reference]))).unwrap();
    assert_eq!(inspected["indexes"][0]["descriptor"]["digest"], image.digest());
    assert_eq!(inspected["manifests"].as_array().unwrap().len(), image.manifests.len());
}

#[tokio::test]
async fn pull_errors_say_what_to_do() {
    let registry = Registry::start_with_auth();
    let image = busybox();
    let reference = images::push(&registry, image, "private/busybox:1");
    let stack = Stack::start().await;

    let err = failed("pull without credentials", stack.berth(&["images", "pull", "--no-unpack", &reference]));
    assert!(err.contains("--user USER:PASSWORD"), "{err}");
    let err = failed(
        "pull with wrong credentials",
        stack.berth(&["images", "pull", "--no-unpack", "--user", "docker:wrong", &reference]),
    );
    assert!(err.contains("check USER:PASSWORD"), "{err}");
    let (user, password) = registry.credentials().unwrap();
    let creds = format!("{user}:{password}");
    ok("pull with credentials", stack.berth(&["images", "pull", "--no-unpack", "--user", &creds, &reference]));

    let unknown = registry.reference("private/busybox:nope");
    let err = failed("unknown tag", stack.berth(&["images", "pull", "--no-unpack", "--user", &creds, &unknown]));
    assert!(err.contains("no such image or tag"), "{err}");

    let addr = registry.addr();
    drop(registry);
    let err = failed("registry down", stack.berth(&["images", "pull", "--no-unpack", &format!("{addr}/x:1")]));
    assert!(err.contains("is the registry running"), "{err}");
    let err = failed("bad user", stack.berth(&["images", "pull", "--user", "alone", "busybox"]));
    assert!(err.contains("USER:PASSWORD"), "{err}");
}

#[tokio::test]
async fn pull_on_a_terminal_draws_a_bar_per_blob() {
    let script = require_tool("script");
    let registry = Registry::start();
    let image = layered();
    let reference = images::push(&registry, image, "tty/layered:1");
    let stack = Stack::start().await;
    // `script` gives berth a pseudo-terminal, so it draws bars rather than lines.
    let command = format!(
        "{} --address {} images pull --no-unpack {reference}",
        berth_e2e::binary("berth").display(),
        stack.socket.display()
    );
    let output = std::process::Command::new(script)
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .output()
        .expect("run script");
    let screen = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{screen}");
    assert!(screen.contains(&format!("resolved {reference} to {}", image.digest())), "{screen}");
    for layer in &image.manifest().layers {
        let short = &layer.digest["sha256:".len().."sha256:".len() + 12];
        assert!(screen.contains(&format!("layer    {short}: done")), "{short}: {screen}");
    }
    assert!(screen.contains(&format!("{reference} {}", image.digest())), "{screen}");
}
