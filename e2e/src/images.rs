//! Offline OCI test images, built with umoci from Debian's busybox-static and cached per test
//! process.
//!
//! Every image lives in its own OCI layout under one per-process temp dir (a stale one left by
//! a dead process is swept on first use). Layers are plain tars made with GNU tar (sorted names,
//! fixed mtimes, uid/gid 0) and appended with `umoci raw add-layer`, so the bytes — and the
//! digests — are the same on every run, and whiteouts are exactly the files we put there.
//! (`umoci insert` is avoided: 0.4.7 writes layers without the tar's closing padding.)
//!
//! [`push`] copies an image into a [`Registry`] with skopeo; [`Image`] exposes the layout path
//! and the digests of the manifest(s), config and layers, parsed from the layout, for
//! assertions.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use serde_json::{Value, json};

use crate::registry::Registry;

/// Fixed times so that rebuilt images are byte-identical: 2024-01-01T00:00:00Z.
const EPOCH: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";
const BUSYBOX: &str = "/usr/bin/busybox";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Applets linked next to /bin/busybox in every image built here.
pub const APPLETS: &[&str] = &[
    "sh",
    "ash",
    "echo",
    "true",
    "false",
    "sleep",
    "cat",
    "ls",
    "env",
    "id",
    "mkdir",
    "rm",
    "rmdir",
    "touch",
    "cp",
    "mv",
    "ln",
    "chmod",
    "stat",
    "head",
    "tail",
    "wc",
    "grep",
    "sed",
    "printf",
    "test",
    "kill",
    "ps",
    "pwd",
    "hostname",
    "uname",
    "date",
    "sync",
    "find",
    "seq",
    "tee",
    "yes",
    "mount",
    "umount",
    "df",
    "du",
    "dd",
    "sha256sum",
    "readlink",
    "whoami",
    "nproc",
    "cut",
    "sort",
    "uniq",
    "tr",
    "xargs",
    "wget",
    "nc",
];

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// The platform an image manifest is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// One image manifest with what it points at.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub descriptor: Descriptor,
    pub platform: Platform,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    /// `rootfs.diff_ids` of the config: digests of the uncompressed layers.
    pub diff_ids: Vec<String>,
}

/// A tagged image (a manifest or an index) in an OCI layout on disk.
#[derive(Debug, Clone)]
pub struct Image {
    layout: PathBuf,
    tag: String,
    /// What the tag points at: a manifest, or an index for multi-platform images.
    pub root: Descriptor,
    /// The manifest itself, or every manifest of the index in index order.
    pub manifests: Vec<Manifest>,
}

