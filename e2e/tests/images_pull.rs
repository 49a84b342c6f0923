//! Pulls run by berth-image (`berth.image.v1.Transfer`) from a real docker-registry on
//! loopback, watched through the gateway: what is fetched, how blobs are labelled, what a
//! second pull does, and how bad input and failures end.

use std::collections::HashMap;

use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_api::berth::image::v1::{BlobState, Credentials, PullProgress, PullRequest, pull_progress};
use berth_api::containerd::services::images::v1::Image;
use berth_e2e::content::{Writer, in_namespace, info, stat, write};
use berth_e2e::images::{self, busybox, layered, multi_platform};
use berth_e2e::registry::Registry;
use berth_e2e::{Stack, require_tool};
use containerd_client::services::v1::content_client::ContentClient;

/// Everything a pull reported, and how it ended.
struct Pulled {
    events: Vec<PullProgress>,
    outcome: Result<Image, tonic::Status>,
}

impl Pulled {
    fn image(&self) -> &Image {
        self.outcome.as_ref().unwrap_or_else(|status| panic!("pull failed: {status:?}"))
    }

    fn error(&self) -> &tonic::Status {
        self.outcome.as_ref().err().unwrap_or_else(|| panic!("pull should have failed"))
    }

    /// The last state reported for each blob.
    fn final_states(&self) -> HashMap<String, BlobState> {
        let mut states = HashMap::new();
        for event in &self.events {
            if let Some(pull_progress::Event::Blob(blob)) = &event.event {
                states.insert(blob.digest.clone(), blob.state());
            }
        }
        states
    }

    /// Where each blob's download resumed from (blobs downloaded only).
    fn resumed_from(&self) -> HashMap<String, i64> {
        let mut resumed = HashMap::new();
        for event in &self.events {
            if let Some(pull_progress::Event::Blob(blob)) = &event.event
                && blob.state() == BlobState::Downloading
            {
                resumed.entry(blob.digest.clone()).or_insert(blob.resumed_from);
            }
        }
        resumed
    }
}

fn request(reference: &str) -> PullRequest {
    PullRequest { reference: reference.to_string(), plain_http: true, ..Default::default() }
}

async fn pull(stack: &Stack, ns: &str, request: PullRequest) -> Pulled {
    let mut client = TransferClient::new(stack.channel());
    let mut stream = match client.pull(in_namespace(request, ns)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Pulled { events: Vec::new(), outcome: Err(status) },
    };
    let mut events = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(event)) => events.push(event),
            Ok(None) => break,
            Err(status) => return Pulled { events, outcome: Err(status) },
        }
    }
    let image = events.iter().rev().find_map(|e| match &e.event {
        Some(pull_progress::Event::Image(image)) => Some(image.clone()),
        _ => None,
    });
    let outcome = image.ok_or_else(|| tonic::Status::internal("the stream ended without the image"));
    Pulled { events, outcome }
}

async fn labels_of(stack: &Stack, ns: &str, digest: &str) -> HashMap<String, String> {
    let mut content = ContentClient::new(stack.containerd_channel().await);
    info(&mut content, ns, digest).await.unwrap_or_else(|s| panic!("{digest} not in content: {s:?}")).labels
}

