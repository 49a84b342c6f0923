//! Behaviour every backend must show; run against each backend.

use std::time::Duration;

use crate::{Compare, Embedded, Store, StoreError, Txn, lock_waiting};

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

    concurrent_commits(store).await;
    large_lists(store).await;
}

/// A listing larger than one etcd page and than a 4 MiB gRPC message comes back whole and in order.
async fn large_lists(store: &dyn Store) {
    let value = vec![b'v'; 4096];
    for batch in 0..10 {
        let mut txn = Txn::new();
        for i in 0..120 {
            txn = txn.put(format!("big/{:04}", batch * 120 + i), value.clone());
        }
        store.commit(txn).await.unwrap();
    }
    let keys: Vec<String> = store.list("big/").await.unwrap().into_iter().map(|e| e.key).collect();
    let want: Vec<String> = (0..1200).map(|i| format!("big/{i:04}")).collect();
    assert_eq!(keys, want);
}

/// Many commits at once (grouped into one write on the embedded backend): of racing creates
/// of one key exactly one wins; independent writes all land, each with its own revision.
async fn concurrent_commits(store: &dyn Store) {
    let racing = (0..32).map(|i| {
        store.commit(Txn::new().when(Compare::Absent("race".into())).put("race", format!("{i}").into_bytes()))
    });
    let outcomes = futures::future::join_all(racing).await;
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| matches!(o, Ok(()) | Err(StoreError::Conflict(_)))), "{outcomes:?}");

    let writes = (0..32).map(|i| store.commit(Txn::new().put(format!("many/{i:02}"), vec![i])));
    for outcome in futures::future::join_all(writes).await {
        outcome.unwrap();
    }
    let entries = store.list("many/").await.unwrap();
    assert_eq!(entries.len(), 32);
    let revisions: std::collections::BTreeSet<u64> = entries.iter().map(|e| e.revision).collect();
    assert_eq!(revisions.len(), 32, "each commit has its own revision");
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

/// Lock behaviour every backend shows; `other` is a second client of the same store (or the
/// same one where a second client cannot exist).
async fn lock_conformance(store: &dyn Store, other: &dyn Store) {
    let first = store.try_lock("ingest/x", "first holder").await.unwrap();
    assert_eq!(first.key(), "ingest/x");
    assert!(first.check().is_ok());
    for (who, contender) in [("same client", store), ("other client", other)] {
        match contender.try_lock("ingest/x", "second").await {
            Err(StoreError::Locked { key, holder }) => {
                assert_eq!(key, "ingest/x", "{who}");
                assert_eq!(holder.owner, "first holder", "{who}");
                assert!(holder.since.elapsed().unwrap_or_default() < Duration::from_secs(60), "{who}");
            }
            other => panic!("{who}: a held lock is refused, got {other:?}"),
        }
    }
    let unrelated = other.try_lock("ingest/y", "second").await.unwrap();
    // Locks live apart from the records.
    assert!(store.list("").await.unwrap().iter().all(|e| !e.key.contains("ingest/")));

    // An awaited release frees it at once, for every client.
    first.release().await;
    let second = other.try_lock("ingest/x", "second").await.unwrap();
    assert!(matches!(store.try_lock("ingest/x", "third").await, Err(StoreError::Locked { .. })));

    // A dropped guard frees it soon.
    drop(second);
    let mut third = None;
    for _ in 0..100 {
        if let Ok(guard) = store.try_lock("ingest/x", "third").await {
            third = Some(guard);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let third = third.expect("a dropped guard releases its lock");

    // Waiting for a lock: granted once the holder lets go, refused when it does not in time.
    let refused = lock_waiting(other, "ingest/x", "waiter", Duration::from_millis(200)).await;
    assert!(matches!(refused, Err(StoreError::Locked { .. })), "{refused:?}");
    let releasing = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        third.release().await;
    });
    let waited = lock_waiting(other, "ingest/x", "waiter", Duration::from_secs(5)).await.unwrap();
    releasing.await.unwrap();
    assert!(waited.check().is_ok());
    drop(unrelated);
}

#[tokio::test]
async fn embedded_locks_conform() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(&dir.path().join("meta.redb")).unwrap();
    lock_conformance(&store, &store.clone()).await;
}

async fn etcd_store(server: &crate::testing::EtcdServer, prefix: &str, ttl: Duration) -> crate::Etcd {
    crate::Etcd::connect(&[server.endpoint()], prefix).await.unwrap().with_lock_ttl(ttl)
}

/// etcd's smallest lease TTL with its default election timeout.
const SHORT_TTL: Duration = Duration::from_secs(2);

