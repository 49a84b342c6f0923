//! The metadata service's rules through the gateway: containerd's validation, update masks,
//! filters, lease resources and garbage collection of blobs.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use berth_api::berth::metadata::v1::CollectRequest;
use berth_api::berth::metadata::v1::gc_client::GcClient;
use berth_api::containerd::services::containers::v1::container::Runtime;
use berth_api::containerd::services::containers::v1::containers_client::ContainersClient;
use berth_api::containerd::services::containers::v1::*;
use berth_api::containerd::services::content::v1::content_client::ContentClient;
use berth_api::containerd::services::content::v1::{Info, InfoRequest, UpdateRequest};
use berth_api::containerd::services::leases::v1::leases_client::LeasesClient;
use berth_api::containerd::services::leases::v1::{self as leases, AddResourceRequest, Resource};
use berth_e2e::Stack;
use berth_e2e::content::in_namespace;
use tonic::Code;
use tonic::transport::Channel;

fn container(id: &str) -> Container {
    Container {
        id: id.to_string(),
        image: "example.com/app:1".into(),
        runtime: Some(Runtime { name: "io.containerd.runc.v2".into(), options: None }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: b"{}".to_vec(),
        }),
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

async fn create(client: &mut ContainersClient<Channel>, c: Container) -> Result<Container, tonic::Status> {
    let response = client.create(in_namespace(CreateContainerRequest { container: Some(c) }, "default")).await?;
    Ok(response.into_inner().container.unwrap())
}

async fn update(
    client: &mut ContainersClient<Channel>,
    c: Container,
    paths: &[&str],
) -> Result<Container, tonic::Status> {
    let request = UpdateContainerRequest { container: Some(c), update_mask: mask(paths) };
    Ok(client.update(in_namespace(request, "default")).await?.into_inner().container.unwrap())
}

#[tokio::test]
async fn bad_container_input_is_invalid_argument_and_changes_nothing() {
    let stack = Stack::start().await;
    let mut client = ContainersClient::new(stack.channel());
    for id in ["", "has space", "-leading", "trailing.", "a..b", "x/y", &"a".repeat(77)] {
        let err = create(&mut client, container(id)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id:?}: {err:?}");
    }
    assert!(create(&mut client, container(&"a".repeat(76))).await.is_ok(), "76 characters are fine");

    let mut big = container("big-label");
    big.labels.insert("k".into(), "v".repeat(4096));
    let err = create(&mut client, big).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("4096"), "{err:?}");

    let mut no_runtime = container("no-runtime");
    no_runtime.runtime = None;
    assert_eq!(create(&mut client, no_runtime).await.unwrap_err().code(), Code::InvalidArgument);
    let mut no_spec = container("no-spec");
    no_spec.spec = None;
    assert_eq!(create(&mut client, no_spec).await.unwrap_err().code(), Code::InvalidArgument);
    let mut key_only = container("key-only");
    key_only.snapshot_key = "k".into();
    assert_eq!(create(&mut client, key_only).await.unwrap_err().code(), Code::InvalidArgument);

    let bad_ns = ContainersClient::new(stack.channel())
        .list(in_namespace(ListContainersRequest { filters: vec![] }, "bad..ns"))
        .await
        .unwrap_err();
    assert_eq!(bad_ns.code(), Code::InvalidArgument, "{bad_ns:?}");

    let err = client
        .list(in_namespace(ListContainersRequest { filters: vec!["labels.a==b,".into()] }, "default"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("position"), "the error says where: {err:?}");

    let created = create(&mut client, container("web")).await.unwrap();
    let err = create(&mut client, container("web")).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = update(&mut client, container("web"), &["runtime"]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "unknown mask path: {err:?}");
    let mut moved = container("web");
    moved.snapshotter = "native".into();
    let err = update(&mut client, moved, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "snapshotter is immutable: {err:?}");
    let err = update(&mut client, container("nope"), &["labels.a"]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let stored = client.get(in_namespace(GetContainerRequest { id: "web".into() }, "default")).await.unwrap();
    assert_eq!(stored.into_inner().container.unwrap(), created, "failed calls changed nothing");
}

#[tokio::test]
async fn updates_follow_containerd_masks_and_list_filters_match() {
    let stack = Stack::start().await;
    let mut client = ContainersClient::new(stack.channel());
    let mut first = container("first");
    first.labels = [("app".to_string(), "web".to_string()), ("tier".to_string(), "front".to_string())].into();
    let created = create(&mut client, first).await.unwrap();

    let mut change = container("first");
    change.labels = [("tier".to_string(), "".to_string()), ("new".to_string(), "yes".to_string())].into();
    change.image = "example.com/app:2".into();
    let updated = update(&mut client, change.clone(), &["labels.tier", "labels.new"]).await.unwrap();
    let want: HashMap<String, String> =
        [("app".to_string(), "web".to_string()), ("new".to_string(), "yes".to_string())].into();
    assert_eq!(updated.labels, want, "masked label paths merge; an empty value removes");
    assert_eq!(updated.image, "example.com/app:1", "fields outside the mask stay");
    assert_eq!(updated.created_at, created.created_at);
    let at = |c: &Container| c.updated_at.map(|t| (t.seconds, t.nanos));
    assert!(at(&updated) > at(&created));
    let replaced = update(&mut client, change, &[]).await.unwrap();
    assert_eq!(replaced.image, "example.com/app:2", "no mask replaces the updatable fields");
    assert_eq!(replaced.labels, HashMap::from([("new".to_string(), "yes".to_string())]));

    let mut second = container("second");
    second.snapshotter = "native".into();
    second.snapshot_key = "second-rootfs".into();
    second.labels.insert("app".into(), "db".into());
    create(&mut client, second).await.unwrap();
    for (filter, want) in [
        ("id==first", vec!["first"]),
        ("labels.app==db", vec!["second"]),
        ("image~=app:2$", vec!["first"]),
        ("snapshotter==native", vec!["second"]),
        ("runtime.name==io.containerd.runc.v2", vec!["first", "second"]),
        ("labels.missing", vec![]),
    ] {
        let request = ListContainersRequest { filters: vec![filter.to_string()] };
        let listed = client.list(in_namespace(request.clone(), "default")).await.unwrap().into_inner().containers;
        let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, want, "{filter}");
        let mut stream = client.list_stream(in_namespace(request, "default")).await.unwrap().into_inner();
        let mut streamed = Vec::new();
        while let Some(message) = stream.message().await.unwrap() {
            streamed.push(message.container.unwrap());
        }
        assert_eq!(streamed, listed, "ListStream gives what List gives ({filter})");
    }
    let other = client.list(in_namespace(ListContainersRequest { filters: vec![] }, "other")).await.unwrap();
    assert!(other.into_inner().containers.is_empty(), "namespaces are separate");
    client.delete(in_namespace(DeleteContainerRequest { id: "first".into() }, "default")).await.unwrap();
    let err = client.delete(in_namespace(DeleteContainerRequest { id: "first".into() }, "default")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn lease_resources_are_checked() {
    let stack = Stack::start().await;
    let mut client = LeasesClient::new(stack.channel());
    let create =
        |id: &str| in_namespace(leases::CreateRequest { id: id.to_string(), labels: HashMap::new() }, "default");
    client.create(create("l1")).await.unwrap();
    assert_eq!(client.create(create("bad/id")).await.unwrap_err().code(), Code::InvalidArgument);
    let bad_expiry = leases::CreateRequest {
        id: "l2".into(),
        labels: [("containerd.io/gc.expire".to_string(), "soon".to_string())].into(),
    };
    assert_eq!(client.create(in_namespace(bad_expiry, "default")).await.unwrap_err().code(), Code::InvalidArgument);

    let digest = format!("sha256:{}", "ab".repeat(32));
    let add = |id: &str, kind: &str, resource: &str| {
        in_namespace(
            AddResourceRequest {
                id: id.to_string(),
                resource: Some(Resource { id: resource.to_string(), r#type: kind.to_string() }),
            },
            "default",
        )
    };
    client.add_resource(add("l1", "content", &digest)).await.unwrap();
    client.add_resource(add("l1", "content", &digest)).await.unwrap();
    client.add_resource(add("l1", "snapshots/overlayfs", "rootfs-1")).await.unwrap();
    client.add_resource(add("l1", "ingests", "pull-ref")).await.unwrap();
    for (kind, id) in [("content", "sha256:short"), ("images", "x"), ("snapshots", "k"), ("content/x", digest.as_str())]
    {
        let err = client.add_resource(add("l1", kind, id)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{kind} {id}");
    }
    assert_eq!(client.add_resource(add("missing", "content", &digest)).await.unwrap_err().code(), Code::NotFound);
    let listed =
        client.list_resources(in_namespace(leases::ListResourcesRequest { id: "l1".into() }, "default")).await.unwrap();
    let mut resources: Vec<(String, String)> =
        listed.into_inner().resources.into_iter().map(|r| (r.r#type, r.id)).collect();
    resources.sort();
    assert_eq!(
        resources,
        [
            ("content".to_string(), digest.clone()),
            ("ingests".to_string(), "pull-ref".to_string()),
            ("snapshots/overlayfs".to_string(), "rootfs-1".to_string())
        ]
    );
    let filtered =
        client.list(in_namespace(leases::ListRequest { filters: vec!["id==l1".into()] }, "default")).await.unwrap();
    assert_eq!(filtered.into_inner().leases.len(), 1);
}

async fn ingest_labelled(stack: &Stack, data: &[u8], labels: &[(&str, &str)]) -> String {
    let mut content =
        containerd_client::services::v1::content_client::ContentClient::new(stack.containerd_channel().await);
    let digest =
        berth_e2e::content::ingest(&mut content, "default", &format!("ref-{}", berth_e2e::digest_of(data)), data).await;
    if !labels.is_empty() {
        let mut client = ContentClient::new(stack.channel());
        let labels: HashMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let update = UpdateRequest {
            info: Some(Info { digest: digest.clone(), labels, ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        client.update(in_namespace(update, "default")).await.unwrap();
    }
    digest
}

async fn exists(stack: &Stack, digest: &str) -> bool {
    let mut client = ContentClient::new(stack.channel());
    match client.info(in_namespace(InfoRequest { digest: digest.to_string() }, "default")).await {
        Ok(_) => true,
        Err(status) if status.code() == Code::NotFound => false,
        Err(status) => panic!("info {digest}: {status:?}"),
    }
}

#[tokio::test]
async fn gc_frees_blobs_nothing_holds_and_keeps_what_leases_and_roots_hold() {
    let stack = Stack::start().await;
    let child = ingest_labelled(&stack, b"child of the root", &[]).await;
    let root = ingest_labelled(
        &stack,
        b"the root",
        &[("containerd.io/gc.root", "yes"), ("containerd.io/gc.ref.content.0", &child)],
    )
    .await;
    let leased = ingest_labelled(&stack, b"held by a lease", &[]).await;
    let expiring = ingest_labelled(&stack, b"held by an expiring lease", &[]).await;
    let loose = ingest_labelled(&stack, b"held by nothing", &[]).await;

    let mut leases = LeasesClient::new(stack.channel());
    let expires_at = humantime_rfc3339(SystemTime::now() + Duration::from_secs(3));
    for (id, digest, labels) in [
        ("holder", &leased, HashMap::new()),
        ("short", &expiring, HashMap::from([("containerd.io/gc.expire".to_string(), expires_at)])),
    ] {
        leases.create(in_namespace(leases::CreateRequest { id: id.into(), labels }, "default")).await.unwrap();
        let resource = Resource { id: digest.clone(), r#type: "content".into() };
        let add = AddResourceRequest { id: id.into(), resource: Some(resource) };
        leases.add_resource(in_namespace(add, "default")).await.unwrap();
    }

    let mut gc = GcClient::new(stack.channel());
    let report = gc.collect(CollectRequest {}).await.unwrap().into_inner();
    let removed: Vec<&str> = report.removed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(removed, [loose.as_str()], "only the blob nothing holds goes");
    for digest in [&child, &root, &leased, &expiring] {
        assert!(exists(&stack, digest).await, "{digest} is held and stays");
    }
    assert!(!exists(&stack, &loose).await);

    // Deleting the lease with sync=true returns once its blob is gone.
    leases.delete(in_namespace(leases::DeleteRequest { id: "holder".into(), sync: true }, "default")).await.unwrap();
    assert!(!exists(&stack, &leased).await, "a deleted lease releases its blob");

    // The expiring lease is collected when it expires, without anyone asking.
    let deadline = Instant::now() + Duration::from_secs(15);
    while exists(&stack, &expiring).await {
        assert!(Instant::now() < deadline, "the expired lease's blob was not collected");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let left = leases.list(in_namespace(leases::ListRequest { filters: vec![] }, "default")).await.unwrap();
    assert!(left.into_inner().leases.is_empty(), "the expired lease itself is gone");
    assert!(exists(&stack, &root).await && exists(&stack, &child).await, "gc.root and its references stay");
}

/// RFC 3339 in UTC, as Go's time.RFC3339 writes it.
fn humantime_rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

async fn snapshot_names(stack: &Stack) -> Vec<String> {
    use berth_api::containerd::services::snapshots::v1::ListSnapshotsRequest;
    use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
    let mut client = SnapshotsClient::new(stack.channel());
    let request = ListSnapshotsRequest { snapshotter: "overlayfs".into(), filters: vec![] };
    let mut stream = client.list(in_namespace(request, "default")).await.unwrap().into_inner();
    let mut names = Vec::new();
    while let Some(page) = stream.message().await.unwrap() {
        names.extend(page.info.into_iter().map(|i| i.name));
    }
    names.sort();
    names
}

#[tokio::test]
async fn gc_frees_a_deleted_containers_snapshot_chain_and_keeps_leased_snapshots() {
    use berth_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
    use berth_api::containerd::services::snapshots::v1::{CommitSnapshotRequest, PrepareSnapshotRequest};
    berth_e2e::require_root();
    let stack = Stack::start().await;
    let mut snapshots = SnapshotsClient::new(stack.channel());
    let prepare = |key: &str, parent: &str| {
        let request = PrepareSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        in_namespace(request, "default")
    };
    snapshots.prepare(prepare("base-active", "")).await.unwrap();
    let commit = CommitSnapshotRequest {
        snapshotter: "overlayfs".into(),
        name: "base".into(),
        key: "base-active".into(),
        labels: HashMap::new(),
    };
    snapshots.commit(in_namespace(commit, "default")).await.unwrap();
    snapshots.prepare(prepare("rootfs-web", "base")).await.unwrap();
    let mut web = container("web");
    web.snapshotter = "overlayfs".into();
    web.snapshot_key = "rootfs-web".into();
    create(&mut ContainersClient::new(stack.channel()), web).await.unwrap();

    // A snapshot prepared under a lease (containerd-lease metadata) is added to it.
    let mut leases = LeasesClient::new(stack.channel());
    let lease = leases::CreateRequest { id: "unpack".into(), labels: HashMap::new() };
    leases.create(in_namespace(lease, "default")).await.unwrap();
    let mut leased = prepare("leased", "base");
    leased.metadata_mut().insert("containerd-lease", "unpack".parse().unwrap());
    snapshots.prepare(leased).await.unwrap();
    snapshots.prepare(prepare("orphan", "")).await.unwrap();

    let mut gc = GcClient::new(stack.channel());
    let report = gc.collect(CollectRequest {}).await.unwrap().into_inner();
    let removed: Vec<(&str, &str)> = report.removed.iter().map(|r| (r.r#type.as_str(), r.id.as_str())).collect();
    assert_eq!(removed, [("snapshots/overlayfs", "orphan")], "only the snapshot nothing holds");
    assert_eq!(snapshot_names(&stack).await, ["base", "leased", "rootfs-web"]);

    // Deleting the container frees its snapshot; the base stays while the leased child needs it.
    let mut containers = ContainersClient::new(stack.channel());
    containers.delete(in_namespace(DeleteContainerRequest { id: "web".into() }, "default")).await.unwrap();
    gc.collect(CollectRequest {}).await.unwrap();
    assert_eq!(snapshot_names(&stack).await, ["base", "leased"]);

    leases.delete(in_namespace(leases::DeleteRequest { id: "unpack".into(), sync: true }, "default")).await.unwrap();
    assert_eq!(snapshot_names(&stack).await, Vec::<String>::new(), "the lease's snapshot and then its parent go");
}

#[tokio::test]
async fn writes_under_a_lease_are_held_by_it() {
    use berth_e2e::content::{commit, write};
    let stack = Stack::start().await;
    let mut leases = LeasesClient::new(stack.channel());
    let lease = leases::CreateRequest { id: "ingest-lease".into(), labels: HashMap::new() };
    leases.create(in_namespace(lease, "default")).await.unwrap();

    let data = b"written under a lease";
    let digest = berth_e2e::digest_of(data);
    let mut content =
        containerd_client::services::v1::content_client::ContentClient::new(stack.containerd_channel().await);
    let messages = vec![write("leased-ref", 0, data), commit("leased-ref", data.len() as i64, &digest)];
    let mut request = in_namespace(tokio_stream::iter(messages), "default");
    request.metadata_mut().insert("containerd-lease", "ingest-lease".parse().unwrap());
    let mut responses = content.write(request).await.unwrap().into_inner();
    while responses.message().await.unwrap().is_some() {}

    let listed =
        leases.list_resources(in_namespace(leases::ListResourcesRequest { id: "ingest-lease".into() }, "default"));
    let mut resources: Vec<(String, String)> =
        listed.await.unwrap().into_inner().resources.into_iter().map(|r| (r.r#type, r.id)).collect();
    resources.sort();
    assert_eq!(resources, [("content".to_string(), digest.clone()), ("ingests".to_string(), "leased-ref".to_string())]);
    GcClient::new(stack.channel()).collect(CollectRequest {}).await.unwrap();
    assert!(exists(&stack, &digest).await, "the lease keeps the blob");

    // Writing it again under the lease gives AlreadyExists, and the blob is held all the same.
    leases
        .delete(in_namespace(leases::DeleteRequest { id: "ingest-lease".into(), sync: false }, "default"))
        .await
        .unwrap();
    leases
        .create(in_namespace(leases::CreateRequest { id: "second".into(), labels: HashMap::new() }, "default"))
        .await
        .unwrap();
    let mut again = in_namespace(tokio_stream::iter(vec![berth_api_write_with_expected("again", &digest)]), "default");
    again.metadata_mut().insert("containerd-lease", "second".parse().unwrap());
    let status = match content.write(again).await {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    GcClient::new(stack.channel()).collect(CollectRequest {}).await.unwrap();
    assert!(exists(&stack, &digest).await, "the second lease holds the existing blob");

    // A lease that does not exist is refused before anything is written.
    let mut missing = in_namespace(tokio_stream::iter(vec![write("orphan-ref", 0, b"x")]), "default");
    missing.metadata_mut().insert("containerd-lease", "no-such-lease".parse().unwrap());
    let status = match content.write(missing).await {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

/// A STAT that names the digest the client is about to write (as containerd's client does).
fn berth_api_write_with_expected(
    reference: &str,
    digest: &str,
) -> containerd_client::services::v1::WriteContentRequest {
    let mut request = berth_e2e::content::stat(reference);
    request.expected = digest.to_string();
    request
}
