//! Hostile layers: every case checks that nothing outside the root changed (a sentinel
//! directory next to the root, and that nothing else appeared next to it).

mod support;

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use berth_archive::{Applied, Error, Limits, Target, apply, apply_verified};
use support::{Layer, Tree, raw_xattr, sha256, snapshot};

struct Host {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
    sentinel: PathBuf,
    before: Tree,
}

impl Host {
    fn new() -> Host {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let root = dir.join("root");
        support::mkdir(&root, 0o755);
        let sentinel = dir.join("sentinel");
        support::mkdir(&sentinel.join("sub"), 0o700);
        support::write(&sentinel.join("secret"), b"secret", 0o600);
        support::write(&sentinel.join("sub/inner"), b"inner", 0o644);
        support::set_xattr(&sentinel.join("secret"), "user.mark", b"1");
        let mut host = Host {
            _tmp: tmp,
            dir,
            root,
            sentinel,
            before: Tree { entries: Default::default(), hardlinks: Default::default() },
        };
        host.before = host.outside();
        host
    }

    /// Everything next to the root and below it, except the root's own content.
    fn outside(&self) -> Tree {
        let mut tree = snapshot(&self.dir);
        tree.entries.retain(|p, _| !p.starts_with("root"));
        tree.hardlinks.retain(|group| !group.iter().any(|p| p.starts_with("root")));
        tree
    }

    fn assert_untouched(&self) {
        assert_eq!(self.outside(), self.before, "something outside the root changed");
        assert_eq!(fs::metadata(self.sentinel.join("secret")).unwrap().nlink(), 1);
        assert_eq!(raw_xattr(&self.sentinel, "trusted.overlay.opaque"), None);
    }

    fn apply(&self, layer: &[u8], target: &Target) -> Result<Applied, Error> {
        apply(layer, &self.root, target, Limits::default())
    }

    /// `path` (absolute on the host) as it lands inside the root.
    fn inside(&self, path: &Path) -> PathBuf {
        self.root.join(path.strip_prefix("/").unwrap())
    }

    fn sentinel_str(&self) -> String {
        self.sentinel.to_str().unwrap().to_owned()
    }
}

fn targets() -> [Target; 2] {
    [Target::Native, Target::Overlay { parents: vec![] }]
}

fn invalid(result: Result<Applied, Error>) -> (String, String) {
    match result {
        Err(Error::InvalidEntry { path, reason }) => (path, reason),
        other => panic!("expected an invalid entry error, got {other:?}"),
    }
}

#[test]
fn absolute_paths_land_inside_the_root() {
    for target in targets() {
        let host = Host::new();
        let name = format!("{}/pwned", host.sentinel_str());
        host.apply(&Layer::new().file(&name, b"x").bytes(), &target).unwrap();
        assert_eq!(fs::read(host.inside(&host.sentinel).join("pwned")).unwrap(), b"x");
        host.assert_untouched();
    }
}

#[test]
fn dotdot_components_are_refused() {
    for target in targets() {
        for name in ["../sentinel/pwned", "a/../../sentinel/pwned", "./../sentinel", ".."] {
            let host = Host::new();
            let (path, reason) = invalid(host.apply(&Layer::new().file(name, b"x").bytes(), &target));
            assert_eq!((path.as_str(), reason.as_str()), (name, "path escapes the root"));
            host.assert_untouched();
        }
    }
    let host = Host::new();
    let err = host.apply(&Layer::new().file("../sentinel/pwned", b"x").bytes(), &Target::Native).unwrap_err();
    assert_eq!(err.to_string(), "invalid layer entry \"../sentinel/pwned\": path escapes the root");
    assert!(err.is_invalid_layer());
}

