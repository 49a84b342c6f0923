//! Which berth service serves which containerd gRPC service: the gateway's whole routing table.

/// Every berth service behind the gateway with the containerd gRPC services it serves.
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

/// gRPC services berth adds beside containerd's API are named `berth.<service>.*` and routed by
/// that second component: `berth.image.v1.Transfer` goes to the image service.
const BERTH_PREFIX: &str = "berth.";

/// The gRPC service of a request path `/package.Service/Method`.
pub fn grpc_service(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

/// The berth service for a request path `/package.Service/Method`, if one serves it.
pub fn service_for_path(path: &str) -> Option<&'static str> {
    let grpc = grpc_service(path)?;
    if let Some(rest) = grpc.strip_prefix(BERTH_PREFIX) {
        let name = rest.split('.').next()?;
        return names().find(|n| *n == name);
    }
    SERVICES.iter().find(|(_, served)| served.contains(&grpc)).map(|(name, _)| *name)
}

/// The names of every berth service the gateway knows, in table order.
pub fn names() -> impl Iterator<Item = &'static str> {
    SERVICES.iter().map(|(name, _)| *name)
}

/// Whether `name` is a berth service the gateway knows.
pub fn is_known(name: &str) -> bool {
    names().any(|n| n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_every_containerd_service_in_the_table() {
        for (name, served) in SERVICES {
            for grpc in *served {
                assert_eq!(service_for_path(&format!("/{grpc}/AnyMethod")), Some(*name), "{grpc}");
            }
        }
    }

    #[test]
    fn routes_containerd_paths_to_services() {
        assert_eq!(service_for_path("/containerd.services.content.v1.Content/Write"), Some("content"));
        assert_eq!(service_for_path("/containerd.services.snapshots.v1.Snapshots/Prepare"), Some("snapshot"));
        assert_eq!(service_for_path("/containerd.services.diff.v1.Diff/Apply"), Some("snapshot"));
        assert_eq!(service_for_path("/containerd.services.images.v1.Images/List"), Some("image"));
        assert_eq!(service_for_path("/containerd.services.namespaces.v1.Namespaces/List"), Some("metadata"));
        assert_eq!(service_for_path("/containerd.services.events.v1.Events/Subscribe"), Some("metadata"));
        assert_eq!(service_for_path("/containerd.services.leases.v1.Leases/Create"), Some("metadata"));
        assert_eq!(service_for_path("/containerd.services.tasks.v1.Tasks/Start"), Some("execution"));
    }

    #[test]
    fn routes_berth_services_by_their_second_component() {
        assert_eq!(service_for_path("/berth.image.v1.Transfer/Pull"), Some("image"));
        assert_eq!(service_for_path("/berth.metadata.v1.Gc/Collect"), Some("metadata"));
        assert_eq!(service_for_path("/berth.nothing.v1.X/Y"), None);
    }

    #[test]
    fn unknown_or_malformed_paths_have_no_service() {
        assert_eq!(service_for_path("/containerd.services.sandbox.v1.Store/List"), None);
        assert_eq!(service_for_path("/containerd.services.content.v1.Content"), None);
        assert_eq!(service_for_path("/containerd.services.content.v1.Content/"), None);
        assert_eq!(service_for_path("/containerd.services.content.v1.Content/Write/x"), None);
        assert_eq!(service_for_path("containerd.services.content.v1.Content/Write"), None);
        assert_eq!(service_for_path("/"), None);
        assert_eq!(service_for_path(""), None);
    }

    #[test]
    fn knows_service_names() {
        assert!(is_known("content"));
        assert!(is_known("execution"));
        assert!(!is_known("gateway"));
        assert_eq!(names().count(), 5);
    }
}
