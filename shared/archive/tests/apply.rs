//! Apply semantics (containerd's): whiteouts, opaque directories, replacement, implicit
//! parents, attributes.

mod support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, chown};
use std::path::Path;

use berth_archive::{Limits, Target, apply};
use support::{Layer, mkdir, raw_xattr, set_mtime, set_xattr, write};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

#[test]
fn opaque_marker_keeps_only_what_this_layer_created_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(&root.join("d/old1"), b"1", 0o644);
    write(&root.join("d/old2/sub/x"), b"x", 0o644);
    write(&root.join("d/keep/lowerfile"), b"l", 0o644);
    write(&root.join("other/untouched"), b"u", 0o644);
    let layer = Layer::new()
        .dir("d/keep/")
        .file("d/keep/new", b"n")
        // Implicit parents created by this layer count as created by it.
        .file("d/implicit/deep/file", b"i")
        .file("d/.wh..wh..opq", b"")
        .file("d/after", b"a")
        .bytes();
    apply(&layer[..], root, &Target::Native, Limits::default()).unwrap();
    assert_eq!(names(&root.join("d")), ["after", "implicit", "keep"]);
    assert_eq!(names(&root.join("d/keep")), ["new"]);
    assert_eq!(fs::read(root.join("d/implicit/deep/file")).unwrap(), b"i");
    assert_eq!(names(&root.join("other")), ["untouched"]);
}

#[test]
fn whiteouts_delete_recursively_or_become_devices() {
    let tmp = tempfile::tempdir().unwrap();
    let native = tmp.path().join("native");
    write(&native.join("d/sub/f"), b"f", 0o644);
    write(&native.join("file"), b"f", 0o644);
    let layer = Layer::new()
        .file(".wh.d", b"")
        .file(".wh.file", b"")
        .file(".wh.missing", b"")
        .file(".wh..wh.plnk", b"")
        .bytes();
    apply(&layer[..], &native, &Target::Native, Limits::default()).unwrap();
    assert!(names(&native).is_empty());

    let upper = tmp.path().join("upper");
    mkdir(&upper, 0o755);
    let mut h = tar::Header::new_ustar();
    h.set_path("dir/.wh.gone").unwrap();
    h.set_uid(7);
    h.set_gid(8);
    h.set_size(0);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b""[..]).unwrap();
    b.append_data(&mut tar::Header::new_ustar(), "dir/.wh..wh..opq", &b""[..]).unwrap();
    let layer = b.into_inner().unwrap();
    apply(&layer[..], &upper, &Target::Overlay { parents: vec![] }, Limits::default()).unwrap();
    let md = fs::symlink_metadata(upper.join("dir/gone")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!((md.rdev(), md.uid(), md.gid()), (0, 7, 8));
    assert_eq!(raw_xattr(&upper.join("dir"), "trusted.overlay.opaque"), Some(b"y".to_vec()));
    assert_eq!(names(&upper.join("dir")), ["gone"], "markers themselves are not written");
}

#[test]
fn entries_replace_what_is_there_except_dir_over_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(&root.join("was_dir/child"), b"c", 0o644);
    write(&root.join("was_file"), b"f", 0o644);
    write(&root.join("merged/old"), b"o", 0o644);
    set_xattr(&root.join("merged"), "user.old", b"1");
    let layer = Layer::new()
        .file("was_dir", b"now a file")
        .dir_with("was_file/", 0o711, &[])
        .dir_with("merged/", 0o700, &[("SCHILY.xattr.user.new", b"2")])
        .file("merged/new", b"n")
        .bytes();
    apply(&layer[..], root, &Target::Native, Limits::default()).unwrap();
    assert_eq!(fs::read(root.join("was_dir")).unwrap(), b"now a file");
    let md = fs::symlink_metadata(root.join("was_file")).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.permissions().mode() & 0o7777, 0o711);
    assert_eq!(names(&root.join("merged")), ["new", "old"]);
    assert_eq!(fs::metadata(root.join("merged")).unwrap().permissions().mode() & 0o7777, 0o700);
    assert_eq!(raw_xattr(&root.join("merged"), "user.old"), Some(b"1".to_vec()));
    assert_eq!(raw_xattr(&root.join("merged"), "user.new"), Some(b"2".to_vec()));
}

