//! What must survive: restarts (ingests resume with the right offset and digest, leftovers
//! are cleaned) and bad input (the right code, a message saying what was wrong, nothing
//! damaged).

mod common;

use std::collections::HashMap;

use berth_api::containerd::services::content::v1::{
    AbortRequest, DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest, StatusRequest,
    UpdateRequest, WriteContentRequest,
};
use berth_api::prost_types::FieldMask;
use common::*;
use tonic::Code;

const NS: &str = "default";

/// The `data` file of the ingest whose meta names `reference`.
fn ingest_data_file(root: &std::path::Path, reference: &str) -> std::path::PathBuf {
    for entry in std::fs::read_dir(root.join("ingest")).unwrap() {
        let dir = entry.unwrap().path();
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta")).unwrap()).unwrap();
        if meta["ref"] == reference {
            return dir.join("data");
        }
    }
    panic!("no ingest for {reference}");
}

#[tokio::test]
async fn restart_keeps_ingests_with_their_offset_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data = bytes((2 << 20) + 5, 11);
    let digest = digest_of(&data);
    let kept;
    {
        let server = Server::start(root).await;
        let mut client = server.client();
        kept = ingest_labelled(&mut client, NS, "kept", b"kept bytes", &[("k", "v")]).await;
        let (mut writer, _) =
            Writer::open(&mut client, NS, stat_expecting("big", data.len() as i64, &digest)).await.unwrap();
        writer.send(write(0, &data[..1 << 20])).await.unwrap();
        writer.send(write(1 << 20, &data[1 << 20..(2 << 20)])).await.unwrap();
        let (mut other, _) = Writer::open(&mut client, "other", stat("small")).await.unwrap();
        other.send(write(0, b"sm")).await.unwrap();
        drop((writer, other, client));
        server.stop().await;
    }
    // A kill may leave more bytes in `data` than were acknowledged, and leftovers of
    // interrupted work around.
    let big = ingest_data_file(root, "big");
    let mut file = std::fs::OpenOptions::new().append(true).open(&big).unwrap();
    std::io::Write::write_all(&mut file, &data[2 << 20..(2 << 20) + 3]).unwrap();
    drop(file);
    std::fs::create_dir(root.join("ingest/0123.tmp-create-1-1")).unwrap();
    // Old enough to be a crash's leftover rather than another replica's create in progress.
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::open(root.join("ingest/0123.tmp-create-1-1")).unwrap().set_modified(long_ago).unwrap();
    std::fs::create_dir(root.join("ingest/half-committed")).unwrap();
    std::fs::write(
        root.join("ingest/half-committed/meta"),
        br#"{"ref":"gone","namespace":"default","started_at":0,"updated_at":0}"#,
    )
    .unwrap();
    std::fs::write(root.join(format!("blobs/sha256/{}.tmp", &digest[7..])), b"partial").unwrap();

    let server = Server::start(root).await;
    let mut client = server.client();
    let response = client.list_statuses(in_ns(ListStatusesRequest { filters: vec![] }, NS)).await.unwrap();
    let statuses = response.into_inner().statuses;
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    let big_status = &statuses[0];
    assert_eq!(big_status.r#ref, "big");
    assert_eq!((big_status.offset, big_status.total), ((2 << 20) + 3, data.len() as i64));
    assert_eq!(big_status.expected, digest);
    assert_eq!(status(&mut client, "other", "small").await.unwrap().offset, 2);
    assert_eq!(status(&mut client, NS, "gone").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(server.blob_files(), vec![kept[7..].to_string()], "temp blob file cleaned");
    let ingest_dirs = std::fs::read_dir(root.join("ingest")).unwrap().count();
    assert_eq!(ingest_dirs, 2, "only the two live ingests remain");

    let (mut writer, resumed) = Writer::open(&mut client, NS, stat("big")).await.unwrap();
    assert_eq!(resumed.offset, (2 << 20) + 3);
    assert_eq!(resumed.digest, digest_of(&data[..(2 << 20) + 3]), "hash rebuilt from the data on disk");
    assert_eq!(resumed.total, data.len() as i64);
    writer.send(write((2 << 20) + 3, &data[(2 << 20) + 3..])).await.unwrap();
    let done = writer.send(commit(data.len() as i64, 0, "")).await.unwrap();
    assert_eq!(done.digest, digest, "expected digest remembered across the restart");
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), data);
    assert_eq!(read_all(&mut client, NS, &kept).await.unwrap(), b"kept bytes");
    assert_eq!(info(&mut client, NS, &kept).await.unwrap().labels, labels(&[("k", "v")]));
}

