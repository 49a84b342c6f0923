//! Locks on etcd: a key created only when absent, attached to a lease of its own.
//!
//! - Taking: grant a lease with the lock TTL, then one Txn `create_revision(key) == 0` →
//!   put the holder's description with the lease; otherwise read who holds it (`Locked`).
//! - Holding: a task renews the lease every TTL/4 over a keepalive stream. The holder counts
//!   the lock as its own only until 3/4 TTL after the last renewal it *sent* that etcd
//!   confirmed: etcd renews later than that send, so the lease (and the key) certainly
//!   outlives the holder's own deadline, and the last quarter of the TTL is margin for clock
//!   rate differences and for work started just before the deadline. Past the deadline, or
//!   when etcd answers that the lease is gone, the lock is lost for good.
//! - Releasing: revoking the lease deletes the key with it. A holder that dies (kill -9,
//!   partition) stops renewing, and etcd deletes the key when the lease expires, one TTL later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse,
};
use tokio::sync::oneshot;

use super::{Etcd, LOCKS, unavailable};
use crate::StoreError;
use crate::lock::{BoxFuture, Holder, LockGuard, LockState};

/// Shortest pause between two renewals.
const MIN_RENEW_INTERVAL: Duration = Duration::from_millis(200);

/// How long after a renewal was sent the lock still counts as held.
fn validity(ttl: Duration) -> Duration {
    ttl - ttl / 4
}

fn renew_interval(ttl: Duration) -> Duration {
    (ttl / 4).max(MIN_RENEW_INTERVAL)
}

/// Lease TTLs are whole seconds; round up so the lock lives at least as long as asked.
pub(super) fn ttl_seconds(ttl: Duration) -> i64 {
    let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(seconds.max(1)).unwrap_or(i64::MAX)
}

pub(super) async fn try_lock(etcd: &Etcd, key: &str, owner: &str) -> Result<LockGuard, StoreError> {
    let full = format!("{}{LOCKS}{key}", etcd.prefix);
    let asked = Instant::now();
    let grant = etcd.client.lease_client().grant(ttl_seconds(etcd.lock_ttl), None).await.map_err(unavailable)?;
    let (lease, ttl) = (grant.id(), Duration::from_secs(grant.ttl().unsigned_abs()));
    let holder = Holder::new(owner);
    let txn = Txn::new()
        .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(full.clone(), holder.encode(), Some(PutOptions::new().with_lease(lease)))])
        .or_else([TxnOp::get(full.clone(), None)]);
    let response = match etcd.client.kv_client().txn(txn).await {
        Ok(response) => response,
        Err(err) => {
            // It may have been applied all the same: the revoke takes the key away with it.
            tokio::spawn(revoke(etcd.client.clone(), lease));
            return Err(unavailable(err));
        }
    };
    if !response.succeeded() {
        tokio::spawn(revoke(etcd.client.clone(), lease));
        let holder = response
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().map(|kv| Holder::decode(kv.value())),
                _ => None,
            })
            // Released between the compare and the read; report it as held all the same.
            .unwrap_or_else(|| Holder::new("another holder"));
        return Err(StoreError::Locked { key: key.to_string(), holder });
    }

    let state = LockState::expiring(asked + validity(ttl));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(keep_alive(etcd.client.clone(), lease, ttl, state.clone(), stopped, full));
    let client = etcd.client.clone();
    let release = Box::new(move || {
        Box::pin(async move {
            drop(stop);
            revoke(client, lease).await;
        }) as BoxFuture
    });
    Ok(LockGuard::new(key, state, release))
}

/// Revokes the lease (deleting its key); failures only delay the release until the TTL.
async fn revoke(client: Client, lease: i64) {
    if let Err(err) = client.lease_client().revoke(lease).await {
        tracing::debug!(lease = format_args!("{lease:x}"), error = %err, "lease revoke failed; it expires by itself");
    }
}

/// Renews `lease` until `stopped` fires (the guard was released) or the lock is lost.
async fn keep_alive(
    client: Client,
    lease: i64,
    ttl: Duration,
    state: Arc<LockState>,
    mut stopped: oneshot::Receiver<()>,
    key: String,
) {
    let interval = renew_interval(ttl);
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            () = tokio::time::sleep(interval) => {}
        }
        if state.deadline().is_some_and(|deadline| Instant::now() >= deadline) {
            state.lose(format!("its lease was not renewed within {:.1}s", validity(ttl).as_secs_f64()));
            tracing::warn!(key, "lost a lock: its lease could not be renewed in time");
            revoke(client, lease).await;
            return;
        }
        let sent = Instant::now();
        let renewed = tokio::select! {
            _ = &mut stopped => return,
            renewed = tokio::time::timeout(interval, renew(&client, lease, ttl, &mut stream)) => renewed,
        };
        match renewed {
            Ok(Ok(left)) if left > 0 => state.extend(sent + validity(Duration::from_secs(left.unsigned_abs()))),
            Ok(Ok(_)) => {
                state.lose("its lease expired or was revoked");
                tracing::warn!(key, "lost a lock: etcd no longer has its lease");
                return;
            }
            Ok(Err(err)) => {
                tracing::debug!(key, error = %err, "lease renewal failed; retrying");
                stream = None;
            }
            Err(_) => {
                tracing::debug!(key, "lease renewal timed out; retrying");
                stream = None;
            }
        }
    }
}

/// One renewal; the TTL etcd reports left (0: the lease is gone).
async fn renew(
    client: &Client,
    lease: i64,
    ttl: Duration,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<i64, etcd_client::Error> {
    let Some((keeper, responses)) = stream else {
        // Opening the stream renews once and reads etcd's answer itself: a lease etcd no
        // longer has is an error, anything else a renewal to the full TTL.
        return match client.lease_client().keep_alive(lease).await {
            Ok(opened) => {
                *stream = Some(opened);
                Ok(ttl_seconds(ttl))
            }
            Err(etcd_client::Error::LeaseKeepAliveError(message)) if message.contains("not found") => Ok(0),
            Err(err) => Err(err),
        };
    };
    keeper.keep_alive().await?;
    match responses.message().await? {
        Some(response) => Ok(response.ttl()),
        None => Err(etcd_client::Error::LeaseKeepAliveError("keepalive stream ended".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::from_secs(10)), 10);
        assert_eq!(ttl_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(validity(Duration::from_secs(4)), Duration::from_secs(3));
        assert_eq!(renew_interval(Duration::from_secs(4)), Duration::from_secs(1));
    }
}
