//! Bad layers through the diff service: a blob that does not match its digest, entries that
//! try to leave the snapshot (`..`, a symlinked parent, a hard link out), garbage, unknown
//! media types and missing blobs each fail with a clear error and the right code; the
//! snapshot is left empty (as prepared), nothing outside it is touched, no temporary mount
//! stays, and the snapshot can be removed — on overlayfs and native.

mod diff_common;

use std::path::Path;

use berth_e2e::{Stack, require_root};
use containerd_client::services::v1::content_client::ContentClient;
use diff_common::{Entry, Mounted, Snapshots, TAR, TAR_GZIP, descriptor, gzip, no_temp_mounts, tar};
use tonic::Code;

const NS: &str = "bad-layers";

/// Everything below `dir`, as sorted relative paths.
fn listing(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.symlink_metadata().unwrap().is_dir() {
                pending.push(path.clone());
            }
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    found.sort();
    found
}

struct Case {
    name: &'static str,
    blob: Vec<u8>,
    media_type: &'static str,
    code: Code,
    says: &'static str,
}

async fn bad_layers(snapshotter: &str) {
    require_root();
    let stack = Stack::start().await;
    let mut content = ContentClient::new(stack.containerd_channel().await);
    let mut sn = Snapshots::new(&stack, snapshotter, NS).await;
    // Layers go onto a child of an (empty) base, as every layer but the first: on overlayfs
    // that is the upper directory written in place; the first case runs on a first layer
    // (mounted) too.
    sn.prepare("base-active", "").await;
    sn.commit("base", "base-active").await;

    // A sentinel outside every snapshot, where the hostile entries aim.
    let outside = stack.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"untouched").unwrap();
    let outside_str = outside.display().to_string();
    let climb = format!("{}{}/escaped", "../".repeat(12), outside_str.trim_start_matches('/'));
    let via_symlink = outside_str.clone();

    let cases = [
        Case {
            name: "dotdot",
            blob: tar(&[Entry::File("ok", b"fine"), Entry::File(&climb, b"pwned")]),
            media_type: TAR,
            code: Code::InvalidArgument,
            says: "path escapes the root",
        },
        Case {
            name: "symlinked-parent",
            blob: gzip(&tar(&[
                Entry::Dir("etc/"),
                Entry::Symlink("etc/out", &via_symlink),
                Entry::File("etc/out/escaped", b"pwned"),
            ])),
            media_type: TAR_GZIP,
            code: Code::InvalidArgument,
            says: "dangling symlink",
        },
        Case {
            name: "hardlink-out",
            blob: tar(&[Entry::File("a", b"a"), Entry::HardLink("passwd", "../../../../../../etc/passwd")]),
            media_type: TAR,
            code: Code::InvalidArgument,
            says: "hard link target",
        },
        Case {
            name: "garbage",
            blob: b"this is not a tar, nor gzip, nor zstd".repeat(40),
            media_type: TAR_GZIP,
            code: Code::InvalidArgument,
            says: "malformed layer",
        },
    ];

    for (i, case) in cases.iter().enumerate() {
        let layer = descriptor(case.media_type, &case.blob);
        diff_common::ingest_held(&mut content, NS, case.name, &case.blob).await;
        let parents: &[&str] = if i == 0 { &["base", ""] } else { &["base"] };
        for parent in parents {
            let key = format!("bad-{}-on-{parent}", case.name);
            let mounts = sn.prepare(&key, parent).await;
            let err = sn.apply(&layer, mounts).await.expect_err(case.name);
            assert_eq!(err.code(), case.code, "{key}: {err:?}");
            assert!(err.message().contains(case.says), "{key}: {err:?}");
            check_left_clean(&mut sn, &stack, &key, &outside).await;
        }
    }

    // A blob whose stored bytes were corrupted on disk after it was committed.
    let good = gzip(&tar(&[Entry::Dir("dir/"), Entry::File("dir/file", &vec![7u8; 300_000])]));
    let layer = descriptor(TAR_GZIP, &good);
    diff_common::ingest_held(&mut content, NS, "corrupt", &good).await;
    let stored = stack.root.join("content/blobs/sha256").join(layer.digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let mounts = sn.prepare("bad-corrupt", "base").await;
    let err = sn.apply(&layer, mounts).await.expect_err("corrupt blob");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("is corrupt") && err.message().contains(&layer.digest), "{err:?}");
    check_left_clean(&mut sn, &stack, "bad-corrupt", &outside).await;

    // A descriptor that says another size than the blob has.
    let fine = tar(&[Entry::File("f", b"f")]);
    diff_common::ingest_held(&mut content, NS, "sized", &fine).await;
    let mut wrong_size = descriptor(TAR, &fine);
    wrong_size.size += 1;
    let mounts = sn.prepare("bad-size", "base").await;
    let err = sn.apply(&wrong_size, mounts).await.expect_err("wrong size");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("descriptor says"), "{err:?}");
    check_left_clean(&mut sn, &stack, "bad-size", &outside).await;

    // Refused before anything is read.
    let mounts = sn.prepare("refused", "base").await;
    let config = descriptor("application/vnd.oci.image.config.v1+json", &fine);
    let err = sn.apply(&config, mounts.clone()).await.expect_err("config is no layer");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("unsupported layer media type"), "{err:?}");
    let missing = descriptor(TAR, b"never ingested");
    let err = sn.apply(&missing, mounts).await.expect_err("missing blob");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains(&missing.digest), "{err:?}");
    check_left_clean(&mut sn, &stack, "refused", &outside).await;
}

/// The snapshot `key` is as prepared (empty), nothing escaped to `outside`, no temporary
/// mount is left, and the snapshot can be removed.
async fn check_left_clean(sn: &mut Snapshots, stack: &Stack, key: &str, outside: &Path) {
    let mounts = sn.mounts(key).await;
    {
        let mounted = Mounted::new(&mounts, &stack.dir.path().join("check").join(key));
        assert_eq!(listing(&mounted.target), Vec::<String>::new(), "{key}: the failed apply left files behind");
    }
    assert_eq!(listing(outside), ["precious"], "{key}: something was written outside the snapshot");
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"untouched");
    for escaped in ["escaped", "../escaped"] {
        assert!(!stack.root.join("snapshot").join(escaped).exists(), "{key}: {escaped}");
    }
    assert!(no_temp_mounts(stack), "{key}: a temporary mount is left");
    sn.remove(key).await.unwrap_or_else(|e| panic!("remove {key}: {e}"));
}

#[tokio::test]
async fn bad_layers_fail_cleanly_on_overlayfs() {
    bad_layers("overlayfs").await;
}

#[tokio::test]
async fn bad_layers_fail_cleanly_on_native() {
    bad_layers("native").await;
}
