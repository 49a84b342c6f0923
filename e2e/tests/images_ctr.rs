//! containerd's `ctr images` against berth-image through the gateway: records made by
//! `ctr images import --no-unpack`, then ls, check, tag, label, rm — with the blobs gone after
//! `rm --sync` because berth-image asks the metadata service's collector to run.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_e2e::images::{ArchiveFormat, busybox, multi_platform};
use berth_e2e::{Stack, require_tool};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "ctr failed: {}\nstdout: {}",
        String::from_utf8_lossy(&output.stderr),
        stdout(&output)
    );
    stdout(&output)
}

fn failed(output: std::process::Output) -> String {
    assert!(!output.status.success(), "ctr should have failed; stdout: {}", stdout(&output));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The line of `ctr images ls` (or check) output for `name`.
fn line_of<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing.lines().find(|l| l.split_whitespace().next() == Some(name))
}

const NAME: &str = "berth.test/busybox:1";

/// Imports busybox as `berth.test/busybox:1` without unpacking (only content and images).
fn import(stack: &Stack, namespace: &str, format: ArchiveFormat) {
    let archive = stack.dir.path().join(format!("busybox-{format:?}.tar"));
    busybox().write_archive(format, &archive, NAME);
    let archive = archive.to_str().unwrap();
    let args = ["-n", namespace, "images", "import", "--no-unpack", "--base-name", "berth.test/busybox", archive];
    ok(stack.ctr(&args));
}

