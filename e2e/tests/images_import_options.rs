//! Import options beyond the archive itself: `--platform` keeps only the matching manifests
//! of an index (like `ctr images import --platform`), and berth-image refuses an archive
//! larger than its --max-import-size with RESOURCE_EXHAUSTED, leaving nothing spooled under
//! its --root.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_api::berth::image::v1::{ImportOptions, ImportRequest};
use berth_e2e::Stack;
use berth_e2e::images::{ArchiveFormat, host_arch, multi_platform};
use berth_e2e::outcome::{failed, ok};
use nix::sys::signal::Signal;

/// The digests of the blobs in `namespace`'s content store.
fn blobs(stack: &Stack, namespace: &str) -> Vec<String> {
    let listing = ok("ctr content ls", stack.ctr(&["-n", namespace, "content", "ls", "-q"]));
    listing.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

#[tokio::test]
async fn platform_picks_the_manifests_of_an_index() {
    let stack = Stack::start().await;
    let image = multi_platform();
    let archive = stack.dir.path().join("multi.tar");
    image.write_archive(ArchiveFormat::Oci, &archive, "berth.test/multi:1");
    let other = if host_arch() == "amd64" { "arm64" } else { "amd64" };
    let mine = image.manifest_for(host_arch()).expect("the host's manifest");
    let theirs = image.manifest_for(other).expect("the other manifest");
    let file = archive.to_str().unwrap();

    let host_platform = format!("linux/{}", host_arch());
    let args = ["images", "import", "--no-unpack", "--base-name", "berth.test/multi", "--platform", &host_platform];
    let out = ok("import the host's platform", stack.berth(&[&args[..], &[file]].concat()));
    assert_eq!(out.trim(), format!("berth.test/multi:1 {}", image.digest()));
    let content = blobs(&stack, "default");
    assert!(content.contains(&mine.descriptor.digest) && content.contains(&mine.config.digest), "{content:?}");
    assert!(!content.contains(&theirs.descriptor.digest), "the other platform's manifest was imported: {content:?}");
    assert!(!content.contains(&theirs.config.digest), "the other platform's config was imported: {content:?}");

    // Without --platform every platform comes in.
    let args = ["-n", "all", "images", "import", "--no-unpack", "--base-name", "berth.test/multi"];
    ok("import all", stack.berth(&[&args[..], &[file]].concat()));
    let content = blobs(&stack, "all");
    assert!(content.contains(&theirs.descriptor.digest), "{content:?}");

    // A platform the index lacks: nothing to import, and the error says which.
    let args = [
        "-n",
        "none",
        "images",
        "import",
        "--no-unpack",
        "--base-name",
        "berth.test/multi",
        "--platform",
        "linux/s390x",
    ];
    let err = failed("import a missing platform", stack.berth(&[&args[..], &[file]].concat()));
    assert!(err.contains("linux/s390x"), "{err}");
    let listed = ok("ls", stack.berth(&["-n", "none", "images", "ls", "-q"]));
    assert!(listed.trim().is_empty(), "{listed}");
}

/// berth-image alone (no peers: the size check comes before any content is written).
struct ImageService {
    child: Child,
}

impl Drop for ImageService {
    fn drop(&mut self) {
        berth_e2e::procs::signal(self.child.id(), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_archive_over_the_size_limit_is_refused_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let socket = dir.path().join("image.sock");
    let child = Command::new(berth_e2e::binary("berth-image"))
        .arg("--root")
        .arg(&root)
        .arg("--listen")
        .arg(&socket)
        .args(["--max-import-size", "64K"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start berth-image");
    let _service = ImageService { child };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "berth-image did not listen on {}", socket.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let channel = berth_core::connect::lazy_channel(&berth_core::connect::Address::Unix(socket.clone()));
    let mut client = TransferClient::new(channel);

    let mut messages = vec![ImportRequest { options: Some(ImportOptions::default()), data: vec![0; 16 << 10] }];
    messages.extend((0..8).map(|_| ImportRequest { options: None, data: vec![0; 16 << 10] }));
    let status = match client.import(tokio_stream::iter(messages)).await {
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("an import of 144 KiB went through a 64 KiB limit"),
                    Err(status) => break status,
                }
            }
        }
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("65536") && status.message().contains("--max-import-size"), "{status:?}");
    // The spool was an unnamed file: nothing stays under --root.
    let spooled: Vec<_> = std::fs::read_dir(root.join("spool")).unwrap().collect();
    assert!(spooled.is_empty(), "{spooled:?}");
}