fn ok(output: std::process::Output) -> String {
    assert!(output.status.success(), "ctr failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// How many blob GETs the registry has served so far.
fn blob_gets(registry: &Registry) -> usize {
    registry.logs().lines().filter(|l| l.contains("GET /v2/") && l.contains("/blobs/sha256:")).count()
}

#[tokio::test]
async fn pulls_busybox_labels_it_like_containerd_and_a_second_pull_fetches_nothing() {
    require_tool("ctr");
    let registry = Registry::start();
    let image = busybox();
    let reference = images::push(&registry, image, "busybox:1");
    let stack = Stack::start().await;

    let first = pull(&stack, "default", request(&reference)).await;
    let record = first.image();
    assert_eq!(record.name, reference);
    let target = record.target.as_ref().unwrap();
    assert_eq!((target.digest.as_str(), target.media_type.as_str()), (image.digest(), images::MANIFEST_MEDIA_TYPE));
    let manifest = image.manifest();
    let states = first.final_states();
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        assert_eq!(states.get(&blob.digest), Some(&BlobState::Done), "{}: {states:?}", blob.digest);
    }

    // Labels as containerd's pull sets them.
    // containerd names the registry host without its port.
    let source_key = "containerd.io/distribution.source.127.0.0.1";
    let labels = labels_of(&stack, "default", image.digest()).await;
    assert_eq!(labels.get("containerd.io/gc.ref.content.config"), Some(&manifest.config.digest), "{labels:?}");
    for (i, layer) in manifest.layers.iter().enumerate() {
        assert_eq!(labels.get(&format!("containerd.io/gc.ref.content.l.{i}")), Some(&layer.digest), "{labels:?}");
    }
    assert_eq!(labels.get(source_key).map(String::as_str), Some("busybox"), "{labels:?}");
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        let labels = labels_of(&stack, "default", &blob.digest).await;
        assert_eq!(labels.get(source_key).map(String::as_str), Some("busybox"), "{labels:?}");
    }

    // ctr sees a complete image.
    let listing = ok(stack.ctr(&["images", "ls"]));
    assert!(listing.lines().any(|l| l.starts_with(&reference) && l.contains(image.digest())), "{listing}");
    let check = ok(stack.ctr(&["images", "check"]));
    assert!(check.lines().any(|l| l.starts_with(&reference) && l.contains("complete")), "{check}");

    // Again: every blob is skipped and the registry serves no blob.
    let gets = blob_gets(&registry);
    assert!(gets >= 2, "the first pull fetched the config and layer from the registry");
    let second = pull(&stack, "default", request(&reference)).await;
    assert_eq!(second.image().target, record.target);
    assert!(second.final_states().values().all(|s| *s == BlobState::Skipped), "{:?}", second.final_states());
    assert_eq!(blob_gets(&registry), gets, "a second pull fetches no blob");
    assert_eq!(ok(stack.ctr(&["images", "ls", "-q"])).trim(), reference);

    // The pull's lease is gone: the image record alone holds the blobs.
    assert_eq!(ok(stack.ctr(&["leases", "ls", "-q"])).trim(), "");
    ok(stack.ctr(&["images", "rm", "--sync", &reference]));
    let blobs = ok(stack.ctr(&["content", "ls", "-q"]));
    assert!(!blobs.contains(image.digest()), "{blobs}");
}

#[tokio::test]
async fn pulls_a_layered_image_into_another_namespace() {
    let registry = Registry::start();
    let image = layered();
    let reference = images::push(&registry, image, "app/layered:v2");
    let stack = Stack::start().await;
    let pulled = pull(&stack, "team-b", request(&reference)).await;
    assert_eq!(pulled.image().target.as_ref().unwrap().digest, image.digest());
    let labels = labels_of(&stack, "team-b", image.digest()).await;
    let manifest = image.manifest();
    assert_eq!(manifest.layers.len(), 5);
    for (i, layer) in manifest.layers.iter().enumerate() {
        assert_eq!(labels.get(&format!("containerd.io/gc.ref.content.l.{i}")), Some(&layer.digest));
        let blob = labels_of(&stack, "team-b", &layer.digest).await;
        assert_eq!(blob.get("containerd.io/distribution.source.127.0.0.1").unwrap(), "app/layered");
    }
    assert_eq!(ok(stack.ctr(&["-n", "team-b", "images", "ls", "-q"])).trim(), reference);
}

#[tokio::test]
async fn an_index_gives_the_host_platform_or_all_of_them() {
    let registry = Registry::start();
    let image = multi_platform();
    let reference = images::push(&registry, image, "multi:1");
    let stack = Stack::start().await;
    let host = image.manifest_for(images::host_arch()).expect("a manifest for this host");
    let other = image.manifests.iter().find(|m| m.descriptor.digest != host.descriptor.digest).unwrap();

    let pulled = pull(&stack, "default", request(&reference)).await;
    assert_eq!(pulled.image().target.as_ref().unwrap().digest, image.digest());
    let index_labels = labels_of(&stack, "default", image.digest()).await;
    for (i, m) in image.manifests.iter().enumerate() {
        assert_eq!(index_labels.get(&format!("containerd.io/gc.ref.content.m.{i}")), Some(&m.descriptor.digest));
    }
    let mut content = ContentClient::new(stack.containerd_channel().await);
    assert!(info(&mut content, "default", &host.config.digest).await.is_ok());
    let missing = info(&mut content, "default", &other.config.digest).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "only this host's manifest is fetched");

    let all = pull(&stack, "default", PullRequest { all_platforms: true, ..request(&reference) }).await;
    all.image();
    assert!(info(&mut content, "default", &other.config.digest).await.is_ok());
    // The shared layer was there already.
    assert_eq!(all.final_states().get(&host.layers[0].digest), Some(&BlobState::Skipped));

    let arch = if images::host_arch() == "amd64" { "linux/arm64" } else { "linux/amd64" };
    let other_only = pull(&stack, "ns2", PullRequest { platforms: vec![arch.into()], ..request(&reference) }).await;
    other_only.image();
    let states = other_only.final_states();
    assert!(states.contains_key(&other.config.digest) && !states.contains_key(&host.config.digest), "{states:?}");

    let none = pull(&stack, "ns3", PullRequest { platforms: vec!["linux/s390x".into()], ..request(&reference) }).await;
    assert_eq!(none.error().code(), tonic::Code::NotFound, "{:?}", none.error());
    assert!(none.error().message().contains("linux/s390x"), "{:?}", none.error());
}

