//! containerd's snapshotter test suite, ported: every scenario runs on both snapshotters with
//! real mounts (needs root). Each test is named `<snapshotter>::<scenario>`.

mod common;

use std::collections::HashMap;
use std::time::SystemTime;

use berth_snapshot::{Error, Kind};
use common::{Change, Flavor, Harness, Mounted, NS, gc_root};

/// Generates `overlayfs::<scenario>` and `native::<scenario>` tests.
macro_rules! on_both_snapshotters {
    ($($scenario:ident),* $(,)?) => {
        mod overlayfs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::common::Harness::new(super::common::Flavor::Overlay).await).await
                }
            )*
        }
        mod native {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::common::Harness::new(super::common::Flavor::Native).await).await
                }
            )*
        }
    };
}

on_both_snapshotters!(
    basic,
    stat_active,
    stat_committed,
    transitivity,
    prepare_and_view_refuse_a_taken_key,
    update_labels,
    remove_then_reuse_keys,
    remove_intermediate_snapshot,
    layer_file_update,
    remove_directory_in_lower_layer,
    chown,
    directory_permission_on_commit,
    deleted_files_in_child_snapshot,
    move_file_from_lower_layer,
    rename,
    special_files_and_xattrs,
    view_is_read_only,
    stat_in_list,
    layers_128_mount,
);

/// checkSnapshotterBasic: prepare, write, commit, a child on top, a view of the whole chain,
/// and removal in order.
async fn basic(h: Harness) {
    let initial = [
        Change::File("/foo", b"foo\n", 0o777),
        Change::Dir("/a", 0o755),
        Change::Dir("/a/b", 0o755),
        Change::Dir("/a/b/c", 0o755),
    ];
    let diff =
        [Change::File("/bar", b"bar\n", 0o777), Change::File("/foo", b"bar\n", 0o777), Change::RemoveAll("/a/b")];

    let mounts = h.sn.prepare(NS, "preparing", "", gc_root()).await.unwrap();
    assert!(!mounts.is_empty());
    {
        let mounted = Mounted::new(&mounts, &h.fresh_dir("preparing"));
        common::apply(&mounted.target, &initial);
    }
    h.sn.commit(NS, "committed", "preparing", gc_root()).await.unwrap();
    let committed = h.sn.stat(NS, "committed").await.unwrap();
    assert_eq!((committed.parent.as_str(), committed.kind), ("", Kind::Committed));
    assert!(matches!(h.sn.stat(NS, "preparing").await, Err(Error::NotFound(_))), "gone after commit");

    let mounts = h.sn.prepare(NS, "nextlayer", "committed", gc_root()).await.unwrap();
    {
        let mounted = Mounted::new(&mounts, &h.fresh_dir("next"));
        let flat = h.fresh_dir("flat");
        common::apply(&flat, &initial);
        common::compare_dirs(&flat, &mounted.target).unwrap();
        common::apply(&mounted.target, &diff);
    }
    let next = h.sn.stat(NS, "nextlayer").await.unwrap();
    assert_eq!((next.parent.as_str(), next.kind), ("committed", Kind::Active));
    h.sn.commit(NS, "committed-next", "nextlayer", gc_root()).await.unwrap();
    let committed_next = h.sn.stat(NS, "committed-next").await.unwrap();
    assert_eq!((committed_next.parent.as_str(), committed_next.kind), ("committed", Kind::Committed));
    assert!(h.sn.stat(NS, "nextlayer").await.is_err());

    let listed = h.sn.list(NS, &Default::default()).await.unwrap();
    assert_eq!(listed, [committed.clone(), committed_next.clone()], "list reports what stat does");

    let mounts = h.sn.view(NS, "nextnextlayer", "committed-next", gc_root()).await.unwrap();
    {
        let mounted = Mounted::new(&mounts, &h.fresh_dir("view"));
        let flat = h.fresh_dir("flat");
        common::apply(&flat, &initial);
        common::apply(&flat, &diff);
        common::compare_dirs(&flat, &mounted.target).unwrap();
    }
    h.sn.remove(NS, "nextnextlayer").await.unwrap();
    let err = h.sn.remove(NS, "committed").await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)) && err.to_string().contains("remove"), "{err}");
    h.sn.remove(NS, "committed-next").await.unwrap();
    h.sn.remove(NS, "committed").await.unwrap();
    assert!(h.sn.list(NS, &Default::default()).await.unwrap().is_empty());
    assert_eq!(std::fs::read_dir(h.root.join(h.sn.name()).join("snapshots")).unwrap().count(), 0, "dirs removed");
}

