//! The offline test fixtures themselves: each image builds, pushes into a private
//! docker-registry with the digests it reports, unpacks to a rootfs that runs, and converts to
//! the archive formats import tests use.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use berth_e2e::images::{self, ArchiveFormat, Image, LAYERED_ABSENT, LAYERED_PRESENT};
use berth_e2e::registry::{MANIFEST_TYPES, Registry};
use berth_e2e::{digest_of, procs, require_tool};

/// Asserts the registry serves `image` under `name:tag` byte for byte: the root manifest or
/// index, every child manifest, every config and every layer.
fn assert_served(registry: &Registry, image: &Image, name: &str, tag: &str) {
    let response = registry.manifest(name, tag);
    assert_eq!(response.status, 200, "GET manifest {name}:{tag}: {}", response.text());
    assert_eq!(response.header("docker-content-digest"), Some(image.digest()));
    assert_eq!(digest_of(&response.body), image.digest());
    assert_eq!(response.header("content-type"), Some(image.root.media_type.as_str()));
    assert_eq!(response.body, image.read_blob(image.digest()));

    for manifest in &image.manifests {
        let by_digest = registry.manifest(name, &manifest.descriptor.digest);
        assert_eq!(by_digest.status, 200, "GET manifest {}: {}", manifest.descriptor.digest, by_digest.text());
        assert_eq!(digest_of(&by_digest.body), manifest.descriptor.digest);
        let json = by_digest.json();
        assert_eq!(json["config"]["digest"], manifest.config.digest.as_str());
        let layers: Vec<&str> =
            json["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
        let want: Vec<&str> = manifest.layers.iter().map(|l| l.digest.as_str()).collect();
        assert_eq!(layers, want);
        assert_eq!(manifest.layers.len(), manifest.diff_ids.len());
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            let got = registry.get(&format!("/v2/{name}/blobs/{}", blob.digest), &[]);
            assert_eq!(got.status, 200, "GET blob {}", blob.digest);
            assert_eq!(got.body.len() as u64, blob.size);
            assert_eq!(digest_of(&got.body), blob.digest);
        }
    }
}