#[tokio::test]
async fn a_partial_ingest_is_resumed_with_a_range_request() {
    let registry = Registry::start();
    let image = layered();
    let reference = images::push(&registry, image, "resume:1");
    let stack = Stack::start().await;
    // The biggest layer, half written under the ref the pull uses, as a cut pull leaves it.
    let layer = image.manifest().layers.iter().max_by_key(|l| l.size).unwrap();
    let data = image.read_blob(&layer.digest);
    let half = data.len() / 2;
    let ingest_ref = format!("layer-{}", layer.digest);
    let mut content = ContentClient::new(stack.containerd_channel().await);
    let (mut writer, _) = Writer::open(&mut content, "default", stat(&ingest_ref)).await.expect("open write");
    writer.send(write(&ingest_ref, 0, &data[..half])).await.expect("write half");
    drop(writer);

    let pulled = pull(&stack, "default", request(&reference)).await;
    pulled.image();
    assert_eq!(pulled.resumed_from().get(&layer.digest), Some(&(half as i64)), "resumed at the ingest offset");
    let stored = berth_e2e::content::read_all(&mut content, "default", &layer.digest).await.unwrap();
    assert_eq!(berth_e2e::digest_of(&stored), layer.digest);
}

#[tokio::test]
async fn bad_references_unknown_tags_and_an_unreachable_registry_are_errors() {
    let registry = Registry::start();
    images::push(&registry, busybox(), "busybox:1");
    let stack = Stack::start().await;

    let bad = pull(&stack, "default", request("Not A Reference")).await;
    assert_eq!(bad.error().code(), tonic::Code::InvalidArgument, "{:?}", bad.error());

    let unknown = pull(&stack, "default", request(&registry.reference("busybox:nope"))).await;
    assert_eq!(unknown.error().code(), tonic::Code::NotFound, "{:?}", unknown.error());
    assert!(unknown.error().message().contains("busybox:nope"), "{:?}", unknown.error());
    let unknown_repo = pull(&stack, "default", request(&registry.reference("nothing/here:1"))).await;
    assert_eq!(unknown_repo.error().code(), tonic::Code::NotFound, "{:?}", unknown_repo.error());

    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = pull(&stack, "default", request(&format!("127.0.0.1:{port}/busybox:1"))).await;
    assert_eq!(down.error().code(), tonic::Code::Unavailable, "{:?}", down.error());
    assert!(down.error().message().contains(&format!("127.0.0.1:{port}")), "{:?}", down.error());

    // No half-done records.
    let listing = ok(stack.ctr(&["images", "ls", "-q"]));
    assert_eq!(listing.trim(), "");
}

#[tokio::test]
async fn a_blob_with_the_wrong_bytes_is_refused() {
    let registry = Registry::start();
    let image = busybox();
    let reference = images::push(&registry, image, "corrupt:1");
    // Same size, other bytes: the registry serves them as the layer.
    let layer = &image.manifest().layers[0];
    let hex = layer.digest.strip_prefix("sha256:").unwrap();
    let path = registry.storage_dir().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let middle = data.len() / 2;
    data[middle] ^= 0xff;
    std::fs::write(&path, &data).unwrap();

    let stack = Stack::start().await;
    let pulled = pull(&stack, "default", request(&reference)).await;
    let error = pulled.error();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error:?}");
    assert!(error.message().contains(&layer.digest), "{error:?}");
    assert_eq!(ok(stack.ctr(&["images", "ls", "-q"])).trim(), "", "no image record");
    let blobs = ok(stack.ctr(&["content", "ls", "-q"]));
    assert!(!blobs.contains(&layer.digest), "the wrong bytes are not stored: {blobs}");
}

#[tokio::test]
async fn credentials_are_asked_for_and_used() {
    let registry = Registry::start_with_auth();
    let image = busybox();
    let reference = images::push(&registry, image, "private:1");
    let stack = Stack::start().await;

    let anonymous = pull(&stack, "default", request(&reference)).await;
    assert_eq!(anonymous.error().code(), tonic::Code::Unauthenticated, "{:?}", anonymous.error());

    let (user, password) = registry.credentials().unwrap();
    let wrong = Credentials { username: user.to_string(), secret: "wrong".to_string() };
    let refused = pull(&stack, "default", PullRequest { credentials: Some(wrong), ..request(&reference) }).await;
    assert_eq!(refused.error().code(), tonic::Code::Unauthenticated, "{:?}", refused.error());

    let right = Credentials { username: user.to_string(), secret: password.to_string() };
    let pulled = pull(&stack, "default", PullRequest { credentials: Some(right), ..request(&reference) }).await;
    assert_eq!(pulled.image().target.as_ref().unwrap().digest, image.digest());
}