#[test]
fn symlink_to_root_resolves_inside_the_root() {
    for target in targets() {
        let host = Host::new();
        let name = format!("rootlink{}/pwned", host.sentinel_str());
        host.apply(&Layer::new().symlink("rootlink", "/").file(&name, b"x").bytes(), &target).unwrap();
        assert_eq!(fs::read(host.inside(&host.sentinel).join("pwned")).unwrap(), b"x");
        assert_eq!(fs::read_link(host.root.join("rootlink")).unwrap(), Path::new("/"));
        host.assert_untouched();
    }
}

#[test]
fn symlink_to_dotdot_stops_at_the_root() {
    for target in targets() {
        let host = Host::new();
        let layer = Layer::new()
            .symlink("up", "..")
            .symlink("sub/up2", "../../..")
            .file("up/sentinel/pwned", b"x")
            .file("sub/up2/sentinel/also", b"y")
            .bytes();
        host.apply(&layer, &target).unwrap();
        assert_eq!(fs::read(host.root.join("sentinel/pwned")).unwrap(), b"x");
        assert_eq!(fs::read(host.root.join("sentinel/also")).unwrap(), b"y");
        host.assert_untouched();
    }
}

#[test]
fn symlink_out_of_the_root_is_not_written_through() {
    for target in targets() {
        // A file under a symlink to a host directory: that directory does not exist inside the
        // root, and the layer cannot create it through the symlink.
        let host = Host::new();
        let layer = Layer::new().symlink("out", &host.sentinel_str()).file("out/pwned", b"x").bytes();
        let (path, reason) = invalid(host.apply(&layer, &target));
        assert_eq!((path.as_str(), reason.as_str()), ("out/pwned", "parent \"out\" is a dangling symlink"));
        host.assert_untouched();

        // The same name as a file or a directory replaces the symlink itself.
        let host = Host::new();
        let secret = host.sentinel.join("secret");
        let layer = Layer::new()
            .symlink("f", secret.to_str().unwrap())
            .file("f", b"replaced")
            .symlink("d", &host.sentinel_str())
            .dir_with("d/", 0o777, &[])
            .bytes();
        host.apply(&layer, &target).unwrap();
        assert_eq!(fs::read(host.root.join("f")).unwrap(), b"replaced");
        assert!(fs::symlink_metadata(host.root.join("d")).unwrap().is_dir());
        host.assert_untouched();
    }
}

#[test]
fn hardlink_to_symlink_does_not_chmod_through_it() {
    // CVE-2021-32760: a hard link to a symlink whose header mode was then chmod-ed onto the
    // symlink's target on the host.
    for target in targets() {
        let host = Host::new();
        let secret = host.sentinel.join("secret");
        let layer = Layer::new().symlink("victim", secret.to_str().unwrap()).hardlink("hl", "victim", 0o777).bytes();
        host.apply(&layer, &target).unwrap();
        let hl = fs::symlink_metadata(host.root.join("hl")).unwrap();
        let victim = fs::symlink_metadata(host.root.join("victim")).unwrap();
        assert!(hl.file_type().is_symlink());
        assert_eq!((hl.ino(), hl.nlink()), (victim.ino(), 2));
        host.assert_untouched();
    }
}