const BAD_DIGESTS: [&str; 7] = [
    "",
    "sha256:xyz",
    "sha256:",
    "md5:d41d8cd98f00b204e9800998ecf8427e",
    "sha256:../../etc/passwd",
    "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

#[tokio::test]
async fn malformed_digests_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let kept = ingest(&mut client, NS, "kept", b"precious bytes").await;
    for digest in BAD_DIGESTS {
        let err = client.info(in_ns(InfoRequest { digest: digest.into() }, NS)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "info {digest:?}: {err:?}");
        assert!(err.message().contains("digest"), "says what is wrong: {}", err.message());
        let err = read_all(&mut client, NS, digest).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "read {digest:?}: {err:?}");
        let err = client.delete(in_ns(DeleteContentRequest { digest: digest.into() }, NS)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "delete {digest:?}: {err:?}");
        let update =
            UpdateRequest { info: Some(Info { digest: digest.into(), ..Default::default() }), update_mask: None };
        let err = client.update(in_ns(update, NS)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "update {digest:?}: {err:?}");
        if !digest.is_empty() {
            let err = Writer::open(&mut client, NS, stat_expecting("bad", 0, digest)).await.err().expect("refused");
            assert_eq!(err.code(), Code::InvalidArgument, "expected {digest:?}: {err:?}");
            // Also when it comes later in the stream.
            let (mut writer, _) = Writer::open(&mut client, NS, stat("bad-later")).await.unwrap();
            let err = writer.send(commit(0, 0, digest)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "later expected {digest:?}: {err:?}");
        }
    }
    let err = client.info(in_ns(InfoRequest { digest: "sha256:xyz".into() }, NS)).await.unwrap_err();
    assert!(err.message().contains("not lowercase hex"), "{}", err.message());
    let err = client.info(in_ns(InfoRequest { digest: BAD_DIGESTS[3].into() }, NS)).await.unwrap_err();
    assert!(err.message().contains("only sha256"), "{}", err.message());
    assert_eq!(read_all(&mut client, NS, &kept).await.unwrap(), b"precious bytes");
    assert_eq!(server.blob_files(), vec![kept[7..].to_string()]);
}

