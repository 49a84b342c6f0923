//! Layers made by another implementation: an image built with umoci (two layers, the second
//! deleting a file and replacing a directory), applied here with the native target, gives the
//! same tree as `umoci unpack`.

mod support;

use std::fs;
use std::os::unix::fs::{chown, symlink};
use std::path::Path;
use std::process::Command;

use berth_archive::{Compression, Limits, Target, apply_verified};
use support::{mkdir, mknod, run, snapshot, write};

fn umoci(args: &[&str], dir: &Path) {
    run(Command::new("umoci").args(args).current_dir(dir));
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
}

#[test]
fn umoci_image_applies_like_umoci_unpacks_it() {
    let found = Command::new("umoci").arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "umoci is not installed (needed by this test): apt-get install umoci, or run scripts/install-deps.sh"
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    umoci(&["init", "--layout", "image"], dir);
    umoci(&["new", "--image", "image:t"], dir);

    // Layer 1.
    umoci(&["unpack", "--image", "image:t", "one"], dir);
    let rootfs = dir.join("one/rootfs");
    write(&rootfs.join("etc/config"), b"key=value\n", 0o644);
    write(&rootfs.join("etc/keep"), b"kept\n", 0o600);
    chown(rootfs.join("etc/keep"), Some(1000), Some(100)).unwrap();
    write(&rootfs.join("data/dir/a"), b"a", 0o644);
    write(&rootfs.join("data/dir/sub/b"), b"b", 0o644);
    write(&rootfs.join("data/keep"), b"k", 0o644);
    let tool: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    write(&rootfs.join("bin/tool"), &tool, 0o4755);
    fs::hard_link(rootfs.join("bin/tool"), rootfs.join("bin/tool2")).unwrap();
    symlink("tool", rootfs.join("bin/link")).unwrap();
    mkdir(&rootfs.join("dev"), 0o755);
    mknod(&rootfs.join("dev/null"), libc::S_IFCHR, 0o666, 1, 3);
    mknod(&rootfs.join("fifo"), libc::S_IFIFO, 0o600, 0, 0);
    support::set_xattr(&rootfs.join("etc/config"), "user.note", b"n");
    umoci(&["repack", "--image", "image:t", "one"], dir);

    // Layer 2: delete a file, replace a directory, change a file.
    umoci(&["unpack", "--image", "image:t", "two"], dir);
    let rootfs = dir.join("two/rootfs");
    fs::remove_file(rootfs.join("etc/config")).unwrap();
    fs::remove_dir_all(rootfs.join("data/dir")).unwrap();
    mkdir(&rootfs.join("data/dir"), 0o700);
    write(&rootfs.join("data/dir/c"), b"c", 0o644);
    write(&rootfs.join("data/keep"), b"changed", 0o644);
    umoci(&["repack", "--image", "image:t", "two"], dir);

    umoci(&["unpack", "--image", "image:t", "final"], dir);
    let want = snapshot(&dir.join("final/rootfs"));

    let layout = dir.join("image");
    let index = json(&layout.join("index.json"));
    let manifest = json(&blob(&layout, index["manifests"][0]["digest"].as_str().unwrap()));
    let config = json(&blob(&layout, manifest["config"]["digest"].as_str().unwrap()));
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!((layers.len(), diff_ids.len()), (2, 2));

    let root = dir.join("applied");
    mkdir(&root, 0o755);
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let media_type = layer["mediaType"].as_str().unwrap();
        assert_eq!(Compression::from_media_type(media_type).unwrap(), Compression::Gzip);
        let file = fs::File::open(blob(&layout, layer["digest"].as_str().unwrap())).unwrap();
        let diff_id = diff_id.as_str().unwrap();
        let applied = apply_verified(file, &root, &Target::Native, Limits::default(), Some(diff_id)).unwrap();
        assert_eq!(applied.diff_id, diff_id);
    }
    let got = snapshot(&root);
    assert!(!got.entries.contains_key(Path::new("etc/config")));
    assert!(!got.entries.contains_key(Path::new("data/dir/a")));
    assert_eq!(got.entries[Path::new("data/dir/c")].content.as_deref(), Some(&b"c"[..]));
    assert_eq!(got, want);
}