#[test]
fn hardlinks_out_of_the_root_are_refused() {
    for target in targets() {
        let host = Host::new();
        let secret = format!("{}/secret", host.sentinel_str());
        let (path, reason) =
            invalid(host.apply(&Layer::new().hardlink("hl", "../sentinel/secret", 0o644).bytes(), &target));
        assert_eq!(
            (path.as_str(), reason.as_str()),
            ("hl", "hard link target \"../sentinel/secret\": path escapes the root")
        );
        host.assert_untouched();

        let missing = |link: &str| format!("hard link target {link:?} does not exist in the root");
        let (_, reason) = invalid(host.apply(&Layer::new().hardlink("hl", &secret, 0o644).bytes(), &target));
        assert_eq!(reason, missing(&secret));
        host.assert_untouched();

        let host = Host::new();
        let layer = Layer::new().symlink("s", &host.sentinel_str()).hardlink("hl", "s/secret", 0o644).bytes();
        let (_, reason) = invalid(host.apply(&layer, &target));
        assert_eq!(reason, missing("s/secret"));
        host.assert_untouched();

        let host = Host::new();
        let through_root = format!("s{secret}");
        let layer = Layer::new().symlink("s", "/").hardlink("hl", &through_root, 0o644).bytes();
        let (_, reason) = invalid(host.apply(&layer, &target));
        assert_eq!(reason, missing(&through_root));
        host.assert_untouched();

        // A link to an in-root symlink pointing out links the symlink, not its target.
        let host = Host::new();
        let layer = Layer::new().symlink("s", &secret).hardlink("hl", "s", 0o644).bytes();
        host.apply(&layer, &target).unwrap();
        assert_eq!(fs::read_link(host.root.join("hl")).unwrap(), Path::new(&secret));
        host.assert_untouched();

        // A link to a directory is refused.
        let host = Host::new();
        let (_, reason) = invalid(host.apply(&Layer::new().dir("d/").hardlink("hl", "d", 0o644).bytes(), &target));
        assert_eq!(reason, "hard link target \"d\" is a directory");
        host.assert_untouched();
    }
}

#[test]
fn whiteouts_cannot_name_dotdot() {
    for target in targets() {
        for name in [".wh..", "sub/.wh..", ".wh...", "sub/.wh."] {
            let host = Host::new();
            let (path, reason) = invalid(host.apply(&Layer::new().file(name, b"").bytes(), &target));
            assert_eq!((path.as_str(), reason.as_str()), (name, "whiteout names no entry in its directory"));
            host.assert_untouched();
        }
    }
}

#[test]
fn whiteouts_do_not_reach_through_symlinks() {
    for target in targets() {
        let native = target == Target::Native;
        // `up` -> `..` is the root: `.wh.sentinel` there names root/sentinel.
        let host = Host::new();
        host.apply(&Layer::new().symlink("up", "..").file("up/.wh.sentinel", b"").bytes(), &target).unwrap();
        assert_eq!(fs::symlink_metadata(host.root.join("sentinel")).is_ok(), !native);
        host.assert_untouched();

        // Through a symlink to the host directory: refused (it does not exist in the root).
        let host = Host::new();
        let layer = Layer::new().symlink("s", &host.sentinel_str()).file("s/.wh.secret", b"").bytes();
        let (_, reason) = invalid(host.apply(&layer, &target));
        assert_eq!(reason, "parent \"s\" is a dangling symlink");
        host.assert_untouched();

        // Through a symlink to `/`: lands inside the root.
        let host = Host::new();
        let name = format!("s{}/.wh.secret", host.sentinel_str());
        host.apply(&Layer::new().symlink("s", "/").file(&name, b"").bytes(), &target).unwrap();
        let landed = fs::symlink_metadata(host.inside(&host.sentinel).join("secret"));
        if native {
            assert!(landed.is_err());
        } else {
            let md = landed.unwrap();
            assert!(md.file_type().is_char_device() && md.rdev() == 0);
        }
        host.assert_untouched();

        // Whiting out a symlink removes the symlink, not what it points to.
        let host = Host::new();
        let layer = Layer::new().symlink("s", &host.sentinel_str()).file(".wh.s", b"").bytes();
        host.apply(&layer, &target).unwrap();
        let s = fs::symlink_metadata(host.root.join("s"));
        if native {
            assert!(s.is_err());
        } else {
            assert!(s.unwrap().file_type().is_char_device());
        }
        host.assert_untouched();

        // An opaque marker through a symlink to `/` marks (or clears) a directory in the root.
        let host = Host::new();
        let name = format!("s{}/.wh..wh..opq", host.sentinel_str());
        host.apply(&Layer::new().symlink("s", "/").file(&name, b"").bytes(), &target).unwrap();
        let marked = raw_xattr(&host.inside(&host.sentinel), "trusted.overlay.opaque");
        assert_eq!(marked, (!native).then(|| b"y".to_vec()));
        host.assert_untouched();
    }
}

