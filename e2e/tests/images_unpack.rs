//! Pulls that unpack: berth-image applies each layer through berth-snapshot's Diff.Apply onto
//! snapshots named by chain ID, labels blobs as containerd's unpacker does, skips chains that
//! exist, and the garbage collector takes the snapshots with the image.

use std::collections::HashMap;

use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_api::berth::image::v1::{LayerState, PullProgress, PullRequest, pull_progress};
use berth_api::containerd::services::snapshots::v1::ViewSnapshotRequest;
use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use berth_e2e::content::{in_namespace, info};
use berth_e2e::images::{self, Image, LAYERED_ABSENT, LAYERED_PRESENT, busybox, layered};
use berth_e2e::registry::Registry;
use berth_e2e::{Stack, require_root, require_tool};
use containerd_client::services::v1::content_client::ContentClient;

const SNAPSHOTTER: &str = "native";

fn request(reference: &str) -> PullRequest {
    PullRequest {
        reference: reference.to_string(),
        plain_http: true,
        unpack: true,
        snapshotter: SNAPSHOTTER.to_string(),
        ..Default::default()
    }
}

async fn pull(stack: &Stack, request: PullRequest) -> Vec<PullProgress> {
    let mut client = TransferClient::new(stack.channel());
    let mut stream = client.pull(in_namespace(request, "default")).await.expect("pull starts").into_inner();
    let mut events = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => break,
            Err(status) => panic!("pull failed: {status:?}\nlogs:\n{}", stack.logs()),
        }
    }
    assert!(events.iter().any(|e| matches!(e.event, Some(pull_progress::Event::Image(_)))), "no image event");
    events
}

/// The last state of each layer, by chain ID.
fn layer_states(events: &[PullProgress]) -> HashMap<String, LayerState> {
    let mut states = HashMap::new();
    for event in events {
        if let Some(pull_progress::Event::Layer(layer)) = &event.event {
            states.insert(layer.chain_id.clone(), layer.state());
        }
    }
    states
}

fn chain_ids(image: &Image) -> Vec<String> {
    let mut chain: Vec<String> = Vec::new();
    for diff_id in &image.manifest().diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => berth_e2e::digest_of(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

fn ok(output: std::process::Output) -> String {
    assert!(output.status.success(), "ctr failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A read-only view of the committed `chain_id`, as a directory (the native snapshotter's
/// mounts are bind mounts of plain directories).
async fn view(stack: &Stack, chain_id: &str, key: &str) -> std::path::PathBuf {
    let mut snapshots = SnapshotsClient::new(stack.channel());
    let view = ViewSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: key.into(),
        parent: chain_id.into(),
        labels: HashMap::new(),
    };
    let mounts = snapshots.view(in_namespace(view, "default")).await.expect("view").into_inner().mounts;
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert_eq!(mounts[0].r#type, "bind", "{mounts:?}");
    std::path::PathBuf::from(&mounts[0].source)
}

#[tokio::test]
async fn unpacks_busybox_into_snapshots_by_chain_id() {
    require_root();
    require_tool("ctr");
    let registry = Registry::start();
    let image = busybox();
    let reference = images::push(&registry, image, "busybox:1");
    let stack = Stack::start().await;

    let events = pull(&stack, request(&reference)).await;
    let chain = chain_ids(image);
    let states = layer_states(&events);
    assert_eq!(states.get(chain.last().unwrap()), Some(&LayerState::Done), "{states:?}");

    let snapshots = ok(stack.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]));
    for chain_id in &chain {
        assert!(
            snapshots.lines().any(|l| l.starts_with(chain_id.as_str()) && l.contains("Committed")),
            "{chain_id}:\n{snapshots}"
        );
    }
    // Labels as containerd's unpacker sets them.
    let mut content = ContentClient::new(stack.containerd_channel().await);
    let manifest = image.manifest();
    for (layer, diff_id) in manifest.layers.iter().zip(&manifest.diff_ids) {
        let labels = info(&mut content, "default", &layer.digest).await.unwrap().labels;
        assert_eq!(labels.get("containerd.io/uncompressed"), Some(diff_id), "{labels:?}");
    }
    let config = info(&mut content, "default", &manifest.config.digest).await.unwrap().labels;
    assert_eq!(config.get(&format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}")), chain.last(), "{config:?}");

    // ctr agrees that the image is unpacked.
    let check = ok(stack.ctr(&["images", "check", "--snapshotter", SNAPSHOTTER]));
    let line = check.lines().find(|l| l.starts_with(&reference)).unwrap_or_else(|| panic!("{check}"));
    assert!(line.contains("complete") && line.trim_end().ends_with("true"), "{line}");

    let rootfs = view(&stack, chain.last().unwrap(), "check-rootfs").await;
    assert!(rootfs.join("bin/busybox").is_file(), "{}", rootfs.display());
    assert!(rootfs.join("bin/sh").exists(), "{}", rootfs.display());
    ok(stack.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "rm", "check-rootfs"]));

    // Again: nothing to unpack.
    let again = pull(&stack, request(&reference)).await;
    let states = layer_states(&again);
    assert!(states.values().all(|s| *s == LayerState::Skipped), "{states:?}");

    // The image holds its snapshots; without it they go.
    ok(stack.ctr(&["images", "rm", "--sync", &reference]));
    let snapshots = ok(stack.ctr(&["snapshots", "--snapshotter", SNAPSHOTTER, "ls"]));
    assert!(!snapshots.contains(chain.last().unwrap().as_str()), "{snapshots}");
}

#[tokio::test]
async fn unpacks_a_layered_image_with_whiteouts() {
    require_root();
    let registry = Registry::start();
    let image = layered();
    let reference = images::push(&registry, image, "layered:1");
    let stack = Stack::start().await;
    let events = pull(&stack, request(&reference)).await;
    let chain = chain_ids(image);
    assert_eq!(chain.len(), 5);
    let states = layer_states(&events);
    assert!(chain.iter().all(|c| states.get(c) == Some(&LayerState::Done)), "{states:?}");
    let rootfs = view(&stack, chain.last().unwrap(), "check-layered").await;
    for path in LAYERED_PRESENT {
        assert!(rootfs.join(path).exists(), "{path} missing in {}", rootfs.display());
    }
    for path in LAYERED_ABSENT {
        assert!(!rootfs.join(path).exists(), "{path} should be gone from {}", rootfs.display());
    }

    // busybox shares layered's first layer: its only chain exists and is skipped.
    let reference = images::push(&registry, busybox(), "busybox:1");
    let events = pull(&stack, request(&reference)).await;
    let busybox_chain = chain_ids(busybox());
    if busybox_chain[0] == chain[0] {
        assert_eq!(layer_states(&events).get(&chain[0]), Some(&LayerState::Skipped));
    }
}

#[tokio::test]
async fn unpacks_into_overlayfs_by_default() {
    require_root();
    require_tool("ctr");
    let registry = Registry::start();
    let image = layered();
    let reference = images::push(&registry, image, "layered:2");
    let stack = Stack::start().await;
    pull(&stack, PullRequest { snapshotter: String::new(), ..request(&reference) }).await;
    let chain = chain_ids(image);
    let snapshots = ok(stack.ctr(&["snapshots", "ls"]));
    assert!(chain.iter().all(|c| snapshots.contains(c.as_str())), "{snapshots}");
    let check = ok(stack.ctr(&["images", "check"]));
    let line = check.lines().find(|l| l.starts_with(&reference)).unwrap_or_else(|| panic!("{check}"));
    assert!(line.trim_end().ends_with("true"), "unpacked on overlayfs: {line}");
}
