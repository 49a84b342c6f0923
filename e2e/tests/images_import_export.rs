//! `berth images import` and `berth images export`, done by berth-image: OCI layout and
//! docker-archive tars written by skopeo import with the right digests and names (and
//! unpack); an export is an OCI layout tar that skopeo reads and copies, and importing it
//! into another namespace gives the same images.

use std::process::Command;

use berth_e2e::images::{self, ArchiveFormat, busybox, multi_platform};
use berth_e2e::outcome::{failed, ok, stderr, stdout};
use berth_e2e::registry::Registry;
use berth_e2e::{Stack, require_root, require_tool};
use serde_json::Value;

fn line_of<'a>(listing: &'a str, name: &str) -> Option<&'a str> {
    listing.lines().find(|line| line.split_whitespace().next() == Some(name))
}

/// name → target digest of every image in `namespace`, from `berth images ls --format json`.
fn images_in(stack: &Stack, namespace: &str) -> Vec<(String, String)> {
    let listed: Value =
        serde_json::from_str(&ok("ls", stack.berth(&["-n", namespace, "images", "ls", "--format", "json"]))).unwrap();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["digest"].as_str().unwrap().to_string()))
        .collect()
}

fn skopeo(args: &[&str]) -> String {
    let output = Command::new(require_tool("skopeo")).args(args).output().expect("run skopeo");
    assert!(output.status.success(), "skopeo {args:?}: {}", stderr(&output));
    stdout(&output)
}

