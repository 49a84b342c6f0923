//! diff(A -> B) applied onto A gives B: contents, owners, modes, mtimes (whole seconds, as
//! layers carry them), xattrs, link targets, devices, fifos and shared inodes; through both
//! targets (native copy, overlay upper dir mounted over A) and both sources (a changed copy,
//! an overlay upper dir).

mod support;

use std::fs;
use std::fs::hard_link;
use std::io::Read;
use std::os::unix::fs::{chown, symlink};
use std::path::Path;

use berth_archive::{Compression, Limits, Source, Target, Written, apply, diff};
use support::{Overlay, Tree, copy_tree, mkdir, mknod, set_mtime, set_xattr, sha256, snapshot, write};

/// A v2 file capability granting CAP_NET_BIND_SERVICE (effective).
const CAPABILITY: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn build_a(a: &Path) {
    mkdir(a, 0o755);
    write(&a.join("etc/hosts"), b"127.0.0.1 localhost\n", 0o644);
    set_xattr(&a.join("etc/hosts"), "user.note", b"n");
    set_xattr(&a.join("etc/hosts"), "trusted.foo", b"1");
    write(&a.join("etc/owned"), b"o", 0o640);
    chown(a.join("etc/owned"), Some(1000), Some(1000)).unwrap();
    symlink("hosts", a.join("etc/link")).unwrap();
    let tool: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 256) as u8).collect();
    write(&a.join("usr/bin/tool"), &tool, 0o755);
    hard_link(a.join("usr/bin/tool"), a.join("usr/bin/tool-alias")).unwrap();
    write(&a.join("usr/bin/suid"), b"s", 0o4755);
    write(&a.join("opt/keep/a"), b"a", 0o644);
    write(&a.join("opt/keep/b"), b"b", 0o644);
    write(&a.join("to_delete"), b"x", 0o644);
    write(&a.join("dir_to_delete/sub/f"), b"f", 0o644);
    write(&a.join("replace_me/sub/x"), b"x", 0o644);
    write(&a.join("replace_me/y"), b"y", 0o644);
    write(&a.join("typechange"), b"file", 0o644);
    write(&a.join("dir2sym/inner"), b"i", 0o644);
    mkdir(&a.join("dev"), 0o755);
    mknod(&a.join("dev/null"), libc::S_IFCHR, 0o666, 1, 3);
    mkdir(&a.join("run"), 0o755);
    mknod(&a.join("run/fifo"), libc::S_IFIFO, 0o600, 0, 0);
    set_all_mtimes(a, Path::new(""), 1_500_000_000);
}

/// Every entry below `root` (children before their directory) to `sec`.500ns.
fn set_all_mtimes(root: &Path, rel: &Path, sec: i64) {
    let mut names: Vec<_> = fs::read_dir(root.join(rel)).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    for name in names {
        let rel = rel.join(name);
        if fs::symlink_metadata(root.join(&rel)).unwrap().is_dir() {
            set_all_mtimes(root, &rel, sec);
        }
        set_mtime(&root.join(&rel), sec, 500);
    }
}