impl Image {
    /// Reads the image tagged `tag` from the OCI layout at `layout`.
    pub fn load(layout: &Path, tag: &str) -> Image {
        let index: Value = read_json(&layout.join("index.json"));
        let entry = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"][REF_NAME] == tag)
            .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.join("index.json").display()));
        let root = descriptor(entry);
        let mut image = Image { layout: layout.to_path_buf(), tag: tag.to_string(), root, manifests: Vec::new() };
        if image.root.media_type == INDEX_MEDIA_TYPE {
            let index: Value = serde_json::from_slice(&image.read_blob(&image.root.digest)).expect("index json");
            for entry in index["manifests"].as_array().into_iter().flatten() {
                let manifest = image.load_manifest(descriptor(entry));
                image.manifests.push(manifest);
            }
        } else {
            let manifest = image.load_manifest(image.root.clone());
            image.manifests.push(manifest);
        }
        image
    }

    fn load_manifest(&self, descriptor: Descriptor) -> Manifest {
        let manifest: Value = serde_json::from_slice(&self.read_blob(&descriptor.digest)).expect("manifest json");
        let config = self::descriptor(&manifest["config"]);
        let config_json: Value = serde_json::from_slice(&self.read_blob(&config.digest)).expect("config json");
        let string = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Manifest {
            platform: Platform {
                os: string(&config_json["os"]),
                architecture: string(&config_json["architecture"]),
                variant: config_json["variant"].as_str().map(str::to_string),
            },
            layers: manifest["layers"].as_array().into_iter().flatten().map(self::descriptor).collect(),
            diff_ids: config_json["rootfs"]["diff_ids"].as_array().into_iter().flatten().map(string).collect(),
            descriptor,
            config,
        }
    }

    /// The OCI layout directory holding this image.
    pub fn layout(&self) -> &Path {
        &self.layout
    }

    /// The tag (`org.opencontainers.image.ref.name`) inside the layout.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `oci:LAYOUT:TAG`, the skopeo/umoci source reference.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }

    /// Digest of what the tag points at (the manifest, or the index).
    pub fn digest(&self) -> &str {
        &self.root.digest
    }

    pub fn is_index(&self) -> bool {
        self.root.media_type == INDEX_MEDIA_TYPE
    }

    /// The manifest for this host's architecture (the only one for a single-platform image).
    pub fn manifest(&self) -> &Manifest {
        self.manifest_for(host_arch())
            .or(self.manifests.first())
            .unwrap_or_else(|| panic!("image {} has no manifests", self.oci_ref()))
    }

    /// The manifest for `architecture` (`amd64`, `arm64`, ...).
    pub fn manifest_for(&self, architecture: &str) -> Option<&Manifest> {
        self.manifests.iter().find(|m| m.platform.architecture == architecture)
    }

    /// Path of a blob in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (algorithm, hex) = digest.split_once(':').unwrap_or_else(|| panic!("bad digest {digest}"));
        self.layout.join("blobs").join(algorithm).join(hex)
    }

    pub fn read_blob(&self, digest: &str) -> Vec<u8> {
        let path = self.blob_path(digest);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read blob {}: {e}", path.display()))
    }

    /// Sum of the compressed layer sizes of [`Image::manifest`].
    pub fn layers_size(&self) -> u64 {
        self.manifest().layers.iter().map(|l| l.size).sum()
    }

    /// Every digest a registry must hold for this image: root, manifests, configs, layers.
    pub fn all_digests(&self) -> Vec<String> {
        let mut digests = vec![self.root.digest.clone()];
        for manifest in &self.manifests {
            for d in std::iter::once(&manifest.descriptor).chain([&manifest.config]).chain(&manifest.layers) {
                if !digests.contains(&d.digest) {
                    digests.push(d.digest.clone());
                }
            }
        }
        digests
    }

    /// Unpacks the image with `umoci unpack` into the bundle dir `bundle` (must not exist)
    /// and returns its rootfs. Only single-platform images.
    pub fn unpack(&self, bundle: &Path) -> PathBuf {
        assert!(!self.is_index(), "umoci cannot unpack the index {}; unpack a single-platform image", self.oci_ref());
        let umoci_ref = format!("{}:{}", self.layout.display(), self.tag);
        let mut args = vec![OsStr::new("unpack"), OsStr::new("--image"), OsStr::new(&umoci_ref)];
        if !nix::unistd::geteuid().is_root() {
            args.push(OsStr::new("--rootless"));
        }
        args.push(bundle.as_os_str());
        run("umoci", &args);
        bundle.join("rootfs")
    }

    /// Writes the image as an `oci-archive` or `docker-archive` tar at `dest`, named `name_tag`
    /// (`name:tag`; the ref name inside an OCI archive, the RepoTags entry in a docker archive).
    /// An index keeps all platforms in an OCI archive; a docker archive gets the host's image.
    pub fn write_archive(&self, format: ArchiveFormat, dest: &Path, name_tag: &str) {
        let _ = std::fs::remove_file(dest);
        let target = match format {
            ArchiveFormat::Oci => format!("oci-archive:{}:{name_tag}", dest.display()),
            ArchiveFormat::Docker => format!("docker-archive:{}:{name_tag}", dest.display()),
        };
        let all = self.is_index() && format == ArchiveFormat::Oci;
        // The docker format converts the manifest, so its digests cannot be kept.
        let extra: &[&str] = if format == ArchiveFormat::Oci { &["--preserve-digests"] } else { &[] };
        skopeo_copy(&self.oci_ref(), &target, all, extra);
    }
}