#[tokio::test]
async fn refs_are_checked_and_never_become_paths() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();

    let err = Writer::open(&mut client, NS, stat("")).await.err().expect("empty ref refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("ref"), "{}", err.message());
    for reference in ["a\0b".to_string(), "r".repeat(1025)] {
        let err = Writer::open(&mut client, NS, stat(&reference)).await.err().expect("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let err = client.status(in_ns(StatusRequest { r#ref: reference.clone() }, NS)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    assert!(Writer::open(&mut client, NS, stat(&"r".repeat(1024))).await.is_ok(), "long but sane");
    let err = client.abort(in_ns(AbortRequest { r#ref: String::new() }, NS)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client.abort(in_ns(AbortRequest { r#ref: "never".into() }, NS)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client.status(in_ns(StatusRequest { r#ref: "never".into() }, NS)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let escape = dir.path().parent().unwrap().join(format!("escaped-{}", std::process::id()));
    let sneaky = format!("../../../../../../{}", escape.display());
    let digest = ingest(&mut client, NS, &sneaky, b"sneaky").await;
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), b"sneaky");
    assert!(!escape.exists(), "a ref never becomes a path outside the root");
    let digest = ingest(&mut client, NS, "a/b/c", b"slashes").await;
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), b"slashes");
    let (_writer, _) = Writer::open(&mut client, NS, stat("..")).await.unwrap();
    assert_eq!(status(&mut client, NS, "..").await.unwrap().r#ref, "..");
}

#[tokio::test]
async fn bad_namespaces_labels_offsets_and_actions_are_refused_and_damage_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let kept = ingest_labelled(&mut client, NS, "kept", b"precious bytes", &[("k", "v")]).await;

    for ns in ["-bad", "bad/ns", "bad..ns", &"n".repeat(77)] {
        let err = client.info(in_ns(InfoRequest { digest: kept.clone() }, ns)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "namespace {ns:?}: {err:?}");
        let err = client.list(in_ns(ListContentRequest { filters: vec![] }, ns)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "namespace {ns:?}: {err:?}");
        let err = Writer::open(&mut client, ns, stat("x")).await.err().expect("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "namespace {ns:?}: {err:?}");
    }

    // Labels over 4096 bytes (key + value): refused at commit, which leaves the ingest as it was.
    let huge: HashMap<String, String> = [("big".to_string(), "v".repeat(4094))].into();
    let (mut writer, _) = Writer::open(&mut client, NS, stat("labelled")).await.unwrap();
    writer.send(write(0, b"label")).await.unwrap();
    let request =
        WriteContentRequest { data: b"led".to_vec(), labels: huge.clone(), ..commit(5, 8, &digest_of(b"labelled")) };
    let err = writer.send(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("4096"), "{}", err.message());
    assert_eq!(status(&mut client, NS, "labelled").await.unwrap().offset, 5, "the refused commit wrote nothing");
    assert!(info(&mut client, NS, &digest_of(b"labelled")).await.is_err());
    let at_limit: HashMap<String, String> = [("big".to_string(), "v".repeat(4093))].into();
    let (mut writer, _) = Writer::open(&mut client, NS, stat("labelled")).await.unwrap();
    let request =
        WriteContentRequest { data: b"led".to_vec(), labels: at_limit, ..commit(5, 8, &digest_of(b"labelled")) };
    writer.send(request).await.expect("4096 bytes is allowed");

    let update = UpdateRequest {
        info: Some(Info { digest: kept.clone(), labels: huge, ..Default::default() }),
        update_mask: Some(FieldMask { paths: vec!["labels.big".into()] }),
    };
    assert_eq!(client.update(in_ns(update, NS)).await.unwrap_err().code(), Code::InvalidArgument);
    let no_info = UpdateRequest { info: None, update_mask: None };
    assert_eq!(client.update(in_ns(no_info, NS)).await.unwrap_err().code(), Code::InvalidArgument);

    // Negative offsets and totals, unknown actions.
    let (mut writer, _) = Writer::open(&mut client, NS, stat("offsets")).await.unwrap();
    let err = writer.send(write(-3, b"x")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let (mut writer, _) = Writer::open(&mut client, NS, stat("offsets")).await.unwrap();
    let err = writer.send(commit(-1, 0, "")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = Writer::open(&mut client, NS, stat_expecting("totals", -1, "")).await.err().expect("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let (mut writer, _) = Writer::open(&mut client, NS, stat("totals")).await.unwrap();
    let err = writer.send(WriteContentRequest { total: -5, ..write(0, b"x") }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let (mut writer, _) = Writer::open(&mut client, NS, stat("actions")).await.unwrap();
    let err = writer.send(WriteContentRequest { action: 7, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_eq!(status(&mut client, NS, "offsets").await.unwrap().offset, 0);
    assert_eq!(status(&mut client, NS, "totals").await.unwrap().offset, 0);

    // Nothing stored was damaged.
    assert_eq!(read_all(&mut client, NS, &kept).await.unwrap(), b"precious bytes");
    assert_eq!(info(&mut client, NS, &kept).await.unwrap().labels, labels(&[("k", "v")]));
}
