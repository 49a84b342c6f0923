//! berth's own checks of containerd's snapshot rules beyond the ported suite: namespaces,
//! error codes, usage accounting, filters, concurrency and recovery after a crash.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use berth_core::filters::AnyOf;
use berth_snapshot::{Error, Kind};
use common::{Flavor, Harness, Mounted, NS, gc_root};

const BOTH: [Flavor; 2] = [Flavor::Overlay, Flavor::Native];

fn filters(list: &[&str]) -> AnyOf {
    AnyOf::parse(&list.iter().map(|f| f.to_string()).collect::<Vec<_>>()).unwrap()
}

#[tokio::test]
async fn namespaces_hold_separate_snapshots_under_the_same_keys() {
    for flavor in BOTH {
        let h = Harness::new(flavor).await;
        for ns in ["ns-a", "ns-b"] {
            let mounts = h.sn.prepare(ns, "key", "", HashMap::new()).await.unwrap();
            let mounted = Mounted::new(&mounts, &h.fresh_dir(ns));
            std::fs::write(mounted.target.join("who"), ns).unwrap();
            drop(mounted);
            h.sn.commit(ns, "base", "key", HashMap::new()).await.unwrap();
        }
        // Each namespace's "base" is its own.
        for ns in ["ns-a", "ns-b"] {
            let mounts = h.sn.view(ns, "look", "base", HashMap::new()).await.unwrap();
            let mounted = Mounted::new(&mounts, &h.fresh_dir("look"));
            assert_eq!(std::fs::read_to_string(mounted.target.join("who")).unwrap(), ns, "{flavor:?}");
        }
        assert!(matches!(h.sn.stat("ns-c", "base").await, Err(Error::NotFound(_))));
        assert!(matches!(h.sn.prepare("ns-c", "x", "base", HashMap::new()).await, Err(Error::NotFound(_))));
        h.sn.remove("ns-a", "look").await.unwrap();
        h.sn.remove("ns-a", "base").await.unwrap();
        assert_eq!(h.sn.stat("ns-b", "base").await.unwrap().kind, Kind::Committed, "other namespace untouched");
        let names: Vec<String> =
            h.sn.list("ns-b", &AnyOf::default()).await.unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["base", "look"]);
    }
}

#[tokio::test]
async fn errors_have_containerds_codes() {
    for flavor in BOTH {
        let h = Harness::new(flavor).await;
        let sn = &h.sn;
        sn.prepare(NS, "active", "", HashMap::new()).await.unwrap();
        sn.view(NS, "view", "", HashMap::new()).await.unwrap();

        let err = sn.prepare(NS, "active", "", HashMap::new()).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        assert!(err.to_string().contains("\"active\""), "names the key: {err}");
        let err = sn.prepare(NS, "child", "missing", HashMap::new()).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)) && err.to_string().contains("missing"), "{err}");
        let err = sn.prepare(NS, "child", "active", HashMap::new()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("not a committed"), "{err}");
        let err = sn.view(NS, "child", "view", HashMap::new()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        let err = sn.prepare(NS, "", "", HashMap::new()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)) && err.to_string().contains("empty"), "{err}");
        let big: HashMap<String, String> = [("k".to_string(), "v".repeat(4096))].into();
        assert!(matches!(sn.prepare(NS, "big", "", big.clone()).await, Err(Error::InvalidArgument(_))));

        let err = sn.commit(NS, "c", "view", HashMap::new()).await.unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "views cannot be committed: {err}");
        let err = sn.commit(NS, "c", "missing", HashMap::new()).await.unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err}");
        assert!(matches!(sn.commit(NS, "c", "active", big).await, Err(Error::InvalidArgument(_))));
        sn.commit(NS, "c", "active", HashMap::new()).await.unwrap();
        sn.prepare(NS, "active", "c", HashMap::new()).await.unwrap();
        let err = sn.commit(NS, "c", "active", HashMap::new()).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
        let err = sn.commit(NS, "c", "c", HashMap::new()).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)), "{err}");

        let err = sn.mounts(NS, "c").await.unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "committed snapshots have no mounts: {err}");
        assert!(matches!(sn.mounts(NS, "missing").await, Err(Error::NotFound(_))));
        assert!(!sn.mounts(NS, "view").await.unwrap().is_empty());
        assert_eq!(sn.mounts(NS, "active").await.unwrap(), sn.mounts(NS, "active").await.unwrap(), "stable");

        let err = sn.remove(NS, "c").await.unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(matches!(sn.remove(NS, "missing").await, Err(Error::NotFound(_))));
        assert!(matches!(sn.usage(NS, "missing").await, Err(Error::NotFound(_))));
        assert!(matches!(sn.stat(NS, "missing").await, Err(Error::NotFound(_))));
    }
}

