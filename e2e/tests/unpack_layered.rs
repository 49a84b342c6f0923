//! Unpacking an image layer by layer through the gateway, as containerd's unpacker does: the
//! layers of an offline-built five-layer image (whiteouts, an opaque directory) are ingested
//! into content, then each is applied to a snapshot prepared on the previous one and committed
//! under its chain ID. The diffIDs Apply answers are the config's, and the top snapshot is the
//! same tree as `umoci unpack` makes — on overlayfs and native.

mod diff_common;

use berth_e2e::images::{self, LAYERED_ABSENT, LAYERED_PRESENT};
use berth_e2e::{Stack, require_root, require_tool};
use containerd_client::services::v1::content_client::ContentClient;
use diff_common::{Snapshots, assert_same_tree, chain_ids, no_temp_mounts};

async fn unpack(snapshotter: &str) {
    require_root();
    require_tool("umoci");
    let image = images::layered();
    let manifest = image.manifest();
    assert_eq!(manifest.layers.len(), 5);
    let stack = Stack::start().await;
    let ns = "unpack";

    let mut content = ContentClient::new(stack.containerd_channel().await);
    for layer in &manifest.layers {
        let blob = image.read_blob(&layer.digest);
        let reference = format!("layer-{}", layer.digest);
        assert_eq!(diff_common::ingest_held(&mut content, ns, &reference, &blob).await, layer.digest);
    }

    let mut sn = Snapshots::new(&stack, snapshotter, ns).await;
    let chain = chain_ids(&manifest.diff_ids);
    let mut parent = String::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let key = format!("extract-{i} {}", chain[i]);
        let mounts = sn.prepare(&key, &parent).await;
        let descriptor = diff_common::Descriptor {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size as i64,
            annotations: Default::default(),
        };
        let applied = sn.apply(&descriptor, mounts).await.unwrap_or_else(|e| panic!("apply layer {i}: {e}"));
        assert_eq!(applied.digest, manifest.diff_ids[i], "layer {i}: Apply answers the config's diffID");
        assert_eq!(applied.media_type, diff_common::TAR);
        sn.commit(&chain[i], &key).await;
        parent = chain[i].clone();
    }

    let work = stack.dir.path().join("work");
    let expected = image.unpack(&work.join("umoci"));
    let top = sn.viewed(&parent, &work).await;
    for path in LAYERED_PRESENT {
        assert!(top.path().join(path).symlink_metadata().is_ok(), "{path} is in the unpacked image");
    }
    for path in LAYERED_ABSENT {
        assert!(top.path().join(path).symlink_metadata().is_err(), "{path} was whited out");
    }
    assert_same_tree(&expected, top.path(), &format!("{snapshotter}: umoci unpack and the unpacked snapshots"));
    top.done(&mut sn).await;
    assert!(no_temp_mounts(&stack));
}

#[tokio::test]
async fn layers_unpack_like_umoci_on_overlayfs() {
    unpack("overlayfs").await;
}

#[tokio::test]
async fn layers_unpack_like_umoci_on_native() {
    unpack("native").await;
}
