//! Which OCI runtime a container runs on: its `runtime.name`, or the binary named in its
//! runc options (`ctr run --runc-binary crun`), with runc as the default.

use std::path::PathBuf;

use berth_api::containerd::runc::v1::Options as RuncOptions;
use prost::Message;

use crate::shim::runtime::find_binary;

/// Runtime names taken to mean runc: containerd's shim names and the bare name.
const RUNC_NAMES: &[&str] =
    &["", "runc", "io.containerd.runc.v2", "io.containerd.runc.v1", "io.containerd.runtime.v1.linux"];
/// Runtime names taken to mean crun.
const CRUN_NAMES: &[&str] = &["crun", "io.containerd.crun.v1", "io.containerd.crun.v2"];

/// The runtime options understood here: containerd.runc.v1.Options (others are refused).
pub fn options(any: Option<&prost_types::Any>) -> Result<RuncOptions, tonic::Status> {
    match any {
        Some(any) if any.type_url.ends_with("containerd.runc.v1.Options") => RuncOptions::decode(any.value.as_slice())
            .map_err(|e| tonic::Status::invalid_argument(format!("runtime options: {e}"))),
        Some(any) if !any.type_url.is_empty() => Err(tonic::Status::invalid_argument(format!(
            "runtime options of type {} are not understood (containerd.runc.v1.Options are)",
            any.type_url
        ))),
        _ => Ok(RuncOptions::default()),
    }
}

/// The binary for runtime `name` with `options`, resolved to a path; FailedPrecondition naming
/// the binary when it is not installed.
pub fn binary(name: &str, options: &RuncOptions) -> Result<PathBuf, tonic::Status> {
    let wanted = if !options.binary_name.is_empty() {
        options.binary_name.as_str()
    } else if RUNC_NAMES.contains(&name) {
        "runc"
    } else if CRUN_NAMES.contains(&name) {
        "crun"
    } else {
        return Err(tonic::Status::failed_precondition(format!(
            "runtime {name:?} is not supported: use runc (io.containerd.runc.v2) or crun"
        )));
    };
    find_binary(wanted).ok_or_else(|| {
        tonic::Status::failed_precondition(format!(
            "runtime binary {wanted} not found (looked in PATH, /usr/local/sbin, /usr/sbin, /sbin): install {wanted} or choose another runtime"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_options_choose_the_binary() {
        if find_binary("runc").is_some() {
            assert!(binary("io.containerd.runc.v2", &RuncOptions::default()).unwrap().ends_with("runc"));
        }
        let err = binary("io.containerd.kata.v2", &RuncOptions::default()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        let missing = RuncOptions { binary_name: "no-such-runtime".into(), ..Default::default() };
        let err = binary("io.containerd.runc.v2", &missing).unwrap_err();
        assert!(err.message().contains("runtime binary no-such-runtime not found"), "{}", err.message());

        let any = berth_peers::events::any_of(&RuncOptions { binary_name: "crun".into(), ..Default::default() });
        assert_eq!(options(Some(&any)).unwrap().binary_name, "crun");
        let other = prost_types::Any { type_url: "x.y.Z".into(), value: vec![] };
        assert_eq!(options(Some(&other)).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