/// Tar formats [`Image::write_archive`] can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI layout in a tar (`oci-archive:`): digests unchanged.
    Oci,
    /// `docker save` format (`docker-archive:`): layers uncompressed, config converted.
    Docker,
}

/// Copies `image` into `registry` as `name_tag` (`name:tag`) with skopeo (all platforms of an
/// index, digests preserved) and returns the reference `127.0.0.1:PORT/name:tag`.
pub fn push(registry: &Registry, image: &Image, name_tag: &str) -> String {
    let reference = registry.reference(name_tag);
    let creds = registry.credentials().map(|(user, password)| format!("{user}:{password}"));
    let mut extra: Vec<&str> = vec!["--dest-tls-verify=false", "--preserve-digests"];
    if let Some(creds) = &creds {
        extra.extend(["--dest-creds", creds]);
    }
    skopeo_copy(&image.oci_ref(), &format!("docker://{reference}"), image.is_index(), &extra);
    reference
}

fn skopeo_copy(from: &str, to: &str, all: bool, extra: &[&str]) {
    let mut args = vec!["--insecure-policy", "copy", "--quiet"];
    if all {
        args.push("--all");
    }
    args.extend(extra);
    args.extend([from, to]);
    run("skopeo", &args);
}

/// The OCI architecture name of this host (`amd64`, `arm64`, ...).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The one-layer busybox image for this host: `/bin/busybox` with [`APPLETS`] linked to it,
/// `/etc/passwd`, `/etc/group`, `/tmp`, `/root`; Cmd `["sh"]`, Env PATH.
pub fn busybox() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let builder = Builder::new("busybox");
        builder.add_layer("busybox rootfs", busybox_rootfs);
        builder.finish()
    })
}

/// Paths present in the rootfs of [`layered`] after all its layers are applied.
pub const LAYERED_PRESENT: &[&str] =
    &["bin/busybox", "etc/fixture/keep", "srv/data.bin", "opt/app/new", "opt/app/sub2/file"];
/// Paths of earlier layers of [`layered`] that its whiteouts remove.
pub const LAYERED_ABSENT: &[&str] = &["etc/fixture/gone", "opt/app/old-a", "opt/app/sub/old-b"];

/// A five-layer image with whiteouts:
/// 1. the busybox rootfs;
/// 2. `/etc/fixture/{keep,gone}` and `/opt/app/{old-a,sub/old-b}`;
/// 3. `/srv/data.bin` (256 KiB of seeded random bytes);
/// 4. a whiteout `/etc/fixture/.wh.gone` (deletes a file);
/// 5. an opaque `/opt/app/.wh..wh..opq` with `/opt/app/{new,sub2/file}` (replaces a dir).
///
/// See [`LAYERED_PRESENT`] and [`LAYERED_ABSENT`] for the result.
pub fn layered() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let builder = Builder::new("layered");
        builder.add_layer("busybox rootfs", busybox_rootfs);
        builder.add_layer("files", |dir| {
            write(&dir.join("etc/fixture/keep"), b"keep\n");
            write(&dir.join("etc/fixture/gone"), b"gone\n");
            write(&dir.join("opt/app/old-a"), b"old a\n");
            write(&dir.join("opt/app/sub/old-b"), b"old b\n");
        });
        builder.add_layer("data", |dir| write_random(&dir.join("srv/data.bin"), 256 * 1024, 7));
        builder.add_layer("delete a file", |dir| write(&dir.join("etc/fixture/.wh.gone"), b""));
        builder.add_layer("replace a dir", |dir| {
            write(&dir.join("opt/app/.wh..wh..opq"), b"");
            write(&dir.join("opt/app/new"), b"new\n");
            write(&dir.join("opt/app/sub2/file"), b"file\n");
        });
        builder.finish()
    })
}

