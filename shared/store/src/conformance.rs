//! Behaviour every backend must show; run against each backend.

use crate::{Compare, Embedded, Store, StoreError, Txn};

async fn conformance(store: &dyn Store) {
    assert!(store.get("a/1").await.unwrap().is_none());

    store.commit(Txn::new().when(Compare::Absent("a/1".into())).put("a/1", b"one".to_vec())).await.unwrap();
    let first = store.get("a/1").await.unwrap().expect("written");
    assert_eq!(first.value, b"one");

    // Creating again is a conflict and changes nothing.
    let again = store.commit(Txn::new().when(Compare::Absent("a/1".into())).put("a/1", b"x".to_vec())).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");
    assert_eq!(store.get("a/1").await.unwrap().unwrap().value, b"one");

    // Compare-and-swap on the revision: the first update wins, a stale one conflicts.
    store
        .commit(Txn::new().when(Compare::Revision("a/1".into(), first.revision)).put("a/1", b"two".to_vec()))
        .await
        .unwrap();
    let stale = store
        .commit(Txn::new().when(Compare::Revision("a/1".into(), first.revision)).put("a/1", b"three".to_vec()))
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))));
    let second = store.get("a/1").await.unwrap().unwrap();
    assert_eq!(second.value, b"two");
    assert!(second.revision > first.revision);

    // Several ops apply together; prefix listing is ordered and bounded by the prefix.
    store.commit(Txn::new().put("a/2", b"2".to_vec()).put("b/1", b"b".to_vec())).await.unwrap();
    let keys: Vec<_> = store.list("a/").await.unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["a/1", "a/2"]);

    // A failed compare applies none of the ops.
    let failed = store.commit(Txn::new().when(Compare::Absent("b/1".into())).delete("a/1").delete("a/2")).await;
    assert!(failed.is_err());
    assert_eq!(store.list("a/").await.unwrap().len(), 2);

    store.commit(Txn::new().delete("a/1")).await.unwrap();
    assert!(store.get("a/1").await.unwrap().is_none());
}

#[tokio::test]
async fn embedded_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(&dir.path().join("meta.redb")).unwrap();
    conformance(&store).await;
}

#[tokio::test]
async fn embedded_backend_keeps_records_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let store = Embedded::open(&path).unwrap();
        store.commit(Txn::new().put("k", b"v".to_vec())).await.unwrap();
    }
    let store = Embedded::open(&path).unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test]
async fn etcd_backend_conforms() {
    let server = crate::testing::EtcdServer::start();
    let store = crate::Etcd::connect(&[server.endpoint()], "/berth-test/conformance/").await.unwrap();
    conformance(&store).await;
}

#[tokio::test]
async fn etcd_prefixes_keep_stacks_apart() {
    let server = crate::testing::EtcdServer::start();
    let a = crate::Etcd::connect(&[server.endpoint()], "/stack-a/").await.unwrap();
    let b = crate::Etcd::connect(&[server.endpoint()], "/stack-b/").await.unwrap();
    a.commit(Txn::new().put("k", b"a".to_vec())).await.unwrap();
    assert!(b.get("k").await.unwrap().is_none());
    assert!(b.list("").await.unwrap().iter().all(|e| !e.key.starts_with('k')));
}

#[tokio::test]
async fn etcd_down_fails_fast_and_recovers() {
    let mut server = crate::testing::EtcdServer::start();
    let store = crate::Etcd::connect(&[server.endpoint()], "/berth-test/outage/").await.unwrap();
    store.commit(Txn::new().put("k", b"v".to_vec())).await.unwrap();
    server.stop();
    let started = std::time::Instant::now();
    let err = store.get("k").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    server.restart();
    let mut value = None;
    for _ in 0..100 {
        if let Ok(Some(entry)) = store.get("k").await {
            value = Some(entry.value);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(value.as_deref(), Some(&b"v"[..]), "recovers without a new client");
}