async fn prepare_write_foo(h: &Harness, key: &str, parent: &str, content: &[u8]) {
    let mounts = h.sn.prepare(NS, key, parent, gc_root()).await.unwrap();
    assert!(!mounts.is_empty());
    let mounted = Mounted::new(&mounts, &h.fresh_dir(key));
    std::fs::write(mounted.target.join("foo"), content).unwrap();
}

async fn stat_active(h: Harness) {
    prepare_write_foo(&h, "preparing", "", b"foo\n").await;
    let info = h.sn.stat(NS, "preparing").await.unwrap();
    assert_eq!((info.name.as_str(), info.kind, info.parent.as_str()), ("preparing", Kind::Active, ""));
    assert_eq!(info.labels, gc_root());
}

async fn stat_committed(h: Harness) {
    prepare_write_foo(&h, "preparing", "", b"foo\n").await;
    h.sn.commit(NS, "committed", "preparing", gc_root()).await.unwrap();
    let info = h.sn.stat(NS, "committed").await.unwrap();
    assert_eq!((info.name.as_str(), info.kind, info.parent.as_str()), ("committed", Kind::Committed, ""));
}

/// A <- B: B's parent is A, A has none.
async fn transitivity(h: Harness) {
    prepare_write_foo(&h, "preparing", "", b"foo\n").await;
    h.sn.commit(NS, "snapA", "preparing", gc_root()).await.unwrap();
    prepare_write_foo(&h, "next", "snapA", b"foo bar\n").await;
    h.sn.commit(NS, "snapB", "next", gc_root()).await.unwrap();
    let a = h.sn.stat(NS, "snapA").await.unwrap();
    let b = h.sn.stat(NS, "snapB").await.unwrap();
    let parent_of_b = h.sn.stat(NS, &b.parent).await.unwrap();
    assert_eq!(a.parent, "");
    assert_eq!(b.parent, "snapA");
    assert_eq!(parent_of_b.parent, "");
}

async fn prepare_and_view_refuse_a_taken_key(h: Harness) {
    h.sn.prepare(NS, "preparing", "", gc_root()).await.unwrap();
    h.sn.commit(NS, "snapA", "preparing", gc_root()).await.unwrap();
    h.sn.prepare(NS, "newlayer", "snapA", gc_root()).await.unwrap();
    assert!(matches!(h.sn.view(NS, "newlayer", "snapA", gc_root()).await, Err(Error::AlreadyExists(_))));
    h.sn.prepare(NS, "prepLayer", "snapA", gc_root()).await.unwrap();
    assert!(matches!(h.sn.prepare(NS, "prepLayer", "snapA", gc_root()).await, Err(Error::AlreadyExists(_))));
    h.sn.view(NS, "viewLayer", "snapA", gc_root()).await.unwrap();
    assert!(matches!(h.sn.view(NS, "viewLayer", "snapA", gc_root()).await, Err(Error::AlreadyExists(_))));
    // A committed name is taken too.
    assert!(matches!(h.sn.prepare(NS, "snapA", "", gc_root()).await, Err(Error::AlreadyExists(_))));
}