/// A multi-platform index: the busybox image for the host plus a second manifest for the
/// other of amd64/arm64 that reuses the same layer with its own config (pullable, not
/// runnable there).
pub fn multi_platform() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let builder = Builder::new("multi-platform");
        builder.add_layer("busybox rootfs", busybox_rootfs);
        builder.finish_as_index()
    })
}

/// An image of about `total_mib` MiB of seeded random (incompressible) data in `layers`
/// layers, for benchmarks; the first layer also holds the busybox rootfs, so it runs.
/// Cached per (size, layers); the same arguments give the same digests on every run.
pub fn large(total_mib: u64, layers: usize) -> &'static Image {
    static IMAGES: OnceLock<Mutex<HashMap<(u64, usize), &'static Image>>> = OnceLock::new();
    assert!(layers > 0, "an image needs at least one layer");
    let mut images = IMAGES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    images.entry((total_mib, layers)).or_insert_with(|| {
        let builder = Builder::new(&format!("large-{total_mib}mib-{layers}layers"));
        let per_layer = total_mib * 1024 * 1024 / layers as u64;
        for layer in 0..layers {
            builder.add_layer(&format!("data {layer}"), |dir| {
                if layer == 0 {
                    busybox_rootfs(dir);
                }
                write_random(&dir.join(format!("data/layer-{layer}.bin")), per_layer, layer as u64 + 1);
            });
        }
        Box::leak(Box::new(builder.finish()))
    })
}

/// Builds one image in its own layout under the process cache dir.
struct Builder {
    layout: PathBuf,
    work: PathBuf,
    tag: String,
}

impl Builder {
    fn new(name: &str) -> Builder {
        let root = cache_dir();
        let layout = root.join(name);
        let work = root.join(format!("{name}.work"));
        // A half-built layout from a panicked builder in this process is rebuilt from scratch.
        for dir in [&layout, &work] {
            if dir.exists() {
                std::fs::remove_dir_all(dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
            }
        }
        std::fs::create_dir_all(&work).unwrap_or_else(|e| panic!("create {}: {e}", work.display()));
        let builder = Builder { layout, work, tag: "latest".to_string() };
        run("umoci", &[OsStr::new("init"), OsStr::new("--layout"), builder.layout.as_os_str()]);
        run("umoci", &["new", "--image", &builder.image_ref()]);
        builder
    }

    fn image_ref(&self) -> String {
        format!("{}:{}", self.layout.display(), self.tag)
    }

    /// Appends a layer holding what `fill` writes into an empty dir (whiteouts included as
    /// the plain empty files OCI layers spell them with).
    fn add_layer(&self, what: &str, fill: impl FnOnce(&Path)) {
        let dir = self.work.join("layer");
        let tar = self.work.join("layer.tar");
        std::fs::create_dir_all(&dir).expect("layer staging dir");
        fill(&dir);
        let mut entries: Vec<String> = std::fs::read_dir(&dir)
            .expect("read layer staging dir")
            .map(|e| e.expect("staging entry").file_name().to_string_lossy().into_owned())
            .collect();
        entries.sort();
        let mtime = format!("--mtime=@{EPOCH}");
        let mut args = vec![
            "--create",
            "--format=gnu",
            "--sort=name",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            &mtime,
            "--file",
        ];
        let tar_path = tar.to_string_lossy().into_owned();
        let dir_path = dir.to_string_lossy().into_owned();
        args.extend([tar_path.as_str(), "--directory", dir_path.as_str(), "--"]);
        args.extend(entries.iter().map(String::as_str));
        run("tar", &args);
        let created_by = format!("--history.created_by=berth fixture: {what}");
        run(
            "umoci",
            &[
                "raw",
                "add-layer",
                "--image",
                &self.image_ref(),
                &format!("--history.created={CREATED}"),
                &created_by,
                &tar_path,
            ],
        );
        std::fs::remove_dir_all(&dir).expect("remove layer staging dir");
        std::fs::remove_file(&tar).expect("remove layer tar");
    }

    /// Sets the config (host platform, Cmd, Env, fixed times), drops unreferenced blobs.
    fn configure(&self, architecture: &str) {
        run(
            "umoci",
            &[
                "config",
                "--image",
                &self.image_ref(),
                "--no-history",
                "--config.cmd=sh",
                &format!("--config.env={PATH_ENV}"),
                "--os=linux",
                &format!("--architecture={architecture}"),
                &format!("--created={CREATED}"),
            ],
        );
        run("umoci", &[OsStr::new("gc"), OsStr::new("--layout"), self.layout.as_os_str()]);
    }

    fn finish(self) -> Image {
        self.configure(host_arch());
        let _ = std::fs::remove_dir_all(&self.work);
        Image::load(&self.layout, &self.tag)
    }

    /// Turns the single-platform image into an index of it and a copy for the other
    /// architecture (same layers, config with the other platform), tagged `latest`.
    fn finish_as_index(self) -> Image {
        self.configure(host_arch());
        let host = Image::load(&self.layout, &self.tag).manifest().clone();
        let (other_arch, other_variant) = if host_arch() == "arm64" { ("amd64", None) } else { ("arm64", Some("v8")) };

        let mut config: Value =
            serde_json::from_slice(&std::fs::read(blob(&self.layout, &host.config.digest)).expect("read config"))
                .expect("config json");
        config["architecture"] = json!(other_arch);
        if let Some(variant) = other_variant {
            config["variant"] = json!(variant);
        }
        let config_desc = write_blob(&self.layout, &host.config.media_type, &to_bytes(&config));
        let mut manifest: Value =
            serde_json::from_slice(&std::fs::read(blob(&self.layout, &host.descriptor.digest)).expect("read manifest"))
                .expect("manifest json");
        manifest["config"] = descriptor_json(&config_desc);
        let other = write_blob(&self.layout, MANIFEST_MEDIA_TYPE, &to_bytes(&manifest));

        let platform = |arch: &str, variant: Option<&str>| {
            let mut p = json!({ "architecture": arch, "os": "linux" });
            if let Some(variant) = variant {
                p["variant"] = json!(variant);
            }
            p
        };
        let mut host_entry = descriptor_json(&host.descriptor);
        host_entry["platform"] = platform(host_arch(), host.platform.variant.as_deref());
        let mut other_entry = descriptor_json(&other);
        other_entry["platform"] = platform(other_arch, other_variant);
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": [host_entry, other_entry],
        });
        let index_desc = write_blob(&self.layout, INDEX_MEDIA_TYPE, &to_bytes(&index));

