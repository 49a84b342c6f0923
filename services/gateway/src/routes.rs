//! Which berth service serves which containerd gRPC service.

/// Every berth service behind the gateway with the gRPC services it serves.
pub const SERVICES: &[(&str, &[&str])] = &[
    ("content", &["containerd.services.content.v1.Content"]),
    ("snapshot", &["containerd.services.snapshots.v1.Snapshots", "containerd.services.diff.v1.Diff"]),
    ("image", &["containerd.services.images.v1.Images"]),
    (
        "metadata",
        &[
            "containerd.services.namespaces.v1.Namespaces",
            "containerd.services.containers.v1.Containers",
            "containerd.services.leases.v1.Leases",
            "containerd.services.events.v1.Events",
        ],
    ),
    ("execution", &["containerd.services.tasks.v1.Tasks"]),
];

/// Prefix of gRPC services that berth adds beside containerd's API, routed by their second
/// component: `berth.image.v1.Pull` goes to the image service.
const BERTH_PREFIX: &str = "berth.";

/// The berth service for a request path `/package.Service/Method`, if any serves it.
pub fn service_for_path(path: &str) -> Option<&'static str> {
    let grpc_service = path.strip_prefix('/')?.split('/').next()?;
    if let Some(rest) = grpc_service.strip_prefix(BERTH_PREFIX) {
        let name = rest.split('.').next()?;
        return SERVICES.iter().map(|(n, _)| *n).find(|n| *n == name);
    }
    SERVICES.iter().find(|(_, grpc)| grpc.contains(&grpc_service)).map(|(name, _)| *name)
}

/// Whether `name` is a berth service the gateway knows.
pub fn is_known(name: &str) -> bool {
    SERVICES.iter().any(|(n, _)| *n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_containerd_paths_to_services() {
        assert_eq!(service_for_path("/containerd.services.content.v1.Content/Write"), Some("content"));
        assert_eq!(service_for_path("/containerd.services.diff.v1.Diff/Apply"), Some("snapshot"));
        assert_eq!(service_for_path("/containerd.services.leases.v1.Leases/Create"), Some("metadata"));
        assert_eq!(service_for_path("/containerd.services.tasks.v1.Tasks/Start"), Some("execution"));
        assert_eq!(service_for_path("/berth.image.v1.Pull/Pull"), Some("image"));
        assert_eq!(service_for_path("/berth.nothing.v1.X/Y"), None);
        assert_eq!(service_for_path("/containerd.services.sandbox.v1.Store/List"), None);
        assert_eq!(service_for_path("garbage"), None);
    }
}
