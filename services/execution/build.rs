//! Compiles containerd's runtime v2 shim API, the ttrpc events API shims publish with, and
//! cgroup v1 metrics (proto/, written for berth) into message types.
//! The shim service itself runs over ttrpc (src/ttrpc.rs), so no gRPC code is generated;
//! shared containerd types come from berth-api.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let own = manifest.join("proto");
    let shared = manifest.join("../../proto");
    let shim = own.join("containerd/runtime/task/v2/shim.proto");
    let cgroups = own.join("io/containerd/cgroups/v1/metrics.proto");
    let events = own.join("containerd/services/events/ttrpc/v1/events.proto");
    println!("cargo:rerun-if-changed={}", own.display());
    let mut config = tonic_prost_build::Config::new();
    // `prost::Name` gives each message its full name, which typed `Any` values need.
    config.enable_type_names();
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .extern_path(".containerd.types", "::berth_api::containerd::types")
        .extern_path(".containerd.v1.types", "::berth_api::containerd::v1::types")
        .extern_path(".containerd.services.events.v1", "::berth_api::containerd::services::events::v1")
        .compile_with_config(config, &[shim, cgroups, events], &[own, shared])?;
    Ok(())
}