        // Retag: the layout's `latest` now names the index instead of the host manifest.
        let mut entry = descriptor_json(&index_desc);
        entry["annotations"] = json!({ (REF_NAME): self.tag });
        let layout_index = json!({ "schemaVersion": 2, "manifests": [entry] });
        write_atomic(&self.layout.join("index.json"), &to_bytes(&layout_index));
        let _ = std::fs::remove_dir_all(&self.work);
        Image::load(&self.layout, &self.tag)
    }
}

/// The staged rootfs of the busybox images.
fn busybox_rootfs(dir: &Path) {
    let busybox = Path::new(BUSYBOX);
    assert!(
        busybox.is_file(),
        "{BUSYBOX} not found: install Debian's busybox-static package (`bash scripts/install-deps.sh`)"
    );
    assert!(
        is_static_elf(busybox),
        "{BUSYBOX} is dynamically linked (Debian's `busybox` package?): images need busybox-static \
         (`apt-get install busybox-static`)"
    );
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("create bin");
    std::fs::copy(busybox, bin.join("busybox")).expect("copy busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet symlink");
    }
    write(
        &dir.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    write(&dir.join("etc/group"), b"root:x:0:\nnogroup:x:65534:\n");
    for empty in ["tmp", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(dir.join(empty)).expect("create rootfs dir");
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).expect("chmod tmp");
}

/// Whether `path` is an ELF without a PT_INTERP program header (statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| data.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at = |o: usize| data.get(o..o + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize);
    // ELF64 little-endian only: the hosts we test on.
    if data.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| u32_at(phoff + i * phentsize) != Some(PT_INTERP))
}