/// The changes, made on a copy of A or through an overlay mount over A.
fn modify(b: &Path) {
    write(&b.join("etc/newfile"), b"new", 0o600);
    chown(b.join("etc/newfile"), Some(5), Some(6)).unwrap();
    set_mtime(&b.join("etc/newfile"), 1_700_000_000, 0);
    write(&b.join("new/dir/file"), b"deep", 0o644);
    fs::remove_file(b.join("to_delete")).unwrap();
    fs::remove_dir_all(b.join("dir_to_delete")).unwrap();
    // chmod, change and remove xattrs
    let hosts = b.join("etc/hosts");
    fs::set_permissions(&hosts, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    set_xattr(&hosts, "trusted.foo", b"2");
    support::remove_xattr(&hosts, "user.note");
    hard_link(&hosts, b.join("etc/hosts-hl")).unwrap();
    // chown and a new xattr
    chown(b.join("opt/keep/a"), Some(123), Some(456)).unwrap();
    set_xattr(&b.join("opt/keep/a"), "user.added", b"yes");
    // symlinks: new, retargeted
    symlink("/absolute/target", b.join("etc/newlink")).unwrap();
    set_mtime(&b.join("etc/newlink"), 1_700_000_001, 0);
    fs::remove_file(b.join("etc/link")).unwrap();
    symlink("owned", b.join("etc/link")).unwrap();
    // a new hard link to an unchanged file
    hard_link(b.join("opt/keep/b"), b.join("opt/keep/b-link")).unwrap();
    // devices and fifos
    mknod(&b.join("dev/zero"), libc::S_IFCHR, 0o666, 1, 5);
    mknod(&b.join("dev/loop0"), libc::S_IFBLK, 0o660, 7, 0);
    mknod(&b.join("run/fifo2"), libc::S_IFIFO, 0o644, 0, 0);
    // a directory replaced by a new one of the same name
    fs::remove_dir_all(b.join("replace_me")).unwrap();
    mkdir(&b.join("replace_me"), 0o750);
    write(&b.join("replace_me/new"), b"n", 0o644);
    // type changes
    fs::remove_file(b.join("typechange")).unwrap();
    write(&b.join("typechange/child"), b"c", 0o644);
    fs::remove_dir_all(b.join("dir2sym")).unwrap();
    symlink("etc", b.join("dir2sym")).unwrap();
    // setuid kept across a content change, a capability, a directory xattr
    write(&b.join("usr/bin/suid"), b"s2", 0o4755);
    write(&b.join("usr/bin/capped"), b"cap", 0o755);
    set_xattr(&b.join("usr/bin/capped"), "security.capability", &CAPABILITY);
    set_xattr(&b.join("etc"), "user.dirnote", b"d");
    // what only PAX can say: long names, large ids
    let long = b.join("l".repeat(120)).join("n".repeat(150));
    write(&long, b"long", 0o644);
    write(&b.join("bigid"), b"id", 0o644);
    chown(b.join("bigid"), Some(3_000_000), Some(3_000_001)).unwrap();
    // a larger file
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    write(&b.join("opt/big"), &big, 0o644);
}

fn assert_same_tree(got: &Tree, want: &Tree) {
    let keys: std::collections::BTreeSet<_> = got.entries.keys().chain(want.entries.keys()).collect();
    let mut diffs = Vec::new();
    for key in keys {
        let (g, w) = (got.entries.get(key), want.entries.get(key));
        if g != w {
            diffs.push(format!("{}:\n  got  {g:?}\n  want {w:?}", key.display()));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
    assert_eq!(got.hardlinks, want.hardlinks, "hard link groups differ");
}

fn uncompressed(layer: &[u8], compression: Compression) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        Compression::None => out.extend_from_slice(layer),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(layer).read_to_end(&mut out).unwrap();
        }
        Compression::Zstd => out = zstd::decode_all(layer).unwrap(),
    }
    out
}

/// Diffs twice (the bytes must be identical) and checks what `diff` reported.
fn make_layer(lower: &Path, upper: &Path, source: Source, compression: Compression) -> (Vec<u8>, Written) {
    let mut layer = Vec::new();
    let written = diff(lower, upper, source, compression, &mut layer).unwrap();
    let mut again = Vec::new();
    assert_eq!(diff(lower, upper, source, compression, &mut again).unwrap(), written);
    assert!(layer == again, "the same input gave different bytes");
    assert_eq!(written.size, layer.len() as u64);
    assert_eq!(written.compressed_digest, sha256(&layer));
    assert_eq!(written.diff_id, sha256(&uncompressed(&layer, compression)));
    assert_eq!(Compression::detect(&layer), compression);
    (layer, written)
}

fn entry_names(tar: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(tar);
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let kind = e.header().entry_type();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let name = if name.len() > 40 { format!("{}...", &name[..40]) } else { name };
            match kind {
                tar::EntryType::Link => format!("{name} => {}", String::from_utf8_lossy(&e.link_name_bytes().unwrap())),
                _ => name,
            }
        })
        .collect()
}

