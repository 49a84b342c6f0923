//! containerd's Images service logic: image records (name → target descriptor, labels) in
//! the store, with containerd's validation, update masks and filters, and the events it
//! publishes. No gRPC server types here: [`crate::service`] adapts it.

use std::time::SystemTime;

use berth_api::containerd::services::images::v1::{Image, ImageCreate, ImageDelete, ImageUpdate};
use berth_api::containerd::types::Descriptor;
use berth_core::filters::{Adaptor, AnyOf, label_field};
use berth_store::{Compare, StoreError, Txn};
use prost::Message;
use tonic::Status;

use crate::digest;
use crate::records::{self, Records, Versioned};

/// How often [`ImageStore::put`] tries when others create and delete the name meanwhile.
const PUT_ATTEMPTS: usize = 3;

fn not_found(name: &str) -> Status {
    Status::not_found(format!("image {name:?}: not found"))
}

/// containerd's validateImage: a name, valid labels and a target with digest, size and type.
pub fn validate(image: &Image) -> Result<(), Status> {
    if image.name.is_empty() {
        return Err(Status::invalid_argument("image name must not be empty"));
    }
    berth_core::labels::validate(&image.labels)
        .map_err(|s| Status::invalid_argument(format!("image.Labels: {}", s.message())))?;
    validate_target(image.target.as_ref())
}

fn validate_target(target: Option<&Descriptor>) -> Result<(), Status> {
    let Some(target) = target else {
        return Err(Status::invalid_argument("image.Target must be set (digest, media type and size)"));
    };
    if let Err(problem) = digest::validate(&target.digest) {
        return Err(Status::invalid_argument(format!("Target.Digest {:?} invalid: {problem}", target.digest)));
    }
    if target.size <= 0 {
        return Err(Status::invalid_argument("Target.Size must be greater than zero"));
    }
    if target.media_type.is_empty() {
        return Err(Status::invalid_argument("Target.MediaType must be set"));
    }
    Ok(())
}

/// What the image service tells its neighbours: events and new namespaces go to the metadata
/// service, and deletions ask its garbage collector to run. All no-ops without a metadata peer.
#[derive(Clone, Default)]
pub struct Neighbours {
    pub events: Option<berth_peers::Publisher>,
    pub namespaces: berth_peers::Namespaces,
    pub gc: Option<berth_peers::PeerChannel>,
}

impl Neighbours {
    /// The neighbours among `peers` (the `metadata` one). Must run inside a tokio runtime.
    pub fn from_peers(peers: &berth_peers::Peers) -> Neighbours {
        let metadata = peers.channel("metadata");
        Neighbours {
            events: metadata.clone().map(berth_peers::Publisher::new),
            namespaces: berth_peers::Namespaces::new(metadata.clone()),
            gc: metadata,
        }
    }

    fn publish<E: prost::Name>(&self, namespace: &str, topic: &str, event: &E) {
        if let Some(events) = &self.events {
            events.publish(namespace, topic, event);
        }
    }

    /// Runs a garbage collection and waits for it (Delete with `sync`).
    async fn collect(&self, namespace: &str) -> Result<(), Status> {
        let Some(channel) = &self.gc else { return Ok(()) };
        let mut gc = berth_api::berth::metadata::v1::gc_client::GcClient::new(channel.clone());
        gc.collect(berth_peers::request(namespace, berth_api::berth::metadata::v1::CollectRequest {})).await.map_err(
            |status| {
                Status::unavailable(format!("image deleted, but the garbage collection failed: {}", status.message()))
            },
        )?;
        Ok(())
    }

    /// Asks for a collection without waiting: what the image held may be free now.
    fn collect_soon(&self, namespace: &str) {
        let Some(channel) = self.gc.clone() else { return };
        let namespace = namespace.to_string();
        tokio::spawn(async move {
            let mut gc = berth_api::berth::metadata::v1::gc_client::GcClient::new(channel);
            let call = berth_peers::request(&namespace, berth_api::berth::metadata::v1::CollectRequest {});
            if let Err(status) = gc.collect(call).await {
                tracing::warn!(namespace, "garbage collection after an image change failed: {status}");
            }
        });
    }
}

/// Image records of every namespace.
#[derive(Clone)]
pub struct ImageStore {
    records: Records,
    neighbours: Neighbours,
}

fn timestamp_or_now(source_date_epoch: Option<prost_types::Timestamp>) -> prost_types::Timestamp {
    source_date_epoch.unwrap_or_else(|| SystemTime::now().into())
}