/// `len` bytes from a splitmix64 stream seeded with `seed`: incompressible and reproducible.
fn write_random(path: &Path, len: u64, seed: u64) {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent dir");
    }
    let file = std::fs::File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut chunk = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        out.write_all(&chunk[..n]).expect("write random data");
        left -= n as u64;
    }
    out.flush().expect("flush random data");
}

fn write(path: &Path, data: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent dir");
    }
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn write_atomic(path: &Path, data: &[u8]) {
    let tmp = path.with_extension("tmp");
    write(&tmp, data);
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap_or_else(|| panic!("bad digest {digest}"));
    layout.join("blobs").join(algorithm).join(hex)
}

fn write_blob(layout: &Path, media_type: &str, data: &[u8]) -> Descriptor {
    let digest = crate::digest_of(data);
    write_atomic(&blob(layout, &digest), data);
    Descriptor { media_type: media_type.to_string(), digest, size: data.len() as u64 }
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialize json")
}

fn descriptor(value: &Value) -> Descriptor {
    Descriptor {
        media_type: value["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: value["digest"].as_str().unwrap_or_else(|| panic!("descriptor without digest: {value}")).to_string(),
        size: value["size"].as_u64().unwrap_or_else(|| panic!("descriptor without size: {value}")),
    }
}

fn descriptor_json(d: &Descriptor) -> Value {
    json!({ "mediaType": d.media_type, "digest": d.digest, "size": d.size })
}

fn read_json(path: &Path) -> Value {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&data).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// Runs a tool to completion, failing the test with its output when it fails.
fn run<S: AsRef<OsStr>>(tool: &str, args: &[S]) {
    let path = crate::require_tool(tool);
    let output = Command::new(&path).args(args).output().unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    assert!(
        output.status.success(),
        "{tool} {} failed ({}):\n{}{}",
        args.iter().map(|a| a.as_ref().to_string_lossy()).collect::<Vec<_>>().join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

static CACHE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// This process's image cache: `$TMPDIR/berth-e2e-images.<pid>`, removed when the process
/// exits normally (statics are never dropped, so an `atexit` hook does it); dirs left by
/// processes that died are swept the first time a process needs its own.
fn cache_dir() -> PathBuf {
    CACHE_DIR
        .get_or_init(|| {
            const PREFIX: &str = "berth-e2e-images.";
            let tmp = std::env::temp_dir();
            if let Ok(entries) = std::fs::read_dir(&tmp) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX)).and_then(|p| p.parse::<u32>().ok());
                    if let Some(pid) = pid
                        && pid != std::process::id()
                        && !crate::procs::alive(pid)
                    {
                        let _ = std::fs::remove_dir_all(entry.path());
                    }
                }
            }
            let dir = tmp.join(format!("{PREFIX}{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            // SAFETY: `remove_cache_dir` is a plain `extern "C" fn()` that neither unwinds
            // (it ignores errors) nor relies on anything torn down before atexit handlers run.
            unsafe {
                libc::atexit(remove_cache_dir);
            }
            dir
        })
        .clone()
}

extern "C" fn remove_cache_dir() {
    if let Some(dir) = CACHE_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_data_is_reproducible_and_varies_by_seed() {
        let dir = tempfile::tempdir().unwrap();
        let read = |name: &str, seed: u64| {
            let path = dir.path().join(name);
            write_random(&path, 100_003, seed);
            std::fs::read(path).unwrap()
        };
        let a = read("a", 1);
        assert_eq!(a.len(), 100_003);
        assert_eq!(a, read("b", 1));
        assert_ne!(a, read("c", 2));
    }

    #[test]
    fn this_test_binary_is_not_static_but_busybox_static_is() {
        assert!(!is_static_elf(&std::env::current_exe().unwrap()));
        if Path::new(BUSYBOX).exists() {
            assert!(is_static_elf(Path::new(BUSYBOX)));
        }
    }
}