fn tar_list(archive: &Path, gzip: bool) -> Vec<String> {
    let tar = require_tool("tar");
    let output = Command::new(tar).arg(if gzip { "-tzf" } else { "-tf" }).arg(archive).output().unwrap();
    assert!(output.status.success(), "tar -tf {}: {}", archive.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn busybox_is_one_layer_for_this_host_and_the_registry_serves_its_digests() {
    let image = images::busybox();
    assert!(!image.is_index());
    let manifest = image.manifest();
    assert_eq!(manifest.layers.len(), 1);
    assert_eq!(manifest.platform.architecture, images::host_arch());
    assert_eq!(manifest.platform.os, "linux");
    let config: serde_json::Value = serde_json::from_slice(&image.read_blob(&manifest.config.digest)).unwrap();
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert!(config["config"]["Env"][0].as_str().unwrap().starts_with("PATH="));

    let registry = Registry::start();
    let reference = images::push(&registry, image, "library/busybox:1");
    assert_eq!(reference, format!("{}/library/busybox:1", registry.addr()));
    assert_served(&registry, image, "library/busybox", "1");
}

#[test]
fn busybox_rootfs_runs_echo_from_the_unpacked_binary() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = images::busybox().unpack(&dir.path().join("bundle"));
    let output = Command::new(rootfs.join("bin/busybox")).args(["echo", "hi"]).output().unwrap();
    assert!(output.status.success());
    assert_eq!(output.stdout, b"hi\n");
    // Applets are links to busybox, which picks the applet from argv[0].
    let output = Command::new(rootfs.join("bin/echo")).arg("via-link").output().unwrap();
    assert_eq!(output.stdout, b"via-link\n");
    assert_eq!(std::fs::read_link(rootfs.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert!(rootfs.join("etc/passwd").is_file());
}

#[test]
fn layered_image_has_five_layers_with_whiteouts_and_unpacks_to_the_documented_tree() {
    let image = images::layered();
    let manifest = image.manifest();
    assert_eq!(manifest.layers.len(), 5);
    let distinct: HashSet<&str> = manifest.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(distinct.len(), 5, "every layer differs");

    let delete = tar_list(&image.blob_path(&manifest.layers[3].digest), true);
    assert!(delete.iter().any(|e| e == "etc/fixture/.wh.gone"), "{delete:?}");
    let replace = tar_list(&image.blob_path(&manifest.layers[4].digest), true);
    assert!(replace.iter().any(|e| e == "opt/app/.wh..wh..opq"), "{replace:?}");

    let dir = tempfile::tempdir().unwrap();
    let rootfs = image.unpack(&dir.path().join("bundle"));
    for path in LAYERED_PRESENT {
        assert!(rootfs.join(path).exists(), "{path} present");
    }
    for path in LAYERED_ABSENT {
        assert!(!rootfs.join(path).exists(), "{path} removed by a whiteout");
    }
    assert_eq!(std::fs::metadata(rootfs.join("srv/data.bin")).unwrap().len(), 256 * 1024);

    let registry = Registry::start();
    images::push(&registry, image, "layered:v1");
    assert_served(&registry, image, "layered", "v1");
}

#[test]
fn multi_platform_index_pushes_both_platforms() {
    let image = images::multi_platform();
    assert!(image.is_index());
    let archs: Vec<&str> = image.manifests.iter().map(|m| m.platform.architecture.as_str()).collect();
    assert_eq!(archs, [images::host_arch(), if images::host_arch() == "arm64" { "amd64" } else { "arm64" }]);
    assert_eq!(image.manifests[0].layers, image.manifests[1].layers, "both reuse the busybox layer");
    assert_ne!(image.manifests[0].config.digest, image.manifests[1].config.digest);

    let registry = Registry::start();
    let reference = images::push(&registry, image, "multi:v1");
    assert_served(&registry, image, "multi", "v1");

    let output = Command::new(require_tool("skopeo"))
        .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{reference}")])
        .output()
        .unwrap();
    assert!(output.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(digest_of(&output.stdout), image.digest());
    let index: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let platforms: Vec<String> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            format!("{}/{}", m["platform"]["os"].as_str().unwrap(), m["platform"]["architecture"].as_str().unwrap())
        })
        .collect();
    assert_eq!(platforms.len(), 2);
    assert!(platforms.contains(&"linux/amd64".to_string()) && platforms.contains(&"linux/arm64".to_string()));
}

#[test]
fn large_image_has_the_asked_size_and_layers_and_is_reproducible() {
    let image = images::large(6, 3);
    let manifest = image.manifest();
    assert_eq!(manifest.layers.len(), 3);
    // Random data does not compress: each layer is about its 2 MiB share (plus busybox in the first).
    for layer in &manifest.layers[1..] {
        assert!(layer.size > 2 * 1024 * 1024 && layer.size < 2 * 1024 * 1024 + 64 * 1024, "{layer:?}");
    }
    assert!(std::ptr::eq(image, images::large(6, 3)), "cached per process");

    let registry = Registry::start();
    images::push(&registry, image, "large:6m");
    assert_served(&registry, image, "large", "6m");
}

#[test]
fn images_convert_to_oci_and_docker_archives() {
    let dir = tempfile::tempdir().unwrap();
    let image = images::busybox();

    let oci = dir.path().join("busybox.oci.tar");
    image.write_archive(ArchiveFormat::Oci, &oci, "busybox:1");
    let entries = tar_list(&oci, false);
    assert!(entries.iter().any(|e| e.trim_start_matches("./") == "index.json"), "{entries:?}");
    let layer = &image.manifest().layers[0].digest;
    let layer_path = format!("blobs/sha256/{}", layer.trim_start_matches("sha256:"));
    assert!(entries.iter().any(|e| e.trim_start_matches("./") == layer_path), "digests kept: {entries:?}");

    let docker = dir.path().join("busybox.docker.tar");
    image.write_archive(ArchiveFormat::Docker, &docker, "busybox:1");
    let entries = tar_list(&docker, false);
    assert!(entries.iter().any(|e| e == "manifest.json"), "{entries:?}");

    let index = dir.path().join("multi.oci.tar");
    images::multi_platform().write_archive(ArchiveFormat::Oci, &index, "multi:v1");
    let entries = tar_list(&index, false);
    let manifests = images::multi_platform().manifests.iter();
    for manifest in manifests {
        let path = format!("blobs/sha256/{}", manifest.descriptor.digest.trim_start_matches("sha256:"));
        assert!(entries.iter().any(|e| e.trim_start_matches("./") == path), "both platforms kept: {entries:?}");
    }
}

#[test]
fn registry_with_auth_refuses_anonymous_and_serves_with_credentials() {
    let registry = Registry::start_with_auth();
    let (user, password) = registry.credentials().expect("credentials");
    assert_eq!(user, "docker");
    assert!(!password.is_empty());

    assert_eq!(registry.request("GET", "/v2/", &[], None).status, 401);
    assert_eq!(registry.request("GET", "/v2/", &[], Some((user, "wrong"))).status, 401);
    assert_eq!(registry.get("/v2/", &[]).status, 200);

    let image = images::busybox();
    images::push(&registry, image, "busybox:auth");
    assert_served(&registry, image, "busybox", "auth");
    let anonymous = registry.request("GET", "/v2/busybox/manifests/auth", MANIFEST_TYPES, None);
    assert_eq!(anonymous.status, 401);
}

#[test]
fn registries_run_side_by_side_and_vanish_on_drop() {
    let registries: Vec<Registry> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4).map(|_| s.spawn(Registry::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let addrs: HashSet<String> = registries.iter().map(Registry::addr).collect();
    assert_eq!(addrs.len(), 4, "each its own port");

    let image = images::busybox();
    images::push(&registries[0], image, "only:here");
    assert_eq!(registries[0].manifest("only", "here").status, 200);
    assert_eq!(registries[1].manifest("only", "here").status, 404, "storage is not shared");

    let deleted = registries[0].request("DELETE", &format!("/v2/only/manifests/{}", image.digest()), &[], None);
    assert_eq!(deleted.status, 202, "deletes are enabled: {}", deleted.text());

    let gone: Vec<(u32, std::path::PathBuf)> = registries.iter().map(|r| (r.pid(), r.storage_dir())).collect();
    drop(registries);
    for (pid, storage) in gone {
        assert!(!procs::alive(pid), "registry {pid} stopped");
        let dir = storage.parent().unwrap();
        assert!(!dir.exists(), "{} removed", dir.display());
    }
}

/// The benchmark image of DESIGN.md (200 MiB in 6 layers); slow, so only on request:
/// `cargo test -p berth-e2e --test fixtures -- --ignored`.
#[test]
#[ignore]
fn benchmark_sized_image_builds_and_pushes() {
    let started = std::time::Instant::now();
    let image = images::large(200, 6);
    let built = started.elapsed();
    assert_eq!(image.manifest().layers.len(), 6);
    assert!(image.layers_size() > 200 * 1024 * 1024);

    let registry = Registry::start();
    let started = std::time::Instant::now();
    images::push(&registry, image, "large:200m");
    eprintln!("built 200 MiB / 6 layers in {built:?}, pushed in {:?}", started.elapsed());
    assert_served(&registry, image, "large", "200m");
}