#[tokio::test]
async fn imports_an_oci_archive_and_a_docker_archive() {
    require_root();
    require_tool("ctr");
    let stack = Stack::start().await;
    let image = busybox();
    let oci = stack.dir.path().join("busybox-oci.tar");
    image.write_archive(ArchiveFormat::Oci, &oci, "berth.test/busybox:1");

    let out = ok(
        "import oci",
        stack.berth(&["images", "import", "--no-unpack", "--base-name", "berth.test/busybox", oci.to_str().unwrap()]),
    );
    assert_eq!(out.trim(), format!("berth.test/busybox:1 {}", image.digest()));
    let check = ok("ctr check", stack.ctr(&["images", "check"]));
    assert!(line_of(&check, "berth.test/busybox:1").unwrap().contains("complete"), "{check}");
    // Labels as a pull sets them: the manifest holds its config and layers.
    let info = ok("ctr content ls", stack.ctr(&["content", "ls"]));
    let row = info.lines().find(|l| l.starts_with(image.digest())).unwrap_or_else(|| panic!("{info}"));
    assert!(row.contains(&format!("containerd.io/gc.ref.content.config={}", image.manifest().config.digest)), "{row}");

    // A base name that matches nothing imports nothing, and says so.
    let err = failed(
        "import with another base name",
        stack.berth(&[
            "-n",
            "other",
            "images",
            "import",
            "--no-unpack",
            "--base-name",
            "else.where/app",
            oci.to_str().unwrap(),
        ]),
    );
    assert!(err.contains("check --base-name"), "{err}");

    // docker save format from stdin, unpacked: the manifest is made here (Docker schema 2).
    let docker = stack.dir.path().join("busybox-docker.tar");
    image.write_archive(ArchiveFormat::Docker, &docker, "berth.test/busybox:2");
    let output = Command::new(berth_e2e::binary("berth"))
        .args([
            "--address",
            stack.socket.to_str().unwrap(),
            "-n",
            "team-d",
            "images",
            "import",
            "--snapshotter",
            "native",
            "-",
        ])
        .stdin(std::fs::File::open(&docker).unwrap())
        .output()
        .unwrap();
    let out = ok("import docker from stdin", output);
    assert!(out.starts_with("berth.test/busybox:2 sha256:"), "{out}");
    let inspected: Value = serde_json::from_str(&ok(
        "inspect",
        stack.berth(&["-n", "team-d", "images", "inspect", "berth.test/busybox:2"]),
    ))
    .unwrap();
    let manifest = &inspected["manifests"][0]["document"];
    assert_eq!(manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json", "{inspected}");
    let diff_ids: Vec<&str> = inspected["manifests"][0]["config"]["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, image.manifest().diff_ids, "the same layers");
    let check = ok("check", stack.berth(&["-n", "team-d", "images", "check", "--snapshotter", "native"]));
    let row = line_of(&check, "berth.test/busybox:2").unwrap_or_else(|| panic!("{check}"));
    assert!(row.contains("complete (2/2)") && row.ends_with("true"), "{check}");
}

#[tokio::test]
async fn export_then_import_elsewhere_gives_the_same_images_and_skopeo_reads_it() {
    let registry = Registry::start();
    let stack = Stack::start().await;
    let single = busybox();
    let multi = multi_platform();
    let single_ref = images::push(&registry, single, "busybox:b1");
    let multi_ref = images::push(&registry, multi, "multi:m1");
    ok("pull", stack.berth(&["images", "pull", "--no-unpack", &single_ref]));
    ok("pull", stack.berth(&["images", "pull", "--no-unpack", "--all-platforms", &multi_ref]));

    let both = stack.dir.path().join("both.tar");
    let both = both.to_str().unwrap();
    assert_eq!(ok("export", stack.berth(&["images", "export", both, &single_ref, &multi_ref])), "");
    assert!(!std::path::Path::new(&format!("{both}.partial")).exists());

    // skopeo reads the layout: each image by its tag, blobs checked on copy.
    let inspected: Value = serde_json::from_str(&skopeo(&["inspect", &format!("oci-archive:{both}:b1")])).unwrap();
    assert_eq!(inspected["Digest"], single.digest(), "{inspected}");
    let raw = skopeo(&["inspect", "--raw", &format!("oci-archive:{both}:m1")]);
    assert_eq!(berth_e2e::digest_of(raw.as_bytes()), multi.digest());
    let copy = stack.dir.path().join("copied");
    skopeo(&[
        "--insecure-policy",
        "copy",
        "--quiet",
        &format!("oci-archive:{both}:b1"),
        &format!("oci:{}:b1", copy.display()),
    ]);

    // Into another namespace: the same names and digests.
    let out = ok("import", stack.berth(&["-n", "elsewhere", "images", "import", "--no-unpack", both]));
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(images_in(&stack, "elsewhere"), images_in(&stack, "default"));
    let check = ok("check", stack.berth(&["-n", "elsewhere", "images", "check"]));
    for name in [&single_ref, &multi_ref] {
        assert!(line_of(&check, name).unwrap().contains(" complete"), "{check}");
    }

    // To stdout, one image: the same bytes as to a file.
    let one = stack.dir.path().join("one.tar");
    ok("export one", stack.berth(&["images", "export", one.to_str().unwrap(), &single_ref]));
    let piped = stack.berth(&["images", "export", "-", &single_ref]);
    assert!(piped.status.success(), "export to stdout: {}", stderr(&piped));
    assert_eq!(piped.stdout, std::fs::read(&one).unwrap());
    let inspected: Value =
        serde_json::from_str(&skopeo(&["inspect", &format!("oci-archive:{}", one.display())])).unwrap();
    assert_eq!(inspected["Digest"], single.digest());
}

#[tokio::test]
async fn bad_archives_and_exports_say_what_is_wrong() {
    let stack = Stack::start().await;
    let garbage = stack.dir.path().join("garbage.tar");
    std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
    let err = failed("import garbage", stack.berth(&["images", "import", garbage.to_str().unwrap()]));
    assert!(err.contains("not a readable tar") || err.contains("neither an OCI image layout"), "{err}");
    assert_eq!(ok("ls", stack.berth(&["images", "ls", "-q"])), "");

    let out = stack.dir.path().join("x.tar");
    let err = failed("export missing", stack.berth(&["images", "export", out.to_str().unwrap(), "nope:1"]));
    assert!(err.contains("nope:1") && err.contains("images ls"), "{err}");
    assert!(!out.exists() && !stack.dir.path().join("x.tar.partial").exists());

    // An image whose layer is gone cannot be exported.
    let image = busybox();
    let oci = stack.dir.path().join("busybox-oci.tar");
    image.write_archive(ArchiveFormat::Oci, &oci, "berth.test/busybox:1");
    ok("import", stack.berth(&["images", "import", "--no-unpack", oci.to_str().unwrap()]));
    ok("ctr content rm", stack.ctr(&["content", "rm", &image.manifest().layers[0].digest]));
    let err =
        failed("export incomplete", stack.berth(&["images", "export", out.to_str().unwrap(), "berth.test/busybox:1"]));
    assert!(err.contains("incomplete") && err.contains(&image.manifest().layers[0].digest), "{err}");
}