/// containerd's base set: c1 <- c2 <- a1, a2, c2 <- v1, v2.
async fn base_snapshots(h: &Harness) {
    h.sn.prepare(NS, "c1-a", "", gc_root()).await.unwrap();
    h.sn.commit(NS, "c1", "c1-a", gc_root()).await.unwrap();
    h.sn.prepare(NS, "c2-a", "c1", gc_root()).await.unwrap();
    h.sn.commit(NS, "c2", "c2-a", gc_root()).await.unwrap();
    h.sn.prepare(NS, "a1", "c2", gc_root()).await.unwrap();
    h.sn.prepare(NS, "a2", "", gc_root()).await.unwrap();
    h.sn.view(NS, "v1", "c2", gc_root()).await.unwrap();
    h.sn.view(NS, "v2", "", gc_root()).await.unwrap();
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// checkUpdate: timestamps, kinds and parents as made; labels replaced, set per key, removed;
/// immutable fields refused.
async fn update_labels(h: Harness) {
    let t1 = SystemTime::now();
    base_snapshots(&h).await;
    let t2 = SystemTime::now();
    for (name, kind, parent) in [
        ("c1", Kind::Committed, ""),
        ("c2", Kind::Committed, "c1"),
        ("a1", Kind::Active, "c2"),
        ("a2", Kind::Active, ""),
        ("v1", Kind::View, "c2"),
        ("v2", Kind::View, ""),
    ] {
        let st = h.sn.stat(NS, name).await.unwrap();
        assert!(st.created_at >= t1 && st.created_at <= t2, "{name}: created {:?}", st.created_at);
        assert_eq!(st.created_at, st.updated_at, "{name}");
        assert_eq!((st.kind, st.parent.as_str(), st.name.as_str()), (kind, parent, name));

        let root = "2024-06-01T00:00:00Z";
        let expected = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3"), ("containerd.io/gc.root", root)]);
        let u1 = SystemTime::now();
        let st = h.sn.update(NS, name, expected.clone(), &[]).await.unwrap();
        let u2 = SystemTime::now();
        assert_eq!(st.created_at, h.sn.stat(NS, name).await.unwrap().created_at);
        assert!(st.updated_at >= u1 && st.updated_at <= u2, "{name}: updated {:?}", st.updated_at);
        assert_eq!((st.kind, st.parent.as_str(), st.name.as_str()), (kind, parent, name));
        assert_eq!(st.labels, expected);

        let st = h
            .sn
            .update(NS, name, labels(&[("l1", "updated"), ("l4", "v4")]), &["labels.l1".into(), "labels.l2".into()])
            .await
            .unwrap();
        assert_eq!(st.labels, labels(&[("l1", "updated"), ("l3", "v3"), ("containerd.io/gc.root", root)]));

        let replacement = labels(&[("l4", "v4"), ("containerd.io/gc.root", root)]);
        let st = h.sn.update(NS, name, replacement.clone(), &["labels".into()]).await.unwrap();
        assert_eq!(st.labels, replacement);
        assert_eq!(h.sn.stat(NS, name).await.unwrap().labels, replacement, "stored");

        let err = h.sn.update(NS, name, replacement.clone(), &["parent".into()]).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("parent"), "{err}");
    }
    let err = h.sn.update(NS, "missing", HashMap::new(), &[]).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let too_big = labels(&[("big", &"x".repeat(5000))]);
    assert!(matches!(h.sn.update(NS, "c1", too_big, &[]).await, Err(Error::InvalidArgument(_))));
}

/// checkRemove: keys and names can be used again once removed.
async fn remove_then_reuse_keys(h: Harness) {
    h.sn.prepare(NS, "committed-a", "", gc_root()).await.unwrap();
    h.sn.commit(NS, "committed-1", "committed-a", gc_root()).await.unwrap();
    h.sn.prepare(NS, "reuse-1", "committed-1", gc_root()).await.unwrap();
    h.sn.remove(NS, "reuse-1").await.unwrap();
    h.sn.view(NS, "reuse-1", "committed-1", gc_root()).await.unwrap();
    h.sn.remove(NS, "reuse-1").await.unwrap();
    h.sn.prepare(NS, "reuse-1", "", gc_root()).await.unwrap();
    h.sn.remove(NS, "committed-1").await.unwrap();
    h.sn.commit(NS, "committed-1", "reuse-1", gc_root()).await.unwrap();
    assert!(matches!(h.sn.remove(NS, "reuse-1").await, Err(Error::NotFound(_))));
}

