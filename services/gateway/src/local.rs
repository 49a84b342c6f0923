//! The calls the gateway answers itself: Version and Introspection.

use std::collections::HashMap;

use berth_api::containerd::services::introspection::v1 as introspection;
use berth_api::containerd::services::version::v1 as version;
use berth_api::google::rpc::Status as RpcStatus;
use berth_core::filters::{Adaptor, AnyOf};
use tonic::{Request, Response, Status};

use crate::backends::Backends;
use crate::routes::SERVICES;

/// Answers Version with the gateway's build.
pub struct VersionService;

#[tonic::async_trait]
impl version::version_server::Version for VersionService {
    async fn version(&self, _: Request<()>) -> Result<Response<version::VersionResponse>, Status> {
        Ok(Response::new(version::VersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: option_env!("BERTH_GIT_REVISION").unwrap_or_default().to_string(),
        }))
    }
}

/// Lists the services behind the gateway as containerd lists its plugins.
pub struct IntrospectionService {
    backends: Backends,
    uuid: String,
}

impl IntrospectionService {
    pub fn new(backends: Backends) -> Self {
        let uuid = format!("{:032x}", rand::random::<u128>());
        IntrospectionService { backends, uuid }
    }

    fn plugin(&self, name: &str) -> introspection::Plugin {
        let service = self.backends.get(name);
        let addresses: Vec<String> =
            service.map(|s| s.replicas.iter().map(|r| r.address.to_string()).collect()).unwrap_or_default();
        let init_err = match service {
            None => Some(RpcStatus {
                code: tonic::Code::Unavailable as i32,
                message: format!("the {name} service is not running behind this gateway"),
                details: vec![],
            }),
            Some(service) if !service.any_live() => Some(RpcStatus {
                code: tonic::Code::Unavailable as i32,
                message: format!("the {name} service is down at {}", addresses.join(", ")),
                details: vec![],
            }),
            Some(_) => None,
        };
        let mut exports = HashMap::new();
        if !addresses.is_empty() {
            exports.insert("address".to_string(), addresses.join(","));
            exports.insert("replicas".to_string(), addresses.len().to_string());
        }
        introspection::Plugin {
            r#type: "io.containerd.grpc.v1".to_string(),
            id: name.to_string(),
            exports,
            init_err,
            ..Default::default()
        }
    }
}

struct PluginFields<'a>(&'a introspection::Plugin);

impl Adaptor for PluginFields<'_> {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first()?.as_str() {
            "type" => Some(self.0.r#type.clone()),
            "id" => Some(self.0.id.clone()),
            _ => None,
        }
    }
}

#[tonic::async_trait]
impl introspection::introspection_server::Introspection for IntrospectionService {
    async fn plugins(
        &self,
        request: Request<introspection::PluginsRequest>,
    ) -> Result<Response<introspection::PluginsResponse>, Status> {
        let filters = AnyOf::parse(&request.get_ref().filters)?;
        let plugins = SERVICES
            .iter()
            .map(|(name, _)| self.plugin(name))
            .filter(|plugin| filters.matches(&PluginFields(plugin)))
            .collect();
        Ok(Response::new(introspection::PluginsResponse { plugins }))
    }

    async fn server(&self, _: Request<()>) -> Result<Response<introspection::ServerResponse>, Status> {
        Ok(Response::new(introspection::ServerResponse {
            uuid: self.uuid.clone(),
            pid: u64::from(std::process::id()),
            ..Default::default()
        }))
    }
}