#[test]
fn implicit_parents_take_attributes_from_overlay_parents() {
    let tmp = tempfile::tempdir().unwrap();
    let (lower1, lower2) = (tmp.path().join("l1"), tmp.path().join("l2"));
    mkdir(&lower1.join("x"), 0o750);
    chown(lower1.join("x"), Some(5), Some(6)).unwrap();
    set_xattr(&lower1.join("x"), "user.p", b"v");
    set_xattr(&lower1.join("x"), "trusted.overlay.opaque", b"y");
    set_mtime(&lower1.join("x"), 1_234_567_890, 42);
    // The lower-most layer is hidden by the one above it.
    mkdir(&lower2.join("x"), 0o777);
    let upper = tmp.path().join("upper");
    mkdir(&upper, 0o755);
    let target = Target::Overlay { parents: vec![lower1.clone(), lower2.clone()] };
    apply(&Layer::new().file("x/y/z", b"z").bytes()[..], &upper, &target, Limits::default()).unwrap();
    let x = fs::symlink_metadata(upper.join("x")).unwrap();
    assert_eq!((x.permissions().mode() & 0o7777, x.uid(), x.gid()), (0o750, 5, 6));
    assert_eq!((x.mtime(), x.mtime_nsec()), (1_234_567_890, 42));
    assert_eq!(raw_xattr(&upper.join("x"), "user.p"), Some(b"v".to_vec()));
    assert_eq!(raw_xattr(&upper.join("x"), "trusted.overlay.opaque"), None, "opaqueness is not inherited");
    let y = fs::symlink_metadata(upper.join("x/y")).unwrap();
    assert_eq!((y.permissions().mode() & 0o7777, y.uid()), (0o755, 0));

    // Native: implicit parents are 0755 root.
    let native = tmp.path().join("native");
    mkdir(&native, 0o755);
    apply(&Layer::new().file("a/b/c", b"c").bytes()[..], &native, &Target::Native, Limits::default()).unwrap();
    assert_eq!(fs::metadata(native.join("a/b")).unwrap().permissions().mode() & 0o7777, 0o755);
}

#[test]
fn attributes_are_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let layer = Layer::new()
        .dir_with("d/", 0o1777, &[("mtime", b"1600000000.25")])
        .file_with("d/suid", b"s", 0o6755, &[("uid", b"3000000"), ("gid", b"70"), ("mtime", b"1500000000.123456789")])
        .file_with(
            "d/cap",
            b"c",
            0o755,
            &[("SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])],
        )
        .symlink("d/link", "suid")
        .hardlink("d/hl", "d/suid", 0o600)
        .bytes();
    apply(&layer[..], root, &Target::Native, Limits::default()).unwrap();
    let d = fs::symlink_metadata(root.join("d")).unwrap();
    assert_eq!((d.permissions().mode() & 0o7777, d.mtime(), d.mtime_nsec()), (0o1777, 1_600_000_000, 250_000_000));
    let s = fs::symlink_metadata(root.join("d/suid")).unwrap();
    assert_eq!((s.permissions().mode() & 0o7777, s.uid(), s.gid()), (0o6755, 3_000_000, 70));
    assert_eq!((s.mtime(), s.mtime_nsec(), s.nlink()), (1_500_000_000, 123_456_789, 2));
    assert_eq!(raw_xattr(&root.join("d/cap"), "security.capability").map(|v| v.len()), Some(20));
    assert_eq!(fs::read_link(root.join("d/link")).unwrap(), Path::new("suid"));
    // The hard link's header mode (0600) is not applied to the shared inode.
    assert_eq!(fs::symlink_metadata(root.join("d/hl")).unwrap().ino(), s.ino());
}

#[test]
fn hardlink_to_a_lower_layer_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write(&root.join("usr/bin/busybox"), b"bb", 0o755);
    apply(
        &Layer::new().hardlink("bin/sh", "usr/bin/busybox", 0o755).bytes()[..],
        root,
        &Target::Native,
        Limits::default(),
    )
    .unwrap();
    let a = fs::metadata(root.join("usr/bin/busybox")).unwrap();
    assert_eq!((fs::metadata(root.join("bin/sh")).unwrap().ino(), a.nlink()), (a.ino(), 2));
}