/// checkRemoveIntermediateSnapshot: a parent goes only after its children.
async fn remove_intermediate_snapshot(h: Harness) {
    h.sn.prepare(NS, "base", "", gc_root()).await.unwrap();
    h.sn.commit(NS, "committed-base", "base", gc_root()).await.unwrap();
    h.sn.prepare(NS, "intermediate", "committed-base", gc_root()).await.unwrap();
    h.sn.commit(NS, "committed-inter", "intermediate", gc_root()).await.unwrap();
    h.sn.prepare(NS, "toplayer", "committed-inter", gc_root()).await.unwrap();
    assert!(matches!(h.sn.remove(NS, "committed-inter").await, Err(Error::FailedPrecondition(_))));
    assert!(matches!(h.sn.remove(NS, "committed-base").await, Err(Error::FailedPrecondition(_))));
    h.sn.remove(NS, "toplayer").await.unwrap();
    h.sn.remove(NS, "committed-inter").await.unwrap();
    h.sn.remove(NS, "committed-base").await.unwrap();
}

/// docker#21555: a file updated in an upper layer, repeated across second boundaries.
async fn layer_file_update(h: Harness) {
    for round in 0..3 {
        let h = if round == 0 { &h } else { &Harness::new(h.flavor).await };
        h.check_chain(&[
            &[
                Change::Dir("/etc", 0o700),
                Change::File("/etc/hosts", b"mydomain 10.0.0.1", 0o644),
                Change::File("/etc/profile", b"PATH=/usr/bin", 0o644),
            ],
            &[
                Change::File("/etc/hosts", b"mydomain 10.0.0.2", 0o644),
                Change::File("/etc/profile", b"PATH=/usr/bin", 0o666),
                Change::Dir("/root", 0o700),
                Change::File("/root/.bashrc", b"PATH=/usr/sbin:/usr/bin", 0o644),
            ],
        ])
        .await;
    }
}

/// docker#25244: a directory removed and made again in an upper layer hides the old content.
async fn remove_directory_in_lower_layer(h: Harness) {
    h.check_chain(&[
        &[Change::Dir("/lib", 0o700), Change::File("/lib/hidden", b"", 0o644)],
        &[Change::RemoveAll("/lib"), Change::Dir("/lib", 0o700), Change::File("/lib/not-hidden", b"", 0o644)],
        &[Change::File("/lib/newfile", b"", 0o644)],
    ])
    .await;
}

/// docker#20240, #24913, #28391: ownership changed in an upper layer.
async fn chown(h: Harness) {
    h.check_chain(&[
        &[
            Change::Dir("/opt", 0o700),
            Change::Dir("/opt/a", 0o700),
            Change::Dir("/opt/a/b", 0o700),
            Change::File("/opt/a/b/file.txt", b"hello", 0o644),
        ],
        &[
            Change::Chown("/opt", 1, 1),
            Change::Chown("/opt/a", 1, 1),
            Change::Chown("/opt/a/b", 1, 1),
            Change::Chown("/opt/a/b/file.txt", 1, 1),
        ],
    ])
    .await;
}

