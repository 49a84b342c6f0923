//! Info, List (filters, batching), Update (field masks), Delete, Read (ranges), and how
//! namespaces see blobs: isolated records over one shared blob directory.

mod common;

use berth_api::containerd::services::content::v1::{
    DeleteContentRequest, Info, ListContentRequest, ListStatusesRequest, UpdateRequest,
};
use berth_api::prost_types::FieldMask;
use common::*;
use futures::StreamExt;
use tonic::Code;

const NS: &str = "default";

async fn list(client: &mut Client, ns: &str, filters: &[&str]) -> Result<Vec<Vec<Info>>, tonic::Status> {
    let request = ListContentRequest { filters: filters.iter().map(|f| f.to_string()).collect() };
    let mut stream = client.list(in_ns(request, ns)).await?.into_inner();
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        batches.push(batch?.info);
    }
    Ok(batches)
}

async fn listed(client: &mut Client, ns: &str, filters: &[&str]) -> Vec<String> {
    let mut digests: Vec<String> =
        list(client, ns, filters).await.unwrap().into_iter().flatten().map(|info| info.digest).collect();
    digests.sort();
    digests
}

fn sorted(mut digests: Vec<String>) -> Vec<String> {
    digests.sort();
    digests
}

async fn update(
    client: &mut Client,
    ns: &str,
    digest: &str,
    pairs: &[(&str, &str)],
    paths: &[&str],
) -> Result<Info, tonic::Status> {
    let request = UpdateRequest {
        info: Some(Info { digest: digest.into(), labels: labels(pairs), ..Default::default() }),
        update_mask: Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() }),
    };
    Ok(client.update(in_ns(request, ns)).await?.into_inner().info.expect("info"))
}

async fn delete(client: &mut Client, ns: &str, digest: &str) -> Result<(), tonic::Status> {
    client.delete(in_ns(DeleteContentRequest { digest: digest.into() }, ns)).await.map(drop)
}

