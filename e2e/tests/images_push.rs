//! `berth images push`, run by berth-image, against docker-registry on loopback: blobs the
//! registry has in another repository are mounted, not uploaded; a new registry gets every
//! blob (big ones in chunks) and the manifest last, and pulling it back gives the same image.

use std::process::Output;

use berth_e2e::Stack;
use berth_e2e::images::{self, busybox, large, multi_platform};
use berth_e2e::registry::{MANIFEST_TYPES, Registry};

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn ok(what: &str, output: Output) -> String {
    assert!(output.status.success(), "{what} failed ({}): {}", output.status, stderr(&output));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn failed(what: &str, output: Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{what} should have failed");
    stderr(&output)
}

/// The digest the registry serves for `name:reference`.
fn remote_digest(registry: &Registry, name: &str, reference: &str) -> String {
    let response = registry.get(&format!("/v2/{name}/manifests/{reference}"), MANIFEST_TYPES);
    assert_eq!(response.status, 200, "{name}:{reference}: {}", response.text());
    berth_e2e::digest_of(&response.body)
}

#[tokio::test]
async fn push_mounts_what_the_registry_has_and_uploads_the_rest() {
    let source = Registry::start();
    let image = busybox();
    let reference = images::push(&source, image, "busybox:1");
    let stack = Stack::start().await;
    ok("pull", stack.berth(&["images", "pull", "--no-unpack", &reference]));

    // Same registry, another repository: the blobs are mounted from `busybox`.
    let copy = source.reference("copy/busybox:1");
    let out = ok("push to the same registry", stack.berth(&["images", "push", &reference, &copy]));
    assert_eq!(out.trim(), format!("{copy} {}", image.digest()));
    assert_eq!(remote_digest(&source, "copy/busybox", "1"), image.digest());
    let logs = source.logs();
    assert!(logs.contains("mount=") && logs.contains("from=busybox"), "no cross-repository mount:\n{logs}");
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("PUT /v2/copy/busybox/blobs/uploads") || l.contains("PATCH /v2/copy/busybox/blobs")),
        "blobs were uploaded rather than mounted"
    );

    // A new registry: everything uploaded; pulled back into another namespace, the same image.
    let target = Registry::start();
    let elsewhere = target.reference("team/busybox:v1");
    ok("push", stack.berth(&["images", "push", "--format", "json", &reference, &elsewhere]));
    assert_eq!(remote_digest(&target, "team/busybox", "v1"), image.digest());
    let pulled = ok("pull back", stack.berth(&["-n", "back", "images", "pull", "--no-unpack", &elsewhere]));
    assert_eq!(pulled.trim(), format!("{elsewhere} {}", image.digest()));
    // Again: the registry has every blob.
    let again = ok("push again", stack.berth(&["images", "push", "--format", "json", &reference, &elsewhere]));
    let mut last = std::collections::HashMap::new();
    for line in again.lines() {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        if event["event"] == "blob" && event["kind"] != "manifest" {
            last.insert(event["digest"].as_str().unwrap().to_string(), event["state"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(last.len(), 2, "config and layer: {again}");
    assert!(last.values().all(|state| state == "skipped"), "{again}");
}

#[tokio::test]
async fn big_blobs_go_in_chunks_and_an_index_goes_whole() {
    let source = Registry::start();
    let big = large(20, 1);
    let multi = multi_platform();
    let big_ref = images::push(&source, big, "big:1");
    let multi_ref = images::push(&source, multi, "multi:1");
    let stack = Stack::start().await;
    ok("pull big", stack.berth(&["images", "pull", "--no-unpack", &big_ref]));
    ok("pull multi", stack.berth(&["images", "pull", "--no-unpack", "--all-platforms", &multi_ref]));

    let target = Registry::start();
    ok("push big", stack.berth(&["images", "push", &big_ref, &target.reference("big:1")]));
    assert_eq!(remote_digest(&target, "big", "1"), big.digest());
    assert!(target.logs().contains("PATCH /v2/big/blobs/uploads/"), "a 20 MiB layer goes in chunks");
    ok("push multi", stack.berth(&["images", "push", &multi_ref, &target.reference("multi:1")]));
    assert_eq!(remote_digest(&target, "multi", "1"), multi.digest());
    for manifest in &multi.manifests {
        assert_eq!(remote_digest(&target, "multi", &manifest.descriptor.digest), manifest.descriptor.digest);
    }

    // Only this host's platform pulled: the index cannot be pushed whole, and berth says why.
    ok("pull one platform", stack.berth(&["-n", "one", "images", "pull", "--no-unpack", &multi_ref]));
    let err = failed(
        "push a partial index",
        stack.berth(&["-n", "one", "images", "push", &multi_ref, &target.reference("partial:1")]),
    );
    assert!(err.contains("--all-platforms"), "{err}");
    let err = failed("push a missing image", stack.berth(&["images", "push", "nope:1", &target.reference("x:1")]));
    assert!(err.contains("images ls"), "{err}");
}