/// docker#27298: directory owners across layers, with removals and re-creations.
async fn directory_permission_on_commit(h: Harness) {
    h.check_chain(&[
        &[
            Change::Dir("/dir1", 0o700),
            Change::Dir("/dir2", 0o700),
            Change::Dir("/dir3", 0o700),
            Change::Dir("/dir4", 0o700),
            Change::File("/dir4/f1", b"...", 0o644),
            Change::Dir("/dir5", 0o700),
            Change::File("/dir5/f1", b"...", 0o644),
            Change::Chown("/dir1", 1, 1),
            Change::Chown("/dir2", 1, 1),
            Change::Chown("/dir3", 1, 1),
            Change::Chown("/dir5", 1, 1),
            Change::Chown("/dir5/f1", 1, 1),
        ],
        &[
            Change::Chown("/dir2", 0, 0),
            Change::RemoveAll("/dir3"),
            Change::Chown("/dir4", 1, 1),
            Change::Chown("/dir4/f1", 1, 1),
        ],
        &[
            Change::Dir("/dir3", 0o700),
            Change::Chown("/dir3", 1, 1),
            Change::RemoveAll("/dir5"),
            Change::Dir("/dir5", 0o700),
            Change::Chown("/dir5", 1, 1),
        ],
    ])
    .await;
}

/// A file deleted in a child stays deleted in the child's children.
async fn deleted_files_in_child_snapshot(h: Harness) {
    h.check_chain(&[
        &[Change::File("/foo", b"foo\n", 0o777), Change::File("/foobar", b"foobar\n", 0o777)],
        &[Change::RemoveAll("/foobar")],
        &[],
    ])
    .await;
}

/// Files moved out of a lower layer's directory (by rename and by hard link + delete).
async fn move_file_from_lower_layer(h: Harness) {
    h.check_chain(&[
        &[
            Change::Dir("/dir1", 0o700),
            Change::File("/dir1/f1", b"Hello", 0o644),
            Change::Dir("/dir2", 0o700),
            Change::File("/dir2/f2", b"...", 0o644),
        ],
        &[
            Change::Dir("/dir3", 0o700),
            Change::File("/dir3/f1", b"Hello", 0o644),
            Change::RemoveAll("/dir1"),
            Change::Link("/dir2/f2", "/dir3/f2"),
            Change::RemoveAll("/dir2/f2"),
        ],
    ])
    .await;
}

/// docker#25409: renames of files over lower-layer entries. (Renaming a lower-layer directory
/// is EXDEV on overlayfs without redirect_dir, which is why containerd skips this scenario on
/// Linux; tools fall back to copying. Here the directory rename is checked on native only.)
async fn rename(h: Harness) {
    let dir_rename: &[Change] = if h.flavor == Flavor::Native { &[Change::Rename("/dir1", "/dir2")] } else { &[] };
    h.check_chain(&[
        &[
            Change::Dir("/dir1", 0o700),
            Change::Dir("/somefiles", 0o700),
            Change::File("/somefiles/f1", b"was here first!", 0o644),
            Change::File("/somefiles/f2", b"nothing interesting", 0o644),
        ],
        &[
            Change::File("/somefiles/f1-overwrite", b"new content 1", 0o644),
            Change::Rename("/somefiles/f1-overwrite", "/somefiles/f1"),
            Change::Rename("/somefiles/f2", "/somefiles/f3"),
        ],
        dir_rename,
    ])
    .await;
}

/// Symlinks, setuid and sticky bits and user xattrs survive layering (and native's copy).
async fn special_files_and_xattrs(h: Harness) {
    h.check_chain(&[
        &[
            Change::Dir("/bin", 0o755),
            Change::File("/bin/tool", b"#!/bin/sh\n", 0o4755),
            Change::Symlink("tool", "/bin/alias"),
            Change::Dir("/tmp", 0o1777),
            Change::Xattr("/bin/tool", "user.origin", b"layer-0"),
        ],
        &[Change::Xattr("/bin/tool", "user.origin", b"layer-1"), Change::Symlink("/bin/tool", "/tool")],
    ])
    .await;
}