/// Applies `layer` onto a copy of A, and into an empty upper dir mounted over A, and checks
/// that both give `want`.
fn check_apply(tmp: &Path, a: &Path, layer: &[u8], written: &Written, want: &Tree) {
    let c = tmp.join("native");
    copy_tree(a, &c);
    let applied = apply(layer, &c, &Target::Native, Limits::default()).unwrap();
    assert_eq!(applied.diff_id, written.diff_id);
    assert_same_tree(&snapshot(&c), want);

    let upper = tmp.join("applied-upper");
    mkdir(&upper, 0o755);
    let target = Target::Overlay { parents: vec![a.to_owned()] };
    let applied = apply(layer, &upper, &target, Limits::default()).unwrap();
    assert_eq!(applied.diff_id, written.diff_id);
    let mount = Overlay::mount(a, &upper, &tmp.join("applied-work"), &tmp.join("applied-merged"));
    assert_same_tree(&snapshot(&mount.merged), want);
}

#[test]
fn compare_diff_applies_back_to_the_changed_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build_a(&a);
    copy_tree(&a, &b);
    modify(&b);
    let want = snapshot(&b);

    let (layer, written) = make_layer(&a, &b, Source::Compare, Compression::Gzip);
    let names = entry_names(&uncompressed(&layer, Compression::Gzip));
    let expected = [
        "bigid",
        "dev/",
        "dev/loop0",
        "dev/zero",
        "dir2sym",
        ".wh.dir_to_delete",
        "etc/",
        "etc/hosts",
        "etc/hosts-hl => etc/hosts",
        "etc/link",
        "etc/newfile",
        "etc/newlink",
        "llllllllllllllllllllllllllllllllllllllll...",
        "llllllllllllllllllllllllllllllllllllllll...",
        "new/",
        "new/dir/",
        "new/dir/file",
        "opt/",
        "opt/big",
        "opt/keep/",
        "opt/keep/a",
        "opt/keep/b-link",
        "opt/keep/b => opt/keep/b-link",
        "replace_me/",
        "replace_me/new",
        "replace_me/.wh.sub",
        "replace_me/.wh.y",
        "run/",
        "run/fifo2",
        ".wh.to_delete",
        "typechange/",
        "typechange/child",
        "usr/",
        "usr/bin/",
        "usr/bin/capped",
        "usr/bin/suid",
    ];
    assert_eq!(names, expected);
    check_apply(tmp.path(), &a, &layer, &written, &want);

    // The other compressions carry the same tar.
    for compression in [Compression::None, Compression::Zstd] {
        let (other, w) = make_layer(&a, &b, Source::Compare, compression);
        assert_eq!(w.diff_id, written.diff_id);
        if compression == Compression::None {
            assert_eq!(w.compressed_digest, written.diff_id);
        }
        let c = tmp.path().join(format!("native-{compression:?}"));
        copy_tree(&a, &c);
        apply(&other[..], &c, &Target::Native, Limits::default()).unwrap();
        assert_same_tree(&snapshot(&c), &want);
    }
}

#[test]
fn overlay_upper_diff_applies_back_to_the_merged_view() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    build_a(&a);
    let upper = tmp.path().join("upper");
    mkdir(&upper, 0o755);
    let want = {
        let mount = Overlay::mount(&a, &upper, &tmp.path().join("work"), &tmp.path().join("merged"));
        modify(&mount.merged);
        snapshot(&mount.merged)
    };
    assert_eq!(support::raw_xattr(&upper.join("replace_me"), "trusted.overlay.opaque"), Some(b"y".to_vec()));

    let (layer, written) = make_layer(&a, &upper, Source::OverlayUpper, Compression::Zstd);
    let names = entry_names(&uncompressed(&layer, Compression::Zstd));
    for expected in
        [".wh.to_delete", ".wh.dir_to_delete", "replace_me/", "replace_me/.wh..wh..opq", "typechange/.wh..wh..opq"]
    {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:#?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("usr/bin/tool")), "unchanged files are not in the layer");
    check_apply(tmp.path(), &a, &layer, &written, &want);
}

#[test]
fn identical_trees_give_an_empty_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    build_a(&a);
    copy_tree(&a, &b);
    let (layer, written) = make_layer(&a, &b, Source::Compare, Compression::None);
    assert_eq!(layer, vec![0u8; 1024], "only the end-of-archive blocks");
    assert_eq!(written.diff_id, sha256(&[0u8; 1024]));
}
