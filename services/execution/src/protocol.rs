//! containerd's runtime v2 shim API (`containerd.task.v2.Task`, spoken over [ttrpc](crate::ttrpc)):
//! the message types (with the cgroup statistics Stats answers), and the record a shim leaves
//! on disk when its task's init process exits.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Messages of package `containerd.task.v2` (built from proto/ by build.rs).
#[allow(clippy::all, missing_docs)]
pub mod v2 {
    include!(concat!(env!("OUT_DIR"), "/containerd.task.v2.rs"));
}

/// cgroup v1 statistics (`io.containerd.cgroups.v1.Metrics`), what Stats and Metrics carry.
#[allow(clippy::all, missing_docs)]
pub mod cgroups_v1 {
    include!(concat!(env!("OUT_DIR"), "/io.containerd.cgroups.v1.rs"));
}

/// The ttrpc events API shims publish with (`containerd.services.events.ttrpc.v1`).
#[allow(clippy::all, missing_docs)]
pub mod events {
    include!(concat!(env!("OUT_DIR"), "/containerd.services.events.ttrpc.v1.rs"));
}

/// The ttrpc service shims publish events to, at the address in their `TTRPC_ADDRESS`.
pub const EVENTS_SERVICE: &str = "containerd.services.events.ttrpc.v1.Events";
/// The environment variable that tells a shim where to publish events (as containerd does).
pub const EVENTS_ADDRESS_ENV: &str = "TTRPC_ADDRESS";

/// The ttrpc service name shims serve.
pub const TASK_SERVICE: &str = "containerd.task.v2.Task";

/// File in the bundle where a shim records how the init process ended, so the exit survives
/// the shim (and berth-execution reports it even when the shim is gone).
pub const EXIT_FILE: &str = "exit.json";

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub pid: u32,
    /// The exit code, or 128 + the signal that killed the process.
    pub status: u32,
    /// When, as seconds and nanoseconds since the epoch.
    pub seconds: i64,
    pub nanos: i32,
}

impl Exit {
    /// `pid` ended with `status` now.
    pub fn now(pid: u32, status: u32) -> Exit {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Exit { pid, status, seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
    }

    pub fn timestamp(&self) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds: self.seconds, nanos: self.nanos }
    }

    pub fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::new(self.seconds.max(0) as u64, self.nanos.max(0) as u32)
    }

    /// Writes the record into `bundle` (atomically: temp file, then rename).
    pub fn save(&self, bundle: &Path) -> std::io::Result<()> {
        let temp = bundle.join(format!(".{EXIT_FILE}.tmp"));
        std::fs::write(&temp, serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        std::fs::rename(temp, bundle.join(EXIT_FILE))
    }

    /// The record in `bundle`, if the init process's exit was recorded there.
    pub fn load(bundle: &Path) -> Option<Exit> {
        serde_json::from_slice(&std::fs::read(bundle.join(EXIT_FILE)).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_records_round_trip_through_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Exit::load(dir.path()), None);
        let exit = Exit::now(42, 137);
        exit.save(dir.path()).unwrap();
        assert_eq!(Exit::load(dir.path()), Some(exit));
        assert_eq!(exit.timestamp().seconds, exit.seconds);
    }
}