/// checkSnapshotterViewReadonly: writes to a mounted view fail.
async fn view_is_read_only(h: Harness) {
    h.sn.prepare(NS, "preparing", "", gc_root()).await.unwrap();
    h.sn.commit(NS, "committed", "preparing", gc_root()).await.unwrap();
    let mounts = h.sn.view(NS, "view", "committed", gc_root()).await.unwrap();
    {
        let mounted = Mounted::new(&mounts, &h.fresh_dir("view-mount"));
        let err = std::fs::write(mounted.target.join("testfile"), b"testcontent").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
    // A view of a chain is read-only too (overlay without upperdir).
    h.sn.prepare(NS, "second", "committed", gc_root()).await.unwrap();
    h.sn.commit(NS, "committed-2", "second", gc_root()).await.unwrap();
    let mounts = h.sn.view(NS, "view-2", "committed-2", gc_root()).await.unwrap();
    {
        let mounted = Mounted::new(&mounts, &h.fresh_dir("view-mount"));
        let err = std::fs::write(mounted.target.join("testfile"), b"testcontent").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    }
    // And the Mounts of a view say so.
    let again = h.sn.mounts(NS, "view-2").await.unwrap();
    assert!(again.iter().any(|m| m.options.iter().any(|o| o == "ro") || m.kind == "overlay"));
    h.sn.remove(NS, "view").await.unwrap();
    h.sn.remove(NS, "view-2").await.unwrap();
}

/// checkStatInWalk: every listed snapshot stats the same.
async fn stat_in_list(h: Harness) {
    base_snapshots(&h).await;
    let listed = h.sn.list(NS, &Default::default()).await.unwrap();
    assert_eq!(listed.len(), 6);
    for info in listed {
        assert_eq!(h.sn.stat(NS, &info.name).await.unwrap(), info);
    }
}

/// check128LayersMount: 128 layers, each checked against a flat tree; the overlay lowerdir
/// option is longer than a page, so mounting needs relative lower dirs.
async fn layers_128_mount(h: Harness) {
    let mut layers: Vec<Vec<Change>> = vec![vec![
        Change::File("/bottom", b"way at the bottom\n", 0o777),
        Change::File("/overwriteme", b"FIRST!\n", 0o777),
        Change::Dir("/ADDHERE", 0o755),
        Change::Dir("/ONLYME", 0o755),
        Change::File("/ONLYME/bottom", b"bye!\n", 0o777),
    ]];
    for i in 1..128 {
        layers.push(vec![
            Change::OwnedFile("/overwriteme".into(), format!("{i} WAS HERE!\n").into_bytes(), 0o777),
            Change::OwnedFile(format!("/ADDHERE/file-{i}"), b"same\n".to_vec(), 0o755),
            Change::OwnedRemoveAll("/ONLYME".into()),
            Change::OwnedDir("/ONLYME".into(), 0o755),
            Change::OwnedFile(format!("/ONLYME/file-{i}"), b"only me!\n".to_vec(), 0o777),
        ]);
    }
    let flat = h.fresh_dir("flat");
    let mut parent = String::new();
    for (i, changes) in layers.iter().enumerate() {
        let name = format!("layer-{i}");
        h.layer(&name, &parent, changes).await;
        common::apply(&flat, changes);
        parent = name;
    }
    // The top of the chain: an active snapshot on all 128 layers, mounted and checked.
    let mounts = h.sn.prepare(NS, "top", &parent, gc_root()).await.unwrap();
    if h.flavor == Flavor::Overlay {
        let lowerdir = mounts[0].options.iter().find(|o| o.starts_with("lowerdir=")).unwrap();
        assert_eq!(lowerdir.matches(':').count(), 127, "128 lower layers");
        assert!(mounts[0].options.join(",").len() > 4096, "longer than a page");
    }
    let mounted = Mounted::new(&mounts, &h.fresh_dir("top"));
    common::compare_dirs(&flat, &mounted.target).unwrap();
    assert_eq!(std::fs::read(mounted.target.join("overwriteme")).unwrap(), b"127 WAS HERE!\n");
    assert_eq!(std::fs::read_dir(mounted.target.join("ONLYME")).unwrap().count(), 1);
    drop(mounted);
    let layer0 = h.sn.stat(NS, "layer-0").await.unwrap();
    assert_eq!(layer0.kind, Kind::Committed);
}