#[tokio::test]
async fn list_with_filters() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let dotted = ingest_labelled(&mut client, NS, "a", b"a", &[("a.b", "v"), ("kind", "layer")]).await;
    let config = ingest_labelled(&mut client, NS, "b", b"bb", &[("kind", "config"), ("x", "1")]).await;
    let bare = ingest(&mut client, NS, "c", b"ccc").await;
    ingest_labelled(&mut client, "other", "d", b"dddd", &[("kind", "layer")]).await;

    assert_eq!(listed(&mut client, NS, &[]).await, sorted(vec![dotted.clone(), config.clone(), bare.clone()]));
    assert_eq!(listed(&mut client, NS, &[r#"labels."a.b"==v"#]).await, vec![dotted.clone()]);
    assert_eq!(listed(&mut client, NS, &["labels.kind==layer"]).await, vec![dotted.clone()], "per namespace");
    assert_eq!(listed(&mut client, NS, &["labels.kind"]).await, sorted(vec![dotted.clone(), config.clone()]));
    assert_eq!(listed(&mut client, NS, &["labels.kind!=layer"]).await, sorted(vec![config.clone(), bare.clone()]));
    assert_eq!(listed(&mut client, NS, &[&format!("digest~={}", &bare[7..20])]).await, vec![bare.clone()]);
    assert_eq!(listed(&mut client, NS, &[&format!("digest=={config}")]).await, vec![config.clone()]);
    assert_eq!(listed(&mut client, NS, &["labels.kind==config,labels.x==1"]).await, vec![config.clone()]);
    assert!(listed(&mut client, NS, &["labels.kind==config,labels.x==2"]).await.is_empty(), "comma is and");
    assert_eq!(
        listed(&mut client, NS, &[r#"labels."a.b"==v"#, "size==3"]).await,
        sorted(vec![dotted.clone(), bare.clone()]),
        "several filters are or"
    );
    assert!(list(&mut client, NS, &["labels.nothing==1"]).await.unwrap().is_empty(), "no empty batches");
    let err = list(&mut client, NS, &["labels.a >< 1"]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = list(&mut client, NS, &["digest~=("]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test]
async fn list_sends_batches_of_100() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    for i in 0..250u32 {
        ingest(&mut client, NS, &format!("blob-{i}"), &i.to_be_bytes()).await;
    }
    let sizes: Vec<usize> = list(&mut client, NS, &[]).await.unwrap().iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 100, 50]);
}

#[tokio::test]
async fn update_follows_field_masks() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let digest = ingest_labelled(&mut client, NS, "u", b"labelled", &[("keep", "1"), ("change", "old")]).await;
    let created = info(&mut client, NS, &digest).await.unwrap();

    let one = update(&mut client, NS, &digest, &[("change", "new"), ("ignored", "x")], &["labels.change"]).await;
    let one = one.unwrap();
    assert_eq!(one.labels, labels(&[("keep", "1"), ("change", "new")]), "only the named key changes");
    assert_eq!(one.size, 8);
    assert_eq!(one.created_at, created.created_at);
    let nanos = |t: &Option<berth_api::prost_types::Timestamp>| {
        let t = t.as_ref().expect("timestamp");
        t.seconds as i128 * 1_000_000_000 + t.nanos as i128
    };
    assert!(nanos(&one.updated_at) > nanos(&created.updated_at), "updated_at moves");

    let removed = update(&mut client, NS, &digest, &[], &["labels.keep"]).await.unwrap();
    assert_eq!(removed.labels, labels(&[("change", "new")]), "a named key without value is removed");

    let all = update(&mut client, NS, &digest, &[("fresh", "1")], &["labels"]).await.unwrap();
    assert_eq!(all.labels, labels(&[("fresh", "1")]), "`labels` replaces them all");
    let empty_mask = update(&mut client, NS, &digest, &[("again", "2")], &[]).await.unwrap();
    assert_eq!(empty_mask.labels, labels(&[("again", "2")]), "no mask replaces the labels");
    assert_eq!(info(&mut client, NS, &digest).await.unwrap().labels, labels(&[("again", "2")]), "persisted");

    for path in ["size", "digest", "created_at"] {
        let err = update(&mut client, NS, &digest, &[], &[path]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{path}: {err:?}");
    }
    let err = update(&mut client, "other", &digest, &[], &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(info(&mut client, NS, &digest).await.unwrap().labels, labels(&[("again", "2")]), "unchanged");
}

#[tokio::test]
async fn delete_removes_the_blob_once_no_namespace_has_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let data = bytes(100_000, 5);
    let digest = ingest(&mut client, "a", "x", &data).await;
    ingest(&mut client, "b", "y", &data).await;
    let other = ingest(&mut client, "a", "z", b"other").await;
    assert_eq!(server.blob_files().len(), 2, "one file per digest, whatever the namespaces");

    delete(&mut client, "a", &digest).await.unwrap();
    assert_eq!(info(&mut client, "a", &digest).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(read_all(&mut client, "b", &digest).await.unwrap(), data, "b keeps it");
    assert_eq!(server.blob_files().len(), 2);
    assert_eq!(delete(&mut client, "a", &digest).await.unwrap_err().code(), Code::NotFound);

    delete(&mut client, "b", &digest).await.unwrap();
    assert_eq!(server.blob_files(), vec![other[7..].to_string()], "the last reference took the file");
    assert_eq!(read_all(&mut client, "a", &other).await.unwrap(), b"other");
    assert_eq!(listed(&mut client, "b", &[]).await, Vec::<String>::new());

    // Written again after the delete: a fresh upload.
    let again = ingest(&mut client, "b", "y2", &data).await;
    assert_eq!(read_all(&mut client, "b", &again).await.unwrap(), data);
}

#[tokio::test]
async fn read_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let data = bytes((5 << 19) + 3, 6); // 2.5 MiB + 3
    let digest = ingest(&mut client, NS, "r", &data).await;
    let len = data.len() as i64;

    let request =
        berth_api::containerd::services::content::v1::ReadContentRequest { digest: digest.clone(), offset: 0, size: 0 };
    let chunks: Vec<_> = client.read(in_ns(request, NS)).await.unwrap().into_inner().collect().await;
    let sizes: Vec<usize> = chunks.into_iter().map(|c| c.unwrap().data.len()).collect();
    assert_eq!(sizes, [1 << 20, 1 << 20, (1 << 19) + 3], "1 MiB chunks");

    for (offset, size, want) in [
        (0, 0, &data[..]),
        (3, 4, &data[3..7]),
        (1 << 20, 10, &data[1 << 20..(1 << 20) + 10]),
        (len - 5, 0, &data[data.len() - 5..]),
        (len - 5, 100, &data[data.len() - 5..]),
        (len, 0, &data[data.len()..]),
        (7, len, &data[7..]),
    ] {
        assert_eq!(read(&mut client, NS, &digest, offset, size).await.unwrap(), want, "offset {offset} size {size}");
    }
    let err = read(&mut client, NS, &digest, len + 1, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let err = read(&mut client, NS, &digest, 1 << 40, 1).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert_eq!(read(&mut client, NS, &digest, -1, 0).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(read(&mut client, NS, &digest, 0, -1).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(read(&mut client, "other", &digest, 0, 0).await.unwrap_err().code(), Code::NotFound);

    let empty = ingest(&mut client, NS, "empty", b"").await;
    assert_eq!(read_all(&mut client, NS, &empty).await.unwrap(), b"");
    assert_eq!(info(&mut client, NS, &empty).await.unwrap().size, 0);
}

#[tokio::test]
async fn namespaces_are_isolated_and_share_bytes_without_reupload() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let data = bytes(1 << 20, 7);
    let digest = ingest_labelled(&mut client, "team-a", "blob", &data, &[("owner", "a")]).await;

    assert_eq!(info(&mut client, "team-b", &digest).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(read_all(&mut client, "team-b", &digest).await.unwrap_err().code(), Code::NotFound);
    assert!(listed(&mut client, "team-b", &[]).await.is_empty());

    // team-b names the digest it expects: the bytes are there, so nothing is uploaded.
    let (mut writer, status) =
        Writer::open(&mut client, "team-b", stat_expecting("blob", data.len() as i64, &digest)).await.unwrap();
    assert_eq!((status.offset, status.total), (data.len() as i64, data.len() as i64));
    assert_eq!(status.digest, digest);
    let done =
        writer.send(commit_labelled(data.len() as i64, data.len() as i64, &digest, &[("owner", "b")])).await.unwrap();
    assert_eq!(done.digest, digest);
    assert_eq!(read_all(&mut client, "team-b", &digest).await.unwrap(), data);
    assert_eq!(info(&mut client, "team-b", &digest).await.unwrap().labels, labels(&[("owner", "b")]));
    assert_eq!(info(&mut client, "team-a", &digest).await.unwrap().labels, labels(&[("owner", "a")]));
    assert_eq!(server.blob_files().len(), 1);
    assert!(std::fs::read_dir(dir.path().join("ingest")).unwrap().next().is_none(), "no ingest was needed");

    // Without an expected digest (or with a different size) the client must upload.
    let (_writer, status) = Writer::open(&mut client, "team-c", stat("blob")).await.unwrap();
    assert_eq!(status.offset, 0);
    let (mut writer, status) = Writer::open(&mut client, "team-d", stat_expecting("blob", 5, &digest)).await.unwrap();
    assert_eq!(status.offset, 0, "announced size differs: no sharing");
    writer.send(write(0, &data)).await.unwrap();
    let done = writer.send(commit(data.len() as i64, data.len() as i64, &digest)).await.unwrap();
    assert_eq!(done.digest, digest);

    // Writing bytes at offset 0 on a shared writer starts an ordinary upload.
    let (mut writer, status) = Writer::open(&mut client, "team-e", stat_expecting("x", 0, &digest)).await.unwrap();
    assert_eq!(status.offset, data.len() as i64);
    assert_eq!(writer.send(write(0, &data[..10])).await.unwrap().offset, 10);
    writer.send(write(10, &data[10..])).await.unwrap();
    writer.send(commit(data.len() as i64, 0, &digest)).await.unwrap();
    assert_eq!(read_all(&mut client, "team-e", &digest).await.unwrap(), data);

    // Ingests are per namespace too.
    let (_a, _) = Writer::open(&mut client, "team-a", stat("pending")).await.unwrap();
    let statuses = |client: &mut Client, ns: &'static str| {
        let mut client = client.clone();
        async move {
            let request = ListStatusesRequest { filters: vec![] };
            let response = client.list_statuses(in_ns(request, ns)).await.unwrap().into_inner();
            response.statuses.into_iter().map(|s| s.r#ref).collect::<Vec<_>>()
        }
    };
    assert_eq!(statuses(&mut client, "team-a").await, ["pending"]);
    assert_eq!(statuses(&mut client, "team-c").await, ["blob"]);
    assert!(statuses(&mut client, "team-b").await.is_empty());
}

#[tokio::test]
async fn list_statuses_filters_on_ref() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = server.client();
    let mut writers = Vec::new();
    for reference in ["layer-1", "layer-2", "manifest-1"] {
        let (mut writer, _) = Writer::open(&mut client, NS, stat(reference)).await.unwrap();
        writer.send(write(0, reference.as_bytes())).await.unwrap();
        writers.push(writer);
    }
    let refs = |filters: &[&str]| {
        let mut client = client.clone();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        async move {
            let response = client.list_statuses(in_ns(ListStatusesRequest { filters }, NS)).await?.into_inner();
            Ok::<_, tonic::Status>(response.statuses.into_iter().map(|s| (s.r#ref, s.offset)).collect::<Vec<_>>())
        }
    };
    assert_eq!(refs(&[]).await.unwrap().len(), 3);
    assert_eq!(refs(&["ref~=^layer-"]).await.unwrap(), [("layer-1".into(), 7), ("layer-2".into(), 7)]);
    assert_eq!(refs(&["ref==manifest-1"]).await.unwrap(), [("manifest-1".into(), 10)]);
    assert_eq!(refs(&["ref=="]).await.unwrap_err().code(), Code::InvalidArgument);
}