#[tokio::test]
async fn commit_replaces_labels_and_keeps_the_parent() {
    for flavor in BOTH {
        let h = Harness::new(flavor).await;
        h.sn.prepare(NS, "base-a", "", [("a".to_string(), "1".to_string())].into()).await.unwrap();
        h.sn.commit(NS, "base", "base-a", [("b".to_string(), "2".to_string()), ("empty".into(), String::new())].into())
            .await
            .unwrap();
        let base = h.sn.stat(NS, "base").await.unwrap();
        assert_eq!(base.labels, HashMap::from([("b".to_string(), "2".to_string())]), "replaced, empty values dropped");
        h.sn.prepare(NS, "top-a", "base", HashMap::new()).await.unwrap();
        h.sn.commit(NS, "top", "top-a", HashMap::new()).await.unwrap();
        let top = h.sn.stat(NS, "top").await.unwrap();
        assert_eq!((top.parent.as_str(), top.kind), ("base", Kind::Committed));
        assert!(top.created_at >= base.created_at);
    }
}

#[tokio::test]
async fn list_filters_like_containerd() {
    let h = Harness::new(Flavor::Overlay).await;
    h.sn.prepare(NS, "c1-a", "", gc_root()).await.unwrap();
    h.sn.commit(NS, "c1", "c1-a", [("team".to_string(), "blue".to_string())].into()).await.unwrap();
    h.sn.prepare(NS, "a1", "c1", gc_root()).await.unwrap();
    h.sn.view(NS, "v1", "c1", HashMap::new()).await.unwrap();
    let names = |infos: Vec<berth_snapshot::Info>| infos.into_iter().map(|i| i.name).collect::<Vec<_>>();
    let list = |f: &'static [&'static str]| {
        let sn = &h.sn;
        async move { names(sn.list(NS, &filters(f)).await.unwrap()) }
    };
    assert_eq!(list(&[]).await, ["a1", "c1", "v1"]);
    assert_eq!(list(&["kind==committed"]).await, ["c1"]);
    assert_eq!(list(&["kind==active", "kind==view"]).await, ["a1", "v1"]);
    assert_eq!(list(&["parent==c1"]).await, ["a1", "v1"]);
    assert_eq!(list(&["parent==c1,kind==view"]).await, ["v1"]);
    assert_eq!(list(&["labels.team==blue"]).await, ["c1"]);
    assert_eq!(list(&[r#"labels."containerd.io/gc.root""#]).await, ["a1"]);
    assert_eq!(list(&["name~=^a"]).await, ["a1"]);
    assert!(list(&["name==nothing"]).await.is_empty());
}

#[tokio::test]
async fn usage_counts_blocks_and_inodes_of_the_snapshot_itself() {
    for flavor in BOTH {
        let h = Harness::new(flavor).await;
        let mounts = h.sn.prepare(NS, "a", "", HashMap::new()).await.unwrap();
        let empty = h.sn.usage(NS, "a").await.unwrap();
        assert_eq!(empty.inodes, 1, "{flavor:?}: just the root");
        {
            let mounted = Mounted::new(&mounts, &h.fresh_dir("a"));
            std::fs::write(mounted.target.join("data"), vec![1u8; 1 << 20]).unwrap();
            std::fs::hard_link(mounted.target.join("data"), mounted.target.join("again")).unwrap();
            std::fs::create_dir(mounted.target.join("dir")).unwrap();
        }
        let active = h.sn.usage(NS, "a").await.unwrap();
        assert_eq!(active.inodes, 3, "{flavor:?}: root, data (linked twice), dir: {active:?}");
        assert!(active.size >= empty.size + (1 << 20), "{active:?}");
        assert!(active.size < empty.size + (2 << 20), "hard link counted once: {active:?}");

        h.sn.commit(NS, "c", "a", HashMap::new()).await.unwrap();
        assert_eq!(h.sn.usage(NS, "c").await.unwrap(), active, "measured at commit");

        // A child only counts its own changes (overlay); native's copy counts everything.
        let mounts = h.sn.prepare(NS, "child", "c", HashMap::new()).await.unwrap();
        {
            let mounted = Mounted::new(&mounts, &h.fresh_dir("child"));
            std::fs::write(mounted.target.join("small"), b"x").unwrap();
        }
        let child = h.sn.usage(NS, "child").await.unwrap();
        match flavor {
            Flavor::Overlay => assert_eq!(child.inodes, 2, "{child:?}"),
            Flavor::Native => assert_eq!(child.inodes, 4, "{child:?}"),
        }
        h.sn.view(NS, "v", "c", HashMap::new()).await.unwrap();
        assert_eq!(h.sn.usage(NS, "v").await.unwrap(), Default::default(), "views use nothing of their own");
    }
}

#[tokio::test]
async fn native_copies_keep_owners_modes_links_and_devices() {
    let h = Harness::new(Flavor::Native).await;
    let mounts = h.sn.prepare(NS, "a", "", HashMap::new()).await.unwrap();
    {
        let mounted = Mounted::new(&mounts, &h.fresh_dir("a"));
        let t = &mounted.target;
        std::fs::write(t.join("file"), b"data").unwrap();
        std::os::unix::fs::lchown(t.join("file"), Some(7), Some(8)).unwrap();
        std::fs::hard_link(t.join("file"), t.join("link")).unwrap();
        nix::sys::stat::mknod(
            &t.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .unwrap();
        // An overlay whiteout is a 0/0 character device: copied as is.
        nix::sys::stat::mknod(
            &t.join(".wh.gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            libc::makedev(0, 0),
        )
        .unwrap();
    }
    h.sn.commit(NS, "c", "a", HashMap::new()).await.unwrap();
    let mounts = h.sn.prepare(NS, "b", "c", HashMap::new()).await.unwrap();
    let mounted = Mounted::new(&mounts, &h.fresh_dir("b"));
    let t = &mounted.target;
    let file = std::fs::metadata(t.join("file")).unwrap();
    assert_eq!((file.uid(), file.gid(), file.nlink()), (7, 8, 2));
    assert_eq!(file.ino(), std::fs::metadata(t.join("link")).unwrap().ino());
    assert_eq!(std::fs::metadata(t.join("null")).unwrap().rdev(), libc::makedev(1, 3));
    assert_eq!(std::fs::symlink_metadata(t.join(".wh.gone")).unwrap().rdev(), 0);
    // The copy is independent of the parent.
    std::fs::write(t.join("file"), b"changed").unwrap();
    drop(mounted);
    let mounts = h.sn.view(NS, "v", "c", HashMap::new()).await.unwrap();
    let mounted = Mounted::new(&mounts, &h.fresh_dir("v"));
    assert_eq!(std::fs::read(mounted.target.join("file")).unwrap(), b"data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_prepares_of_one_key_make_one_snapshot() {
    for flavor in BOTH {
        let h = Arc::new(Harness::new(flavor).await);
        h.sn.prepare(NS, "base-a", "", HashMap::new()).await.unwrap();
        h.sn.commit(NS, "base", "base-a", HashMap::new()).await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let h = Arc::clone(&h);
                tokio::spawn(async move { h.sn.prepare(NS, "same", "base", HashMap::new()).await })
            })
            .collect();
        let mut made = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => made += 1,
                Err(Error::AlreadyExists(_)) => {}
                Err(e) => panic!("{flavor:?}: {e}"),
            }
        }
        assert_eq!(made, 1, "{flavor:?}");
        // The losers' directories are gone: one for base, one for "same".
        let dirs = std::fs::read_dir(h.root.join(h.sn.name()).join("snapshots")).unwrap().count();
        assert_eq!(dirs, 2, "{flavor:?}");
        // A remove racing with a new child never removes a parent that has one.
        for round in 0..10 {
            let parent = format!("parent-{round}");
            h.sn.prepare(NS, "p-a", "", HashMap::new()).await.unwrap();
            h.sn.commit(NS, &parent, "p-a", HashMap::new()).await.unwrap();
            let removing = {
                let (h, parent) = (Arc::clone(&h), parent.clone());
                tokio::spawn(async move { h.sn.remove(NS, &parent).await })
            };
            let child = format!("child-{round}");
            let prepared = h.sn.prepare(NS, &child, &parent, HashMap::new()).await;
            match (removing.await.unwrap(), prepared) {
                (Ok(_), Err(Error::NotFound(_))) | (Err(Error::FailedPrecondition(_)), Ok(_)) => {}
                (removed, prepared) => panic!("{flavor:?}: remove {removed:?}, prepare child {prepared:?}"),
            }
            if h.sn.stat(NS, &child).await.is_ok() {
                assert_eq!(h.sn.stat(NS, &parent).await.unwrap().kind, Kind::Committed);
            }
        }
    }
}

#[tokio::test]
async fn cleanup_and_restart_remove_what_a_crash_left_behind() {
    for flavor in BOTH {
        let mut h = Harness::new(flavor).await;
        h.sn.prepare(NS, "kept", "", HashMap::new()).await.unwrap();
        let snapshots = h.root.join(h.sn.name()).join("snapshots");
        let kept: Vec<String> =
            std::fs::read_dir(&snapshots).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(kept.len(), 1);
        // What crashes leave: a half-built dir, a half-removed dir, a dir whose record was
        // removed (ids 1..next were handed out), and one no record ever named (id 999 was
        // never handed out: left alone).
        std::fs::create_dir_all(snapshots.join("new-5/fs")).unwrap();
        std::fs::create_dir_all(snapshots.join("rm-3/fs/deep")).unwrap();
        let orphan = h.sn.prepare(NS, "orphan", "", HashMap::new()).await.unwrap();
        let orphan_dir = std::path::PathBuf::from(&orphan[0].source);
        let orphan_dir =
            if flavor == Flavor::Overlay { orphan_dir.parent().unwrap().to_path_buf() } else { orphan_dir };
        // Keep a copy of the directory, drop the record, put the directory back.
        let saved = h.work.join("saved");
        std::fs::rename(&orphan_dir, &saved).unwrap();
        h.sn.remove(NS, "orphan").await.unwrap();
        std::fs::rename(&saved, &orphan_dir).unwrap();
        std::fs::create_dir_all(snapshots.join("999")).unwrap();

        assert_eq!(h.sn.cleanup().await.unwrap(), 3, "{flavor:?}");
        let mut left: Vec<String> =
            std::fs::read_dir(&snapshots).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut want = vec![kept[0].clone(), "999".to_string()];
        want.sort();
        assert_eq!(left, want, "{flavor:?}");

        // Opening cleans up the same way.
        std::fs::create_dir_all(snapshots.join("new-7")).unwrap();
        h.reopen().await;
        assert!(!snapshots.join("new-7").exists());
        assert_eq!(h.sn.stat(NS, "kept").await.unwrap().kind, Kind::Active);
        // Ids are not reused after a restart.
        let again = h.sn.prepare(NS, "again", "", HashMap::new()).await.unwrap();
        assert_ne!(again, orphan);
    }
}

#[tokio::test]
async fn keys_with_slashes_and_spaces_work() {
    let h = Harness::new(Flavor::Overlay).await;
    let key = "extract-123 sha256:abc/def%2F";
    h.sn.prepare(NS, key, "", HashMap::new()).await.unwrap();
    h.sn.commit(NS, "sha256:abc/def", key, HashMap::new()).await.unwrap();
    h.sn.prepare(NS, "k8s.io/1/x", "sha256:abc/def", HashMap::new()).await.unwrap();
    let infos = h.sn.list(NS, &AnyOf::default()).await.unwrap();
    let names: Vec<&str> = infos.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["k8s.io/1/x", "sha256:abc/def"]);
    assert!(matches!(h.sn.remove(NS, "sha256:abc/def").await, Err(Error::FailedPrecondition(_))));
    h.sn.remove(NS, "k8s.io/1/x").await.unwrap();
    h.sn.remove(NS, "sha256:abc/def").await.unwrap();
}
