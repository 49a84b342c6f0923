//! Two content stores over one root, with their records and locks on one etcd: what
//! `berthd --content-replicas 2` runs as two processes, here in one so each step is exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_content::{ContentStore, Digest, Error};
use berth_store::testing::EtcdServer;

const NS: &str = "default";

struct Replicas {
    etcd: EtcdServer,
    root: tempfile::TempDir,
    a: ContentStore,
    b: ContentStore,
}

async fn replica(etcd: &EtcdServer, root: &std::path::Path, lock_ttl: Duration) -> ContentStore {
    let records = berth_store::Etcd::connect(&[etcd.endpoint()], "/replicas/content/").await.unwrap();
    ContentStore::open(root, Arc::new(records.with_lock_ttl(lock_ttl))).unwrap()
}

async fn replicas(lock_ttl: Duration) -> Replicas {
    let etcd = EtcdServer::start();
    let root = tempfile::tempdir().unwrap();
    let a = replica(&etcd, root.path(), lock_ttl).await;
    let b = replica(&etcd, root.path(), lock_ttl).await;
    Replicas { etcd, root, a, b }
}

async fn read(store: &ContentStore, ns: &str, digest: &Digest) -> Vec<u8> {
    let mut reader = store.reader(ns, digest, 0, 0).await.unwrap();
    let mut data = Vec::new();
    while let Some((_, chunk)) = reader.next_chunk().await.unwrap() {
        data.extend_from_slice(&chunk);
    }
    data
}

#[tokio::test]
async fn a_ref_has_one_writer_across_replicas_and_resumes_on_the_other() {
    let r = replicas(berth_store::DEFAULT_LOCK_TTL).await;
    let mut first = r.a.writer(NS, "r", 11, None).await.unwrap();
    first.write(0, b"hello ".to_vec()).await.unwrap();

    let refused = r.b.writer(NS, "r", 0, None).await.err().expect("a second writer is refused");
    let message = refused.to_string();
    assert!(matches!(refused, Error::Unavailable(_)), "{refused:?}");
    assert!(message.starts_with("ref r locked for ") && message.contains("(since 20"), "{message}");
    assert!(message.contains(&format!("by berth-content pid {}", std::process::id())), "{message}");
    // Other refs and other namespaces are free.
    r.b.writer(NS, "other", 0, None).await.unwrap().release().await;
    r.b.writer("elsewhere", "r", 0, None).await.unwrap().release().await;

    first.release().await;
    let mut second = r.b.writer(NS, "r", 0, None).await.unwrap();
    let progress = second.progress().unwrap();
    assert_eq!((progress.offset, progress.total), (6, 11), "resumes where the first writer stopped");
    assert!(matches!(second.write(5, b"x".to_vec()).await, Err(Error::OutOfRange(_))));
    second.write(6, b"world".to_vec()).await.unwrap();
    let done = second.commit(11, Vec::new(), HashMap::new()).await.unwrap();
    second.release().await;
    assert_eq!(done.digest, Digest::of(b"hello world"));
    assert_eq!(read(&r.a, NS, &done.digest).await, b"hello world", "written on b, read on a");
    assert_eq!(r.a.info(NS, &done.digest).await.unwrap().size, 11);
}

#[tokio::test]
async fn a_writer_that_lost_its_lock_stops_before_changing_anything() {
    let mut r = replicas(Duration::from_secs(2)).await;
    let mut writer = r.a.writer(NS, "r", 0, None).await.unwrap();
    writer.write(0, b"kept".to_vec()).await.unwrap();
    // etcd goes away: the lease cannot be renewed, so the lock may pass to another replica
    // once it expires; the holder gives up before that (3/4 of the TTL after its last renewal).
    r.etcd.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let err = writer.write(4, b"late".to_vec()).await.unwrap_err();
    assert!(matches!(&err, Error::Unavailable(m) if m.contains("lost the lock")), "{err:?}");
    let offset = r.b.status(NS, "r").await.unwrap().offset;
    assert_eq!(offset, 4, "nothing written after the loss");
    let commit = writer.commit(offset, Vec::new(), HashMap::new()).await;
    assert!(matches!(commit, Err(Error::Unavailable(_))), "no commit without the lock: {commit:?}");
    assert!(r.root.path().join("ingest").read_dir().unwrap().count() == 1, "the ingest is kept for a resume");
    drop(writer);
}