#[tokio::test]
async fn ctr_images_import_ls_check_tag_label_rm() {
    require_tool("ctr");
    let stack = Stack::start().await;
    import(&stack, "default", ArchiveFormat::Oci);
    let image = busybox();

    let listing = ok(stack.ctr(&["images", "ls"]));
    let line = line_of(&listing, NAME).unwrap_or_else(|| panic!("{NAME} not listed:\n{listing}"));
    assert!(line.contains(image.digest()), "target digest: {line}");
    assert!(line.contains("application/vnd.oci.image.manifest.v1+json"), "media type: {line}");
    assert!(line.contains(&format!("linux/{}", berth_e2e::images::host_arch())), "platform: {line}");
    assert_eq!(ok(stack.ctr(&["images", "ls", "-q"])).trim(), NAME);

    // Every blob the image needs is there.
    let check = ok(stack.ctr(&["images", "check"]));
    let line = line_of(&check, NAME).unwrap_or_else(|| panic!("{NAME} not checked:\n{check}"));
    assert!(line.contains("complete"), "{line}");

    // tag: a second record with the same target; the source must exist.
    ok(stack.ctr(&["images", "tag", NAME, "berth.test/busybox:copy"]));
    let listing = ok(stack.ctr(&["images", "ls"]));
    let copy = line_of(&listing, "berth.test/busybox:copy").unwrap_or_else(|| panic!("copy not listed:\n{listing}"));
    assert!(copy.contains(image.digest()), "{copy}");
    let err = failed(stack.ctr(&["images", "tag", NAME, "berth.test/busybox:copy"]));
    assert!(err.contains("already exists"), "{err}");
    ok(stack.ctr(&["images", "tag", "--force", NAME, "berth.test/busybox:copy"]));
    let err = failed(stack.ctr(&["images", "tag", "berth.test/missing:1", "berth.test/busybox:x"]));
    assert!(err.contains("not found"), "{err}");

    // label: set, filter by it, clear.
    ok(stack.ctr(&["images", "label", "berth.test/busybox:copy", "tier=gold", "team=a"]));
    let listing = ok(stack.ctr(&["images", "ls"]));
    let copy = line_of(&listing, "berth.test/busybox:copy").unwrap();
    assert!(copy.contains("tier=gold") && copy.contains("team=a"), "{copy}");
    let filtered = ok(stack.ctr(&["images", "ls", "-q", "labels.tier==gold"]));
    assert_eq!(filtered.trim(), "berth.test/busybox:copy");
    let filtered = ok(stack.ctr(&["images", "ls", "-q", &format!("target.digest=={}", image.digest())]));
    assert_eq!(filtered.lines().count(), 2, "{filtered}");
    ok(stack.ctr(&["images", "label", "berth.test/busybox:copy", "tier="]));
    let listing = ok(stack.ctr(&["images", "ls"]));
    let copy = line_of(&listing, "berth.test/busybox:copy").unwrap();
    assert!(!copy.contains("tier") && copy.contains("team=a"), "{copy}");

    // rm: the copy goes, the blobs stay (the original still holds them).
    ok(stack.ctr(&["images", "rm", "berth.test/busybox:copy"]));
    // ctr warns about a missing image and still exits 0, as with containerd.
    let again = stack.ctr(&["images", "rm", "berth.test/busybox:copy"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("image not found"), "{again:?}");
    let check = ok(stack.ctr(&["images", "check"]));
    assert!(line_of(&check, NAME).is_some_and(|l| l.contains("complete")), "{check}");

    // rm --sync of the last image: when it returns, its blobs are gone.
    ok(stack.ctr(&["images", "rm", "--sync", NAME]));
    assert_eq!(ok(stack.ctr(&["images", "ls", "-q"])).trim(), "");
    let blobs = ok(stack.ctr(&["content", "ls", "-q"]));
    for digest in image.all_digests() {
        assert!(!blobs.contains(&digest), "{digest} should be collected after rm --sync; content:\n{blobs}");
    }
}

#[tokio::test]
async fn images_live_in_their_namespace_and_make_it_exist() {
    require_tool("ctr");
    let stack = Stack::start().await;
    import(&stack, "team-a", ArchiveFormat::Docker);
    let listing = ok(stack.ctr(&["-n", "team-a", "images", "ls", "-q"]));
    assert!(listing.lines().any(|l| l.contains("busybox")), "{listing}");
    assert_eq!(ok(stack.ctr(&["images", "ls", "-q"])).trim(), "", "default sees nothing");
    let namespaces = ok(stack.ctr(&["namespaces", "ls", "-q"]));
    assert!(namespaces.lines().any(|l| l == "team-a"), "{namespaces}");

    // A namespace holding images cannot be removed.
    let err = failed(stack.ctr(&["namespaces", "rm", "team-a"]));
    assert!(err.contains("images"), "{err}");
    let check = ok(stack.ctr(&["-n", "team-a", "images", "check"]));
    assert!(check.lines().skip(1).all(|l| l.contains("complete")), "{check}");
}

#[tokio::test]
async fn a_multi_platform_index_is_one_record() {
    require_tool("ctr");
    let stack = Stack::start().await;
    let archive = stack.dir.path().join("multi.tar");
    let image = multi_platform();
    image.write_archive(ArchiveFormat::Oci, &archive, "berth.test/multi:1");
    let archive = archive.to_str().unwrap();
    let args = ["images", "import", "--no-unpack", "--all-platforms", "--base-name", "berth.test/multi", archive];
    ok(stack.ctr(&args));
    let listing = ok(stack.ctr(&["images", "ls"]));
    let line = line_of(&listing, "berth.test/multi:1").unwrap_or_else(|| panic!("not listed:\n{listing}"));
    assert!(line.contains(image.digest()) && line.contains("index"), "{line}");
    assert!(line.contains("linux/amd64") && line.contains("linux/arm64"), "both platforms: {line}");
}

#[tokio::test]
async fn ctr_events_show_image_changes() {
    let ctr = require_tool("ctr");
    let stack = Stack::start().await;
    let mut events = Command::new(ctr)
        .arg("--address")
        .arg(&stack.socket)
        .arg("events")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ctr events");
    let (lines, received) = std::sync::mpsc::channel();
    let reader = BufReader::new(events.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    import(&stack, "default", ArchiveFormat::Oci);
    ok(stack.ctr(&["images", "label", NAME, "k=v"]));
    ok(stack.ctr(&["images", "rm", NAME]));

    let wanted = ["/images/create", "/images/update", "/images/delete"];
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < wanted.len() && std::time::Instant::now() < deadline {
        if let Ok(line) = received.recv_timeout(Duration::from_millis(200))
            && let Some(topic) = wanted.iter().find(|t| line.contains(*t))
        {
            assert!(line.contains(NAME), "the event names the image: {line}");
            seen.push(*topic);
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(seen, wanted, "an event for each change, in order");
}

#[tokio::test]
async fn ctr_images_pull_gives_the_same_image_as_berths_own_pull() {
    use berth_api::berth::image::v1::PullRequest;
    use berth_api::berth::image::v1::transfer_client::TransferClient;
    use berth_e2e::content::in_namespace;

    require_tool("ctr");
    berth_e2e::require_root();
    let registry = berth_e2e::registry::Registry::start();
    let image = berth_e2e::images::layered();
    let reference = berth_e2e::images::push(&registry, image, "app/layered:1");
    let stack = Stack::start().await;

    // containerd's client-side pull: content, images, leases, snapshots and diff through the gateway.
    ok(stack.ctr(&["-n", "client", "images", "pull", "--plain-http", &reference]));
    // berth's own pull, in another namespace.
    let mut transfer = TransferClient::new(stack.channel());
    let request = PullRequest { reference: reference.clone(), plain_http: true, unpack: true, ..Default::default() };
    let mut stream = transfer.pull(in_namespace(request, "server")).await.expect("pull").into_inner();
    while stream.message().await.expect("pull progresses").is_some() {}

    let client = ok(stack.ctr(&["-n", "client", "images", "ls"]));
    let server = ok(stack.ctr(&["-n", "server", "images", "ls"]));
    let client = line_of(&client, &reference).unwrap_or_else(|| panic!("{client}")).to_string();
    let server = line_of(&server, &reference).unwrap_or_else(|| panic!("{server}")).to_string();
    assert_eq!(client, server, "same name, type, digest, size and platforms");
    assert!(client.contains(image.digest()), "{client}");
    for namespace in ["client", "server"] {
        let check = ok(stack.ctr(&["-n", namespace, "images", "check"]));
        let line = line_of(&check, &reference).unwrap_or_else(|| panic!("{check}"));
        assert!(line.contains("complete") && line.trim_end().ends_with("true"), "{namespace}: {line}");
    }
    // Same blobs with the same labels.
    let client_blobs = ok(stack.ctr(&["-n", "client", "content", "ls"]));
    let server_blobs = ok(stack.ctr(&["-n", "server", "content", "ls"]));
    let labels = |listing: &str| -> Vec<String> {
        let mut lines: Vec<String> = listing
            .lines()
            .skip(1)
            .map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                let mut labels: Vec<&str> = fields.last().unwrap_or(&"").split(',').collect();
                labels.sort_unstable();
                format!("{} {}", fields[0], labels.join(","))
            })
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(labels(&client_blobs), labels(&server_blobs), "blob labels as containerd sets them");
}