#[test]
fn opaque_directory_removes_symlinks_not_their_targets() {
    let host = Host::new();
    support::mkdir(&host.root.join("d"), 0o755);
    std::os::unix::fs::symlink(&host.sentinel, host.root.join("d/s")).unwrap();
    std::os::unix::fs::symlink(host.sentinel.join("secret"), host.root.join("d/f")).unwrap();
    let layer = Layer::new().dir("d/").file("d/new", b"n").file("d/.wh..wh..opq", b"").bytes();
    host.apply(&layer, &Target::Native).unwrap();
    let names: Vec<_> = fs::read_dir(host.root.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("new")]);
    host.assert_untouched();
}

#[test]
fn overlay_xattrs_in_a_layer_are_refused() {
    let cases: [(&str, &[u8]); 3] =
        [("trusted.overlay.opaque", b"y"), ("trusted.overlay.redirect", b"/x"), ("user.overlay.origin", b"o")];
    for target in targets() {
        for (key, value) in cases {
            let host = Host::new();
            let record = format!("SCHILY.xattr.{key}");
            let layer = Layer::new().dir_with("d/", 0o755, &[(&record, value)]).bytes();
            let (path, reason) = invalid(host.apply(&layer, &target));
            assert_eq!(path, "d");
            assert_eq!(reason, format!("refusing xattr {key}: overlayfs metadata must not come from a layer"));
            assert!(fs::symlink_metadata(host.root.join("d")).is_err(), "nothing was created for the entry");

            let host = Host::new();
            let layer = Layer::new().file_with("f", b"x", 0o644, &[(&record, value)]).bytes();
            let (path, _) = invalid(host.apply(&layer, &target));
            assert_eq!(path, "f");
            assert!(fs::symlink_metadata(host.root.join("f")).is_err());
            host.assert_untouched();
        }
    }
}

/// A layer with one 64 MiB file of zeros, compressed to a few dozen KiB.
fn bomb(zstd: bool) -> Vec<u8> {
    let size = 64u64 << 20;
    let mut header = tar::Header::new_ustar();
    header.set_path("zeros").unwrap();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&header, io::repeat(0).take(size)).unwrap();
    let raw = tar.into_inner().unwrap();
    if zstd { zstd::encode_all(&raw[..], 3).unwrap() } else { support::gzip(&raw) }
}

#[test]
fn decompression_bombs_are_bounded() {
    for zstd in [false, true] {
        let layer = bomb(zstd);
        assert!(layer.len() < 1 << 20, "the bomb is small: {}", layer.len());
        for target in targets() {
            let host = Host::new();
            let limit = 1 << 20;
            let err = apply(&layer[..], &host.root, &target, Limits { max_uncompressed_bytes: limit }).unwrap_err();
            assert!(matches!(err, Error::TooLarge { limit: 1048576 }), "{err:?}");
            assert_eq!(err.to_string(), "layer is larger than the limit of 1048576 bytes uncompressed");
            // Extraction stopped at the limit.
            let written = fs::metadata(host.root.join("zeros")).map(|m| m.len()).unwrap_or(0);
            assert!(written <= limit, "{written} bytes written");
            host.assert_untouched();
        }
    }
}

#[test]
fn size_limit_is_exact() {
    let layer = Layer::new().file("f", &[1u8; 3000]).bytes();
    let len = layer.len() as u64;
    let host = Host::new();
    let ok = apply(&layer[..], &host.root, &Target::Native, Limits { max_uncompressed_bytes: len }).unwrap();
    assert_eq!(ok.uncompressed_size, len);
    let host = Host::new();
    let err = apply(&layer[..], &host.root, &Target::Native, Limits { max_uncompressed_bytes: len - 1 }).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
}