impl ImageStore {
    pub fn new(records: Records, neighbours: Neighbours) -> ImageStore {
        ImageStore { records, neighbours }
    }

    async fn read(&self, namespace: &str, name: &str) -> Result<Versioned<Image>, Status> {
        let entry = self.records.get(&records::image_key(namespace, name)).await?.ok_or_else(|| not_found(name))?;
        records::decode(entry)
    }

    pub async fn get(&self, namespace: &str, name: &str) -> Result<Image, Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("image name must not be empty"));
        }
        Ok(self.read(namespace, name).await?.value)
    }

    /// Every image of `namespace` matching any of `filters` (all when none), by name.
    pub async fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Image>, Status> {
        let filters = AnyOf::parse(filters)?;
        let mut images = Vec::new();
        for entry in self.records.list(&records::images_prefix(namespace)).await? {
            let image: Versioned<Image> = records::decode(entry)?;
            if filters.matches(&ImageFields(&image.value)) {
                images.push(image.value);
            }
        }
        Ok(images)
    }

    /// Stores a new image; AlreadyExists when the name is taken. `created_at`/`updated_at` are
    /// now, or `source_date_epoch` when given.
    pub async fn create(
        &self,
        namespace: &str,
        mut image: Image,
        source_date_epoch: Option<prost_types::Timestamp>,
    ) -> Result<Image, Status> {
        image.labels.retain(|_, value| !value.is_empty());
        validate(&image)?;
        let now = timestamp_or_now(source_date_epoch);
        image.created_at = Some(now);
        image.updated_at = Some(now);
        self.neighbours.namespaces.ensure(namespace).await;
        let key = records::image_key(namespace, &image.name);
        let txn = Txn::new().when(Compare::Absent(key.clone())).put(key, image.encode_to_vec());
        match self.records.commit(txn).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Status::already_exists(format!("image {:?}: already exists", image.name)));
            }
            Err(err) => return Err(err.into()),
        }
        self.neighbours.publish(
            namespace,
            "/images/create",
            &ImageCreate { name: image.name.clone(), labels: image.labels.clone() },
        );
        Ok(image)
    }

    /// Creates the image, or replaces the labels and target of the one of that name, as
    /// containerd's client does after a pull.
    pub async fn put(&self, namespace: &str, image: Image) -> Result<Image, Status> {
        for _ in 0..PUT_ATTEMPTS {
            match self.create(namespace, image.clone(), None).await {
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    match self.update(namespace, image.clone(), None, None).await {
                        // Deleted in between: create it again.
                        Err(status) if status.code() == tonic::Code::NotFound => continue,
                        other => return other,
                    }
                }
                other => return other,
            }
        }
        Err(Status::aborted(format!("image {:?}: created and deleted by others meanwhile; retry", image.name)))
    }

    /// containerd's update rules: with a mask, the paths `labels`, `labels.<key>`, `target` and
    /// `annotations` (the target's); without one, labels and target are replaced. The write
    /// compares the revision read, so a concurrent update gets Aborted instead of being lost.
    pub async fn update(
        &self,
        namespace: &str,
        image: Image,
        mask: Option<prost_types::FieldMask>,
        source_date_epoch: Option<prost_types::Timestamp>,
    ) -> Result<Image, Status> {
        if image.name.is_empty() {
            return Err(Status::invalid_argument("image name is required for update"));
        }
        let current = self.read(namespace, &image.name).await?;
        let mut updated = current.value.clone();
        let paths = mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            updated.labels = image.labels.clone();
            updated.target = image.target.clone();
        }
        for path in &paths {
            if let Some(key) = path.strip_prefix("labels.") {
                match image.labels.get(key) {
                    Some(value) => updated.labels.insert(key.to_string(), value.clone()),
                    None => updated.labels.remove(key),
                };
                continue;
            }
            match path.as_str() {
                "labels" => updated.labels = image.labels.clone(),
                // The target is replaced as a unit: digest, size and media type go together.
                "target" => updated.target = image.target.clone(),
                "annotations" => {
                    let annotations = image.target.as_ref().map(|t| t.annotations.clone()).unwrap_or_default();
                    if let Some(target) = updated.target.as_mut() {
                        target.annotations = annotations;
                    }
                }
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "cannot update {path:?} field on image {:?}",
                        image.name
                    )));
                }
            }
        }
        // An empty value removes a label, as containerd's label storage does.
        updated.labels.retain(|_, value| !value.is_empty());
        validate(&updated)?;
        updated.updated_at = Some(timestamp_or_now(source_date_epoch));
        let txn = Txn::new()
            .when(Compare::Revision(current.key.clone(), current.revision))
            .put(current.key.clone(), updated.encode_to_vec());
        match self.records.commit(txn).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Status::aborted(format!(
                    "image {:?}: changed by someone else during this update; read it again and retry",
                    image.name
                )));
            }
            Err(err) => return Err(err.into()),
        }
        self.neighbours.publish(
            namespace,
            "/images/update",
            &ImageUpdate { name: updated.name.clone(), labels: updated.labels.clone() },
        );
        if updated.target != current.value.target {
            self.neighbours.collect_soon(namespace);
        }
        Ok(updated)
    }

    /// Removes the record; with `sync`, returns once the garbage collector has freed what only
    /// this image held.
    pub async fn delete(&self, namespace: &str, name: &str, sync: bool) -> Result<(), Status> {
        if name.is_empty() {
            return Err(Status::invalid_argument("image name must not be empty"));
        }
        let current = self.read(namespace, name).await?;
        let txn = Txn::new().when(Compare::Revision(current.key.clone(), current.revision)).delete(current.key);
        match self.records.commit(txn).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(Status::aborted(format!("image {name:?}: changed during the delete; retry")));
            }
            Err(err) => return Err(err.into()),
        }
        self.neighbours.publish(namespace, "/images/delete", &ImageDelete { name: name.to_string() });
        if sync {
            self.neighbours.collect(namespace).await
        } else {
            self.neighbours.collect_soon(namespace);
            Ok(())
        }
    }
}

