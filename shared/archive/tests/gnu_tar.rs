//! Interoperability with GNU tar both ways: its archives (PAX and GNU formats, xattrs, long
//! names) apply to the tree it archived, and our layers extract with it to the tree we diffed.

mod support;

use std::fs;
use std::os::unix::fs::{chown, symlink};
use std::path::Path;
use std::process::{Command, Stdio};

use berth_archive::{Compression, Limits, Source, Target, apply, diff};
use support::{mkdir, mknod, set_xattr, snapshot, write};

fn build(src: &Path) {
    write(&src.join("etc/conf"), b"c", 0o640);
    chown(src.join("etc/conf"), Some(33), Some(44)).unwrap();
    set_xattr(&src.join("etc/conf"), "user.k", b"v");
    set_xattr(&src.join("etc"), "trusted.t", b"dir");
    let long = src.join("d".repeat(110)).join("f".repeat(130));
    write(&long, b"long name", 0o600);
    symlink("x".repeat(150), src.join("longlink")).unwrap();
    fs::hard_link(src.join("etc/conf"), src.join("conf-hl")).unwrap();
    write(&src.join("bin/suid"), b"s", 0o4711);
    mkdir(&src.join("dev"), 0o755);
    mknod(&src.join("dev/tty"), libc::S_IFCHR, 0o620, 5, 0);
    mknod(&src.join("fifo"), libc::S_IFIFO, 0o640, 0, 0);
    write(&src.join("empty"), b"", 0o444);
}

fn gnu_tar(format: &str, src: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .arg(format!("--format={format}"))
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(src)
        .args(["-cf", "-", "."])
        .output()
        .expect("GNU tar runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn gnu_tar_archives_apply_to_the_same_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    build(&src);
    let want = snapshot(&src);
    for format in ["pax", "gnu"] {
        let layer = gnu_tar(format, &src);
        let root = tmp.path().join(format!("applied-{format}"));
        mkdir(&root, 0o755);
        apply(&layer[..], &root, &Target::Native, Limits::default()).unwrap();
        let mut got = snapshot(&root);
        if format == "gnu" {
            // The GNU format has no xattrs.
            for info in got.entries.values_mut() {
                info.xattrs.clear();
            }
            let mut want = want.clone();
            for info in want.entries.values_mut() {
                info.xattrs.clear();
            }
            assert_eq!(got, want, "format {format}");
        } else {
            assert_eq!(got, want, "format {format}");
        }
    }
}

#[test]
fn our_layers_extract_with_gnu_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let (empty, src) = (tmp.path().join("empty"), tmp.path().join("src"));
    mkdir(&empty, 0o755);
    build(&src);
    let want = snapshot(&src);
    let mut layer = Vec::new();
    diff(&empty, &src, Source::Compare, Compression::None, &mut layer).unwrap();
    let out = tmp.path().join("out");
    mkdir(&out, 0o755);
    let mut child = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", "-", "-C"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), &layer).unwrap();
    drop(child.stdin.take());
    let result = child.wait_with_output().unwrap();
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    assert_eq!(snapshot(&out), want);
}
