//! Bad input to the content service gets the right gRPC code and a message saying what was
//! wrong, and damages nothing already stored.

use std::collections::HashMap;

use berth_e2e::content::{Writer, in_namespace, info, ingest, read_all, stat, write};
use berth_e2e::{Stack, digest_of};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    DeleteContentRequest, Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteContentRequest,
};
use futures::StreamExt;
use tonic::Code;

const NS: &str = "default";

async fn read(
    client: &mut ContentClient<tonic::transport::Channel>,
    digest: &str,
    offset: i64,
    size: i64,
) -> Result<Vec<u8>, tonic::Status> {
    let request = ReadContentRequest { digest: digest.into(), offset, size };
    let mut stream = client.read(in_namespace(request, NS)).await?.into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk?.data);
    }
    Ok(data)
}

#[tokio::test]
async fn bad_input_is_refused_and_damages_nothing() {
    let stack = Stack::start().await;
    let mut client = ContentClient::new(stack.containerd_channel().await);
    let kept = ingest(&mut client, NS, "kept", b"precious bytes").await;

    // Malformed digests.
    for digest in [
        "",
        "sha256:xyz",
        "sha256:",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:../../etc/passwd",
        "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    ] {
        let err = client.info(in_namespace(InfoRequest { digest: digest.into() }, NS)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "info {digest:?}: {err:?}");
        assert!(!err.message().is_empty());
        let err = read(&mut client, digest, 0, 0).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "read {digest:?}: {err:?}");
        let err = client.delete(in_namespace(DeleteContentRequest { digest: digest.into() }, NS)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "delete {digest:?}: {err:?}");
        let mut bad_expected = stat("bad-expected");
        bad_expected.expected = digest.into();
        if !digest.is_empty() {
            let err = Writer::open(&mut client, NS, bad_expected).await.err().expect("refused");
            assert_eq!(err.code(), Code::InvalidArgument, "expected {digest:?}: {err:?}");
        }
    }

    // Refs: empty is refused; `/` and `..` are just names (refs are hashed before they are paths).
    let err = Writer::open(&mut client, NS, stat("")).await.err().expect("empty ref refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("ref"), "{}", err.message());
    let escape = stack.dir.path().join("escaped");
    let sneaky = format!("../../../../../../{}", escape.display());
    let digest = ingest(&mut client, NS, &sneaky, b"sneaky").await;
    assert_eq!(read_all(&mut client, NS, &digest).await.unwrap(), b"sneaky");
    assert!(!escape.exists(), "a ref never becomes a path outside the root");
    ingest(&mut client, NS, "a/b/c", b"slashes").await;

    // Namespaces breaking the identifier rule.
    for ns in ["-bad", "bad/ns", "bad..ns", &"n".repeat(77)] {
        let err = client.info(in_namespace(InfoRequest { digest: kept.clone() }, ns)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "namespace {ns:?}: {err:?}");
    }

    // Labels over 4096 bytes, on commit and on update.
    let huge: HashMap<String, String> = [("big".to_string(), "v".repeat(4096))].into();
    let (mut writer, _) = Writer::open(&mut client, NS, stat("labelled")).await.unwrap();
    writer.send(write("labelled", 0, b"labelled")).await.unwrap();
    let request = WriteContentRequest {
        action: 2,
        r#ref: "labelled".into(),
        offset: 8,
        total: 8,
        expected: digest_of(b"labelled"),
        labels: huge.clone(),
        ..Default::default()
    };
    let err = writer.send(request).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let update = UpdateRequest {
        info: Some(Info { digest: kept.clone(), labels: huge, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["labels.big".into()] }),
    };
    let err = client.update(in_namespace(update, NS)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let unknown_path = UpdateRequest {
        info: Some(Info { digest: kept.clone(), ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["size".into()] }),
    };
    let err = client.update(in_namespace(unknown_path, NS)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Negative and absurd offsets and totals.
    let err = read(&mut client, &kept, -1, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = read(&mut client, &kept, 0, -5).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = read(&mut client, &kept, 1 << 40, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "read past the end: {err:?}");
    let (mut writer, _) = Writer::open(&mut client, NS, stat("offsets")).await.unwrap();
    let err = writer.send(write("offsets", -3, b"x")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let (mut writer, _) = Writer::open(&mut client, NS, stat("offsets")).await.unwrap();
    let err = writer.send(write("offsets", i64::MAX, b"x")).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let mut negative_total = stat("totals");
    negative_total.total = -1;
    let err = Writer::open(&mut client, NS, negative_total).await.err().expect("negative total refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Not found is NotFound.
    let absent = digest_of(b"never written");
    assert_eq!(info(&mut client, NS, &absent).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(read(&mut client, &absent, 0, 0).await.unwrap_err().code(), Code::NotFound);

    // Nothing stored was damaged.
    assert_eq!(read_all(&mut client, NS, &kept).await.unwrap(), b"precious bytes");
    assert_eq!(read(&mut client, &kept, 3, 4).await.unwrap(), b"ciou");
}