/// Image filters see `name`, `target.digest`, `target.mediatype`, `labels.<key>` and
/// `annotations.<key>` (the target's), as containerd's adaptImage.
struct ImageFields<'a>(&'a Image);

impl Adaptor for ImageFields<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        let image = self.0;
        let non_empty = |value: &String| Some(value.clone()).filter(|v| !v.is_empty());
        let target = image.target.as_ref();
        match (fieldpath.first().map(String::as_str)?, fieldpath.len()) {
            ("name", 1) => non_empty(&image.name),
            ("target", 2) => match fieldpath[1].as_str() {
                "digest" => target.and_then(|t| non_empty(&t.digest)),
                "mediatype" => target.and_then(|t| non_empty(&t.media_type)),
                _ => None,
            },
            ("labels", _) => label_field(&image.labels, &fieldpath[1..]),
            ("annotations", _) => target.and_then(|t| label_field(&t.annotations, &fieldpath[1..])),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn store() -> (tempfile::TempDir, ImageStore) {
        let dir = tempfile::tempdir().unwrap();
        let records: Records = Arc::new(berth_store::Embedded::open(&dir.path().join("image.redb")).unwrap());
        (dir, ImageStore::new(records, Neighbours::default()))
    }

    fn target(data: &[u8]) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest::sha256(data),
            size: data.len() as i64,
            annotations: Default::default(),
        }
    }

    fn image(name: &str, labels: &[(&str, &str)]) -> Image {
        Image {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            target: Some(target(name.as_bytes())),
            ..Default::default()
        }
    }

    fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
        Some(prost_types::FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
    }

    #[tokio::test]
    async fn create_get_list_delete() {
        let (_dir, store) = store();
        let created = store.create("default", image("docker.io/library/busybox:latest", &[]), None).await.unwrap();
        assert!(created.created_at.is_some() && created.created_at == created.updated_at);
        let got = store.get("default", "docker.io/library/busybox:latest").await.unwrap();
        assert_eq!(got, created);
        let err = store.create("default", image("docker.io/library/busybox:latest", &[]), None).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::AlreadyExists);
        assert!(err.message().contains("busybox"), "{}", err.message());

        // Namespaces are apart.
        assert_eq!(
            store.get("other", "docker.io/library/busybox:latest").await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        assert!(store.list("other", &[]).await.unwrap().is_empty());
        store.create("default", image("a/b:1", &[]), None).await.unwrap();
        let names: Vec<String> = store.list("default", &[]).await.unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["a/b:1", "docker.io/library/busybox:latest"]);

        store.delete("default", "a/b:1", false).await.unwrap();
        assert_eq!(store.delete("default", "a/b:1", false).await.unwrap_err().code(), tonic::Code::NotFound);
        assert_eq!(store.get("default", "a/b:1").await.unwrap_err().code(), tonic::Code::NotFound);
    }

    #[tokio::test]
    async fn create_validates_like_containerd() {
        let (_dir, store) = store();
        let mut cases: Vec<(Image, &str)> = Vec::new();
        cases.push((image("", &[]), "name must not be empty"));
        let mut no_target = image("x", &[]);
        no_target.target = None;
        cases.push((no_target, "Target"));
        let mut bad_digest = image("x", &[]);
        bad_digest.target.as_mut().unwrap().digest = "sha256:nothex".into();
        cases.push((bad_digest, "Target.Digest"));
        let mut no_size = image("x", &[]);
        no_size.target.as_mut().unwrap().size = 0;
        cases.push((no_size, "Target.Size"));
        let mut no_type = image("x", &[]);
        no_type.target.as_mut().unwrap().media_type.clear();
        cases.push((no_type, "Target.MediaType"));
        let long = "v".repeat(5000);
        cases.push((image("x", &[("k", long.as_str())]), "image.Labels"));
        for (image, want) in cases {
            let err = store.create("default", image, None).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{}", err.message());
            assert!(err.message().contains(want), "{} should mention {want}", err.message());
        }
        assert!(store.list("default", &[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn update_follows_the_mask() {
        let (_dir, store) = store();
        let created = store.create("default", image("img:1", &[("a", "1"), ("b", "2")]), None).await.unwrap();

        // One label set, one removed (empty value), others kept.
        let change = image("img:1", &[("a", "10"), ("b", "")]);
        let updated = store.update("default", change, mask(&["labels.a", "labels.b", "labels.c"]), None).await.unwrap();
        assert_eq!(updated.labels, [("a".to_string(), "10".to_string())].into());
        assert_eq!(updated.created_at, created.created_at);
        assert_eq!(updated.target, created.target);

        // The target changes only when named.
        let mut retarget = image("img:1", &[]);
        retarget.target = Some(target(b"other"));
        let updated = store.update("default", retarget.clone(), mask(&["labels"]), None).await.unwrap();
        assert!(updated.labels.is_empty());
        assert_eq!(updated.target, created.target);
        let updated = store.update("default", retarget.clone(), mask(&["target"]), None).await.unwrap();
        assert_eq!(updated.target, retarget.target);

        // No mask: labels and target replaced.
        let updated = store.update("default", image("img:1", &[("z", "1")]), None, None).await.unwrap();
        assert_eq!(updated.labels.len(), 1);
        assert_eq!(updated.target, image("img:1", &[]).target);

        let err = store.update("default", image("img:1", &[]), mask(&["name"]), None).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("cannot update \"name\""), "{}", err.message());
        let mut no_target = image("img:1", &[]);
        no_target.target = None;
        let err = store.update("default", no_target, mask(&["target"]), None).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            store.update("default", image("", &[]), None, None).await.unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            store.update("default", image("nope", &[]), None, None).await.unwrap_err().code(),
            tonic::Code::NotFound
        );

        let epoch = prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 };
        let updated = store.update("default", image("img:1", &[]), mask(&["labels"]), Some(epoch)).await.unwrap();
        assert_eq!(updated.updated_at, Some(epoch));
    }

    #[tokio::test]
    async fn filters_see_name_target_and_labels() {
        let (_dir, store) = store();
        let a = store.create("default", image("docker.io/library/a:1", &[("tier", "gold")]), None).await.unwrap();
        store.create("default", image("docker.io/library/b:1", &[]), None).await.unwrap();
        let digest = a.target.as_ref().unwrap().digest.clone();
        for (filter, want) in [
            ("name==docker.io/library/a:1".to_string(), vec!["docker.io/library/a:1"]),
            ("name~=b:1$".to_string(), vec!["docker.io/library/b:1"]),
            (format!("target.digest=={digest}"), vec!["docker.io/library/a:1"]),
            (
                "target.mediatype==application/vnd.oci.image.manifest.v1+json".to_string(),
                vec!["docker.io/library/a:1", "docker.io/library/b:1"],
            ),
            ("labels.tier==gold".to_string(), vec!["docker.io/library/a:1"]),
            ("labels.tier".to_string(), vec!["docker.io/library/a:1"]),
            ("labels.tier!=gold".to_string(), vec!["docker.io/library/b:1"]),
            ("unknown==x".to_string(), vec![]),
        ] {
            let names: Vec<String> = store
                .list("default", std::slice::from_ref(&filter))
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.name)
                .collect();
            assert_eq!(names, want, "{filter}");
        }
        // Several filters: any may match.
        let both = ["name==docker.io/library/a:1".to_string(), "name==docker.io/library/b:1".to_string()];
        assert_eq!(store.list("default", &both).await.unwrap().len(), 2);
        let err = store.list("default", &["name==\"unterminated".to_string()]).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
}