#[test]
fn trailing_bytes_after_the_tar_are_digested_not_extracted() {
    let mut stream = Layer::new().file("f", b"data").bytes();
    // Another archive after the end (its entry must not be extracted), then garbage.
    stream.extend_from_slice(&Layer::new().file("hidden", b"h").bytes());
    stream.extend_from_slice(&[0xab; 1000]);
    for compressed in [false, true] {
        let host = Host::new();
        let input = if compressed { support::gzip(&stream) } else { stream.clone() };
        let applied = host.apply(&input, &Target::Native).unwrap();
        assert_eq!(applied.diff_id, sha256(&stream));
        assert_eq!(applied.uncompressed_size, stream.len() as u64);
        assert_eq!(fs::read(host.root.join("f")).unwrap(), b"data");
        assert!(fs::symlink_metadata(host.root.join("hidden")).is_err());
        host.assert_untouched();
    }
}

#[test]
fn wrong_expected_diff_id_fails() {
    let layer = Layer::new().file("f", b"data").bytes();
    let actual = sha256(&layer);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let host = Host::new();
    let err = apply_verified(&layer[..], &host.root, &Target::Native, Limits::default(), Some(&wrong)).unwrap_err();
    match &err {
        Error::DiffIdMismatch { expected, actual: got } => assert_eq!((expected, got), (&wrong, &actual)),
        other => panic!("{other:?}"),
    }
    assert_eq!(err.to_string(), format!("layer diff id mismatch: expected {wrong}, got {actual}"));
    assert!(err.is_invalid_layer());
    host.assert_untouched();

    let host = Host::new();
    let ok = apply_verified(&layer[..], &host.root, &Target::Native, Limits::default(), Some(&actual)).unwrap();
    assert_eq!(ok.diff_id, actual);

    // A malformed expectation is refused before anything is written.
    let host = Host::new();
    let err =
        apply_verified(&layer[..], &host.root, &Target::Native, Limits::default(), Some("sha256:xyz")).unwrap_err();
    assert_eq!(err.to_string(), "invalid diff id \"sha256:xyz\": expected sha256:<64 hex digits>");
    assert_eq!(fs::read_dir(&host.root).unwrap().count(), 0);
}

#[test]
fn truncated_and_corrupt_layers_fail_clearly() {
    let layer = Layer::new().file("f", &[7u8; 2000]).bytes();
    let host = Host::new();
    let err = host.apply(&layer[..1000], &Target::Native).unwrap_err();
    assert_eq!(err.to_string(), "malformed layer: layer ends inside an entry's data");

    // A wrong CRC in the gzip trailer: found while draining the stream after the tar's end.
    let mut gz = support::gzip(&layer);
    let n = gz.len();
    gz[n - 8] ^= 0xff;
    let err = host.apply(&gz, &Target::Native).unwrap_err();
    assert!(matches!(err, Error::Read(_)), "{err:?}");
    assert!(err.to_string().starts_with("read layer: "), "{err}");
    host.assert_untouched();
}

#[test]
fn writes_never_happen_outside_even_with_many_tricks_in_one_layer() {
    // All of the above in a single layer that keeps going when something is refused: run
    // each hostile entry after a benign one, checking the host after each.
    let host = Host::new();
    let secret = format!("{}/secret", host.sentinel_str());
    let mut layer = Layer::new();
    layer.dir("etc/").file("etc/ok", b"ok").symlink("etc/passwd", &secret).file("etc/passwd", b"root::0:0");
    host.apply(&layer.bytes(), &Target::Native).unwrap();
    assert_eq!(fs::read(host.root.join("etc/passwd")).unwrap(), b"root::0:0");
    let mut f = fs::OpenOptions::new().append(true).open(host.root.join("etc/ok")).unwrap();
    f.write_all(b"!").unwrap();
    host.assert_untouched();
}
