//! Where the service keeps each task on disk, and the records it writes there.
//!
//! Tasks are machine-local state, so they live in files under `--root`, not in the store:
//!
//! ```text
//! <root>/tasks/<namespace>/<id>/     the bundle: config.json, rootfs/ (mounted by the shim),
//!                                    task.json (this service's record), exit.json (the shim's),
//!                                    shim.pid, shim.log, exits-published/ (markers),
//!                                    checkpoint/ (a CRIU image restored from),
//!                                    checkpoint-<n>/work/dump.log (CRIU's log of a failed dump)
//! <root>/tasks/<namespace>/<id>/execs/<exec>.json   one record per exec
//! <root>/s/<hash>.sock               shim sockets (directory 0700, sockets 0600): short paths
//! <root>/s/events.sock               where shims publish events (TTRPC_ADDRESS)
//! <root>/runc/<namespace>/           the OCI runtime's state (--root)
//! ```

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The stdio of a process as the client gave them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// What the service remembers of a task (task.json): enough to find its shim again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub namespace: String,
    pub id: String,
    pub socket: PathBuf,
    /// The shim binary: berth-shim, or a containerd shim (`runtime_path` of the create).
    #[serde(default)]
    pub shim: PathBuf,
    /// The OCI runtime binary (resolved path) and its state directory.
    pub runtime: PathBuf,
    pub runtime_root: PathBuf,
    pub stdio: Stdio,
}

/// What the service remembers of an exec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRecord {
    pub exec_id: String,
    pub stdio: Stdio,
}

/// Paths under the service's root.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

const TASK_FILE: &str = "task.json";
const EXECS: &str = "execs";
const PUBLISHED: &str = "exits-published";
/// The name the init process's exit marker takes (exec ids are identifiers, never this).
const INIT: &str = "_init";

impl Layout {
    pub fn new(root: PathBuf) -> Layout {
        Layout { root }
    }

    pub fn bundle(&self, namespace: &str, id: &str) -> PathBuf {
        self.root.join("tasks").join(namespace).join(id)
    }

    /// The shim socket of a task: short (a hash) so that it fits a socket address.
    pub fn socket(&self, namespace: &str, id: &str) -> PathBuf {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("{namespace}/{id}").as_bytes());
        self.root.join("s").join(format!("{}.sock", hex::encode(&digest[..12])))
    }

    /// Where shims publish events (their `TTRPC_ADDRESS`).
    pub fn events_socket(&self) -> PathBuf {
        self.root.join("s").join("events.sock")
    }

    pub fn runtime_root(&self, namespace: &str) -> PathBuf {
        self.root.join("runc").join(namespace)
    }

    /// Makes the directories the service needs, private to root.
    pub fn prepare(&self) -> std::io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o711).create(self.root.join("tasks"))?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(self.root.join("s"))?;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(self.root.join("runc"))?;
        // A directory made by an older version (or by hand) keeps its mode: set it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.root.join("s"), std::fs::Permissions::from_mode(0o700))
    }

    /// Every task record on disk, with its bundle; unreadable ones are reported as Err.
    pub fn tasks(&self) -> Vec<Result<(PathBuf, TaskRecord), PathBuf>> {
        let mut found = Vec::new();
        for namespace in read_dirs(&self.root.join("tasks")) {
            for bundle in read_dirs(&namespace) {
                match std::fs::read(bundle.join(TASK_FILE)).ok().and_then(|data| serde_json::from_slice(&data).ok()) {
                    Some(record) => found.push(Ok((bundle, record))),
                    None => found.push(Err(bundle)),
                }
            }
        }
        found
    }

    pub fn execs(&self, bundle: &Path) -> Vec<ExecRecord> {
        let Ok(entries) = std::fs::read_dir(bundle.join(EXECS)) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|entry| std::fs::read(entry.path()).ok())
            .filter_map(|data| serde_json::from_slice(&data).ok())
            .collect()
    }
}

fn read_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    dirs
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut temp = path.as_os_str().to_owned();
    temp.push(".tmp");
    std::fs::write(&temp, data)?;
    std::fs::rename(&temp, path)
}

pub fn save_task(bundle: &Path, record: &TaskRecord) -> std::io::Result<()> {
    write_atomic(&bundle.join(TASK_FILE), &serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?)
}

pub fn save_exec(bundle: &Path, record: &ExecRecord) -> std::io::Result<()> {
    std::fs::create_dir_all(bundle.join(EXECS))?;
    let path = bundle.join(EXECS).join(format!("{}.json", record.exec_id));
    write_atomic(&path, &serde_json::to_vec(record).map_err(std::io::Error::other)?)
}

pub fn remove_exec(bundle: &Path, exec_id: &str) {
    let _ = std::fs::remove_file(bundle.join(EXECS).join(format!("{exec_id}.json")));
    let _ = std::fs::remove_file(bundle.join(PUBLISHED).join(exec_id));
}

/// Marks the exit of `exec_id` (empty: init) as published; false when it already was, or
/// when the task's bundle is gone (deleted: its exit was published then).
pub fn mark_exit_published(bundle: &Path, exec_id: &str) -> bool {
    let dir = bundle.join(PUBLISHED);
    // Not create_dir_all: a watcher finishing after the delete must not bring the bundle back.
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(_) => return false,
    }
    let name = if exec_id.is_empty() { INIT } else { exec_id };
    std::fs::OpenOptions::new().write(true).create_new(true).open(dir.join(name)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_sockets_stay_short() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path().to_path_buf());
        layout.prepare().unwrap();
        let long = "a".repeat(76);
        let socket = layout.socket(&long, &long);
        assert!(socket.as_os_str().len() < dir.path().as_os_str().len() + 40, "{}", socket.display());
        assert_ne!(layout.socket("ns", "a"), layout.socket("ns", "b"));

        let bundle = layout.bundle("ns", "web");
        std::fs::create_dir_all(&bundle).unwrap();
        let record = TaskRecord {
            namespace: "ns".into(),
            id: "web".into(),
            socket,
            shim: "/usr/bin/berth-shim".into(),
            runtime: "/usr/sbin/runc".into(),
            runtime_root: layout.runtime_root("ns"),
            stdio: Stdio { stdout: "/tmp/out".into(), ..Default::default() },
        };
        save_task(&bundle, &record).unwrap();
        std::fs::create_dir_all(layout.bundle("ns", "broken")).unwrap();
        let found = layout.tasks();
        assert_eq!(found.len(), 2);
        assert!(found.iter().any(|f| f.as_ref().is_ok_and(|(b, r)| *b == bundle && *r == record)));
        assert!(found.iter().any(|f| f.as_ref().is_err_and(|b| b.ends_with("broken"))));

        save_exec(&bundle, &ExecRecord { exec_id: "e1".into(), stdio: Stdio::default() }).unwrap();
        assert_eq!(layout.execs(&bundle).len(), 1);
        assert!(mark_exit_published(&bundle, "e1"));
        assert!(!mark_exit_published(&bundle, "e1"));
        assert!(mark_exit_published(&bundle, ""));
        remove_exec(&bundle, "e1");
        assert!(layout.execs(&bundle).is_empty());
        assert!(mark_exit_published(&bundle, "e1"), "a new exec of the same id starts unpublished");
        std::fs::remove_dir_all(&bundle).unwrap();
        assert!(!mark_exit_published(&bundle, "e2"), "a deleted task publishes nothing more");
        assert!(!bundle.exists());
    }
}
