//! Which blobs of a pull are in the content store yet, so that unpacking a layer can start
//! as soon as it (and the layers below it) arrived, while later layers still download.

use std::collections::HashMap;

use tokio::sync::watch;
use tonic::Status;

/// One flag per blob, raised once it is stored. Dropping this (the fetches ended without
/// the blob, or were cancelled) wakes waiters with an error.
#[derive(Default)]
pub struct Arrivals {
    flags: HashMap<String, watch::Sender<bool>>,
}

impl Arrivals {
    pub fn new<'a>(digests: impl IntoIterator<Item = &'a str>) -> Arrivals {
        Arrivals { flags: digests.into_iter().map(|d| (d.to_string(), watch::Sender::new(false))).collect() }
    }

    pub fn arrived(&self, digest: &str) {
        if let Some(flag) = self.flags.get(digest) {
            flag.send_replace(true);
        }
    }

    /// Waits until `digest` is stored; right away for a blob this pull does not fetch.
    pub async fn wait(&self, digest: &str) -> Result<(), Status> {
        let Some(flag) = self.flags.get(digest) else { return Ok(()) };
        let mut receiver = flag.subscribe();
        receiver
            .wait_for(|arrived| *arrived)
            .await
            .map(|_| ())
            .map_err(|_| Status::cancelled(format!("blob {digest} will not arrive: the pull stopped")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_their_blob_arrives() {
        let arrivals = Arrivals::new(["sha256:a", "sha256:b"]);
        arrivals.wait("sha256:unknown").await.unwrap();
        let waiting = arrivals.wait("sha256:b");
        arrivals.arrived("sha256:a");
        arrivals.arrived("sha256:b");
        waiting.await.unwrap();
        arrivals.wait("sha256:a").await.unwrap();
    }
}