#[tokio::test]
async fn an_abort_on_another_replica_fails_the_writers_commit() {
    let r = replicas(berth_store::DEFAULT_LOCK_TTL).await;
    let mut writer = r.a.writer(NS, "r", 0, None).await.unwrap();
    writer.write(0, b"abc".to_vec()).await.unwrap();
    r.b.abort(NS, "r").await.unwrap();
    let err = writer.commit(3, Vec::new(), HashMap::new()).await.unwrap_err();
    assert!(matches!(&err, Error::NotFound(m) if m.contains("aborted")), "{err:?}");
    writer.release().await;
    assert!(r.a.info(NS, &Digest::of(b"abc")).await.is_err(), "nothing was committed");
    assert!(matches!(r.b.status(NS, "r").await, Err(Error::NotFound(_))));
}

#[tokio::test]
async fn two_replicas_committing_one_digest_store_it_once() {
    let r = replicas(berth_store::DEFAULT_LOCK_TTL).await;
    let data = vec![7u8; 3 << 20];
    let digest = Digest::of(&data);
    let commit = |store: ContentStore, ns: &'static str, reference: &'static str, data: Vec<u8>| async move {
        let mut writer = store.writer(ns, reference, data.len() as i64, None).await.unwrap();
        writer.write(0, data.clone()).await.unwrap();
        let result = writer.commit(data.len() as i64, Vec::new(), HashMap::new()).await;
        writer.release().await;
        result
    };
    // One namespace: one commit wins, the other is AlreadyExists (as containerd answers).
    let (one, two) =
        tokio::join!(commit(r.a.clone(), NS, "r1", data.clone()), commit(r.b.clone(), NS, "r2", data.clone()));
    let results = [one, two];
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().any(|r| matches!(r, Err(Error::AlreadyExists(_)))), "{results:?}");
    // Two namespaces: both get a record of the one blob.
    let (one, two) =
        tokio::join!(commit(r.a.clone(), "x", "r1", data.clone()), commit(r.b.clone(), "y", "r2", data.clone()));
    assert_eq!(one.unwrap().digest, digest);
    assert_eq!(two.unwrap().digest, digest);
    for (store, ns) in [(&r.a, NS), (&r.b, "x"), (&r.a, "y")] {
        assert_eq!(read(store, ns, &digest).await, data, "{ns}");
    }
    let blobs = r.root.path().join("blobs/sha256").read_dir().unwrap().count();
    assert_eq!(blobs, 1);
    assert_eq!(r.root.path().join("ingest").read_dir().unwrap().count(), 0, "both ingests are gone");
}

#[tokio::test]
async fn delete_on_one_replica_never_strands_a_commit_on_the_other() {
    let r = replicas(berth_store::DEFAULT_LOCK_TTL).await;
    let data = b"contended blob".to_vec();
    let digest = Digest::of(&data);
    for round in 0..10 {
        // The blob exists for namespace x only.
        let mut writer = r.a.writer("x", "seed", 0, None).await.unwrap();
        writer.write(0, data.clone()).await.unwrap();
        writer.commit(data.len() as i64, Vec::new(), HashMap::new()).await.unwrap();
        writer.release().await;

        // b deletes x's record (and so the blob) while a adds y's record without uploading.
        let deleting = r.b.delete("x", &digest);
        let committing = async {
            let mut writer = r.a.writer("y", "shared", data.len() as i64, Some(digest.clone())).await.unwrap();
            let result = writer.commit(data.len() as i64, Vec::new(), HashMap::new()).await;
            writer.release().await;
            result
        };
        let (deleted, committed) = tokio::join!(deleting, committing);
        deleted.unwrap();
        match committed {
            // The commit came first: the delete must have kept the blob for y.
            Ok(_) => assert_eq!(read(&r.b, "y", &digest).await, data, "round {round}"),
            // The delete came first: the commit is told its bytes are not there (upload them).
            Err(Error::FailedPrecondition(_) | Error::OutOfRange(_)) => assert!(r.a.info("y", &digest).await.is_err()),
            Err(err) => panic!("round {round}: {err:?}"),
        }
        if r.a.info("y", &digest).await.is_ok() {
            r.a.delete("y", &digest).await.unwrap();
        }
        assert_eq!(r.root.path().join("blobs/sha256").read_dir().unwrap().count(), 0, "round {round}");
    }
}
