//! What the gateway answers itself: Version, and Introspection (which services are up, where).

use std::collections::HashMap;

use berth_api::containerd::services::introspection::v1::{
    Plugin, PluginsRequest, PluginsResponse, ServerResponse, introspection_server,
};
use berth_api::containerd::services::version::v1::{VersionResponse, version_server};
use berth_api::google::rpc::Status as RpcStatus;
use berth_core::filters::{Adaptor, AnyOf};
use tonic::{Request, Response, Status};

use crate::backends::Backends;
use crate::routes;

/// The plugin type containerd gives its gRPC services; `ctr plugins` shows berth's services
/// under it.
pub const PLUGIN_TYPE: &str = "io.containerd.grpc.v1";

/// The git revision, when the build provides it (`BERTH_REVISION=$(git rev-parse HEAD)`).
const REVISION: &str = match option_env!("BERTH_REVISION") {
    Some(revision) => revision,
    None => "",
};

/// containerd.services.version.v1.Version: berth's version.
#[derive(Clone, Copy, Default)]
pub struct Version;

#[tonic::async_trait]
impl version_server::Version for Version {
    async fn version(&self, _: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: REVISION.to_string(),
        }))
    }
}

/// containerd.services.introspection.v1.Introspection: one plugin per berth service.
pub struct Introspection {
    backends: Backends,
    uuid: String,
}

impl Introspection {
    /// `uuid` identifies this gateway instance (a new one per start).
    pub fn new(backends: Backends, uuid: String) -> Self {
        Introspection { backends, uuid }
    }

    /// Every berth service as a plugin, with `init_err` set when it is not reachable.
    pub fn all_plugins(&self) -> Vec<Plugin> {
        routes::names()
            .map(|name| {
                let (exports, init_err) = match self.backends.get(name) {
                    None => (HashMap::new(), Some(unavailable(name, "it is not running behind this gateway"))),
                    Some(service) => {
                        let addresses: Vec<String> =
                            service.replicas().iter().map(|r| r.address().to_string()).collect();
                        let addresses = addresses.join(",");
                        let init_err = (!service.any_live())
                            .then(|| unavailable(name, &format!("no replica answers at {addresses}")));
                        (HashMap::from([("address".to_string(), addresses)]), init_err)
                    }
                };
                Plugin { r#type: PLUGIN_TYPE.to_string(), id: name.to_string(), exports, init_err, ..Plugin::default() }
            })
            .collect()
    }
}

fn unavailable(name: &str, why: &str) -> RpcStatus {
    RpcStatus {
        code: tonic::Code::Unavailable as i32,
        message: format!("the {name} service is unavailable: {why}"),
        details: Vec::new(),
    }
}

/// Filter fields of a plugin, as containerd's: `type`, `id`.
struct PluginFields<'a>(&'a Plugin);

impl Adaptor for PluginFields<'_> {
    fn field(&self, fieldpath: &[String]) -> Option<String> {
        match fieldpath {
            [field] if field == "type" => Some(self.0.r#type.clone()),
            [field] if field == "id" => Some(self.0.id.clone()),
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl introspection_server::Introspection for Introspection {
    async fn plugins(&self, request: Request<PluginsRequest>) -> Result<Response<PluginsResponse>, Status> {
        let filters = AnyOf::parse(&request.get_ref().filters)?;
        let plugins = self.all_plugins().into_iter().filter(|p| filters.matches(&PluginFields(p))).collect();
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _: Request<()>) -> Result<Response<ServerResponse>, Status> {
        Ok(Response::new(ServerResponse {
            uuid: self.uuid.clone(),
            pid: u64::from(std::process::id()),
            pidns: pid_namespace(),
            deprecations: Vec::new(),
        }))
    }
}

/// The inode of this process' pid namespace, as containerd reports it (0 when unknown).
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino()).unwrap_or(0)
}

/// A random (version 4) UUID in its usual text form.
pub fn random_uuid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use berth_core::connect::Address;

    use super::*;

    #[test]
    fn uuids_look_like_uuids() {
        let uuid = random_uuid();
        assert_eq!(uuid.len(), 36);
        assert_eq!(uuid.matches('-').count(), 4);
        assert_eq!(&uuid[14..15], "4");
        assert_ne!(uuid, random_uuid());
    }

    #[tokio::test]
    async fn plugins_list_every_service_and_filter_by_type_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path().join("content.sock");
        let _listener = tokio::net::UnixListener::bind(&up).unwrap();
        let backends = Backends::new(BTreeMap::from([
            ("content".to_string(), vec![Address::Unix(up.clone())]),
            ("snapshot".to_string(), vec![Address::Unix(dir.path().join("missing.sock"))]),
        ]));
        backends.probe().await;
        let introspection = Introspection::new(backends, random_uuid());

        let plugins = introspection.all_plugins();
        assert_eq!(plugins.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), routes::names().collect::<Vec<_>>());
        let content = &plugins[0];
        assert_eq!(content.r#type, PLUGIN_TYPE);
        assert_eq!(content.exports["address"], format!("unix://{}", up.display()));
        assert!(content.init_err.is_none());
        let snapshot = plugins.iter().find(|p| p.id == "snapshot").unwrap();
        let err = snapshot.init_err.as_ref().unwrap();
        assert_eq!(err.code, tonic::Code::Unavailable as i32);
        assert!(err.message.starts_with("the snapshot service is unavailable: no replica answers at unix://"));
        let image = plugins.iter().find(|p| p.id == "image").unwrap();
        assert!(image.init_err.as_ref().unwrap().message.contains("not running behind this gateway"));

        let request = |filters: &[&str]| {
            Request::new(PluginsRequest { filters: filters.iter().map(|f| f.to_string()).collect() })
        };
        let only = introspection_server::Introspection::plugins(&introspection, request(&["id==content"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(only.plugins.len(), 1);
        assert_eq!(only.plugins[0].id, "content");
        let typed =
            introspection_server::Introspection::plugins(&introspection, request(&["type==io.containerd.grpc.v1"]))
                .await
                .unwrap()
                .into_inner();
        assert_eq!(typed.plugins.len(), 5);
        let none = introspection_server::Introspection::plugins(
            &introspection,
            request(&["type==io.containerd.snapshotter.v1"]),
        )
        .await
        .unwrap()
        .into_inner();
        assert!(none.plugins.is_empty());
        let bad = introspection_server::Introspection::plugins(&introspection, request(&["id=="])).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    }
}