#[tokio::test]
async fn etcd_locks_conform_across_clients() {
    let server = crate::testing::EtcdServer::start();
    let a = etcd_store(&server, "/berth-test/locks/", crate::DEFAULT_LOCK_TTL).await;
    let b = etcd_store(&server, "/berth-test/locks/", crate::DEFAULT_LOCK_TTL).await;
    lock_conformance(&a, &b).await;
    // Another prefix is another stack: its locks are its own.
    let elsewhere = etcd_store(&server, "/berth-test/other-stack/", crate::DEFAULT_LOCK_TTL).await;
    let _held = a.try_lock("ingest/z", "a").await.unwrap();
    assert!(elsewhere.try_lock("ingest/z", "elsewhere").await.is_ok());
}

#[tokio::test]
async fn etcd_lock_is_kept_alive_past_its_ttl() {
    let server = crate::testing::EtcdServer::start();
    let a = etcd_store(&server, "/berth-test/keepalive/", SHORT_TTL).await;
    let b = etcd_store(&server, "/berth-test/keepalive/", SHORT_TTL).await;
    let guard = a.try_lock("k", "a").await.unwrap();
    tokio::time::sleep(SHORT_TTL * 3).await;
    assert!(guard.check().is_ok(), "renewed all along: {guard:?}");
    assert!(matches!(b.try_lock("k", "b").await, Err(StoreError::Locked { .. })));
}

#[tokio::test]
async fn etcd_lock_of_a_dead_holder_frees_after_its_ttl() {
    let server = crate::testing::EtcdServer::start();
    let endpoint = server.endpoint();
    // The holder runs on a runtime of its own that then disappears, with its connection and
    // without releasing: what a killed process leaves behind.
    let took = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let store = crate::Etcd::connect(&[endpoint], "/berth-test/dead/").await.unwrap().with_lock_ttl(SHORT_TTL);
            let guard = store.try_lock("k", "doomed").await.unwrap();
            std::mem::forget(guard);
        });
        runtime.shutdown_background();
        std::time::Instant::now()
    })
    .join()
    .unwrap();

    let survivor = etcd_store(&server, "/berth-test/dead/", SHORT_TTL).await;
    let refused = survivor.try_lock("k", "survivor").await;
    assert!(matches!(&refused, Err(StoreError::Locked { holder, .. }) if holder.owner == "doomed"), "{refused:?}");
    let guard = loop {
        match survivor.try_lock("k", "survivor").await {
            Ok(guard) => break guard,
            Err(StoreError::Locked { .. }) if took.elapsed() < SHORT_TTL * 4 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the dead holder's lock never expired: {err:?}"),
        }
    };
    assert!(took.elapsed() >= SHORT_TTL - Duration::from_millis(500), "not before its TTL: {:?}", took.elapsed());
    assert!(guard.check().is_ok());
}

#[tokio::test]
async fn etcd_lock_holder_learns_when_etcd_is_gone() {
    let mut server = crate::testing::EtcdServer::start();
    let store = etcd_store(&server, "/berth-test/outage-lock/", SHORT_TTL).await;
    let guard = store.try_lock("k", "a").await.unwrap();
    server.stop();
    let started = std::time::Instant::now();
    let reason = tokio::time::timeout(SHORT_TTL * 2, guard.lost()).await.expect("the holder learns it lost the lock");
    assert!(started.elapsed() <= SHORT_TTL, "before etcd could hand it to anyone else: {:?}", started.elapsed());
    assert!(reason.contains("not renewed"), "{reason}");
    assert!(matches!(guard.check(), Err(StoreError::LockLost { .. })));
    // Lost is final, even once etcd is back.
    server.restart();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(guard.check().is_err());
}

#[tokio::test]
async fn etcd_lock_holder_learns_when_its_lease_is_revoked() {
    let server = crate::testing::EtcdServer::start();
    let store = etcd_store(&server, "/berth-test/revoked/", crate::DEFAULT_LOCK_TTL).await;
    let guard = store.try_lock("k", "a").await.unwrap();
    // Someone (an operator, etcd's own lease expiry) removes the lease under the holder.
    let mut raw = etcd_client::Client::connect([server.endpoint()], None).await.unwrap();
    let response = raw.get("/berth-test/revoked/__locks/k", None).await.unwrap();
    let lease = response.kvs().first().expect("the lock key exists").lease();
    assert_ne!(lease, 0, "the lock key is attached to a lease");
    raw.lease_revoke(lease).await.unwrap();
    let reason =
        tokio::time::timeout(crate::DEFAULT_LOCK_TTL / 2, guard.lost()).await.expect("learns within a renewal");
    assert!(reason.contains("expired or was revoked"), "{reason}");
    assert!(guard.check().is_err());
}
