//! Diff and Apply refusals through the gateway carry containerd's codes and say what is wrong,
//! and leave nothing behind: an unknown media type, bad labels, a content ref another writer
//! holds (and the same ref once it is free), a lease that does not exist, mounts of a snapshot
//! that is gone.

mod diff_common;

use std::collections::HashMap;

use berth_e2e::content::{Writer, stat, write};
use berth_e2e::{Stack, require_root};
use containerd_client::services::v1::DiffRequest;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use diff_common::{Entry, Mounted, Snapshots, TAR, descriptor, ingest_held, no_temp_mounts, tar, write as write_file};
use tonic::Code;

const NS: &str = "diff-errors";

#[tokio::test]
async fn diff_and_apply_refusals() {
    require_root();
    let stack = Stack::start().await;
    let mut sn = Snapshots::new(&stack, "overlayfs", NS).await;
    let mounts = sn.prepare("base-active", "").await;
    write_file(&Mounted::new(&mounts, &stack.dir.path().join("base")).target.join("file"), b"base", 0o644);
    sn.commit("base", "base-active").await;
    let mounts = sn.prepare("child", "base").await;
    write_file(&Mounted::new(&mounts, &stack.dir.path().join("child")).target.join("new"), b"new", 0o644);
    let (left, right) = (sn.view("base-view", "base").await, sn.mounts("child").await);

    let unknown = sn.diff(left.clone(), right.clone(), "application/x-made-up", HashMap::new()).await.unwrap_err();
    assert_eq!(unknown.code(), Code::Unimplemented, "{unknown:?}");
    assert_eq!(unknown.message(), "unsupported diff media type: application/x-made-up");

    let huge = HashMap::from([("team".to_string(), "x".repeat(5000))]);
    let bad_labels = sn.diff(left.clone(), right.clone(), TAR, huge).await.unwrap_err();
    assert_eq!(bad_labels.code(), Code::InvalidArgument, "{bad_labels:?}");

    // A ref another writer holds: content's Unavailable comes back as it is.
    let channel = stack.containerd_channel().await;
    let mut content = ContentClient::new(channel.clone());
    let (mut holder, _) = Writer::open(&mut content, NS, stat("held-ref")).await.expect("hold the ref");
    holder.send(write("held-ref", 0, b"partial")).await.expect("write");
    let mut diff = DiffClient::new(channel.clone());
    let request = |reference: &str| DiffRequest {
        left: left.clone(),
        right: right.clone(),
        media_type: TAR.into(),
        r#ref: reference.into(),
        ..Default::default()
    };
    let locked = diff.diff(berth_e2e::content::in_namespace(request("held-ref"), NS)).await.unwrap_err();
    assert_eq!(locked.code(), Code::Unavailable, "{locked:?}");
    assert!(locked.message().contains("held-ref"), "{locked:?}");
    assert!(no_temp_mounts(&stack));
    // Once free, the same ref (holding 7 stale bytes) takes the whole layer.
    drop(holder);
    let mut made = Err(tonic::Status::unavailable("not tried"));
    for _ in 0..50 {
        made = diff.diff(berth_e2e::content::in_namespace(request("held-ref"), NS)).await;
        if made.as_ref().err().is_none_or(|e| e.code() != Code::Unavailable) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let made = made.expect("diff on the freed ref").into_inner().diff.expect("descriptor");
    let data = berth_e2e::content::read_all(&mut content, NS, &made.digest).await.expect("read the layer");
    assert_eq!(berth_e2e::digest_of(&data), made.digest);
    assert!(data.windows(3).any(|w| w == b"new"), "the layer holds the new file");

    // Under a lease that does not exist: refused, as containerd refuses it.
    let mut request = berth_e2e::content::in_namespace(request(""), NS);
    request.metadata_mut().insert("containerd-lease", "no-such-lease".parse().unwrap());
    let no_lease = diff.diff(request).await.unwrap_err();
    assert_eq!(no_lease.code(), Code::NotFound, "{no_lease:?}");
    assert!(no_temp_mounts(&stack));

    // Apply onto the mounts of a snapshot that has been removed.
    let layer_blob = tar(&[Entry::File("f", b"f")]);
    ingest_held(&mut content, NS, "small", &layer_blob).await;
    let stale = sn.prepare("stale-active", "base").await;
    sn.remove("stale-active").await.unwrap();
    let gone = sn.apply(&descriptor(TAR, &layer_blob), stale).await.unwrap_err();
    assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
    assert!(gone.message().contains("does not exist"), "{gone:?}");
    assert!(no_temp_mounts(&stack));
}
