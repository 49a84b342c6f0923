//! Wording of failed calls: one line that says what went wrong and what to try next.

use std::error::Error as _;

use tonic::{Code, Status};

/// What a call was about, so a bare NotFound can name the blob or ingest it missed.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// The call concerns the server as a whole (version, listing).
    Server,
    /// A blob, by digest.
    Content(&'a str),
    /// An ingest, by ref.
    Ingest(&'a str),
    /// A namespace, by name (the call itself may run in another namespace).
    Namespace(&'a str),
    /// A container record, by ID.
    Container(&'a str),
    /// A lease, by ID.
    Lease(&'a str),
    /// A snapshot, by key, in a snapshotter.
    Snapshot { key: &'a str, snapshotter: &'a str },
    /// A snapshotter as a whole (listing its snapshots).
    Snapshotter(&'a str),
}

/// A failed gRPC call after explanation; keeps the code so callers (and tests) can branch on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub code: Code,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CallError {}

impl CallError {
    /// Explains `status` for a user who called berth at `address` in `namespace`.
    pub fn explain(status: &Status, address: &str, namespace: &str, subject: Subject<'_>) -> CallError {
        CallError { code: status.code(), message: explain(status, address, namespace, subject) }
    }
}

fn explain(status: &Status, address: &str, namespace: &str, subject: Subject<'_>) -> String {
    if let Some(reason) = connect_failure(status) {
        let why = match reason.kind() {
            std::io::ErrorKind::PermissionDenied => {
                return format!(
                    "cannot reach berth at {address}: permission denied (run as root, or as a user allowed to open the socket)"
                );
            }
            std::io::ErrorKind::NotFound => "no such socket".to_string(),
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            _ => reason.to_string(),
        };
        return format!("cannot reach berth at {address} ({why}): is berthd running? (start it with `berthd`)");
    }
    let message = status.message();
    if let Subject::Snapshot { snapshotter, .. } | Subject::Snapshotter(snapshotter) = subject
        && message.contains("snapshotter not loaded")
    {
        // containerd says NotFound, berth InvalidArgument; either way the flag is the fix.
        return format!(
            "{message} (pick another with --snapshotter, e.g. overlayfs or native; asked for {snapshotter})"
        );
    }
    match (status.code(), subject) {
        (Code::NotFound, Subject::Content(digest)) => format!(
            "content {digest} not found in namespace {namespace} (list blobs with `berth -n {namespace} content ls`)"
        ),
        (Code::NotFound, Subject::Ingest(reference)) => format!(
            "no ingest {reference:?} in namespace {namespace} (list ingests with `berth -n {namespace} content active`)"
        ),
        (Code::AlreadyExists, Subject::Content(digest)) => {
            format!("content {digest} already exists in namespace {namespace}")
        }
        (Code::NotFound, Subject::Namespace(name)) => {
            format!("namespace {name} not found (list namespaces with `berth namespaces ls`)")
        }
        (Code::NotFound, Subject::Container(id)) => format!(
            "container {id} not found in namespace {namespace} (list containers with `berth -n {namespace} containers ls`)"
        ),
        (Code::NotFound, Subject::Lease(id)) => {
            format!("lease {id} not found in namespace {namespace} (list leases with `berth -n {namespace} leases ls`)")
        }
        (Code::NotFound, Subject::Snapshot { key, snapshotter }) => format!(
            "{} in namespace {namespace} (list snapshots with `{}`)",
            naming(message, "snapshot", key),
            snapshots_command(namespace, snapshotter, "ls")
        ),
        (Code::AlreadyExists, Subject::Snapshot { key, snapshotter }) => format!(
            "{} in namespace {namespace} (pick another key, or remove it first with `{}`)",
            naming(message, "snapshot", key),
            snapshots_command(namespace, snapshotter, &format!("rm {key}"))
        ),
        (Code::AlreadyExists, Subject::Namespace(name)) => format!(
            "namespace {name} already exists (change its labels with `berth namespaces label {name} KEY=VALUE`)"
        ),
        (Code::AlreadyExists, Subject::Container(id)) => format!(
            "container {id} already exists in namespace {namespace} (pick another ID, or remove it first with \
             `berth -n {namespace} containers rm {id}`)"
        ),
        (Code::AlreadyExists, Subject::Lease(id)) => format!(
            "lease {id} already exists in namespace {namespace} (pick another --id, or leave --id out for a random one)"
        ),
        (Code::FailedPrecondition, Subject::Namespace(name)) => {
            // The server's message usually names the namespace already.
            let what =
                if message.contains(name) { message.to_string() } else { format!("namespace {name}: {message}") };
            format!(
                "refused: {what} (remove those first; see `berth -n {name} containers ls`, \
                 `berth -n {name} leases ls` and `berth -n {name} content ls`)"
            )
        }
        (Code::Aborted, _) => format!("conflicting change: {message} (another client changed it at the same time)"),
        (Code::Unavailable, Subject::Ingest(reference)) => format!(
            "ingest {reference:?} is busy: another writer holds it ({message}); wait for it to finish or use another ref"
        ),
        (Code::OutOfRange, Subject::Ingest(reference)) => format!(
            "ingest {reference:?} changed while writing ({message}); another writer may be using it, retry the ingest"
        ),
        (Code::Unavailable, _) => {
            format!("berth at {address} is unavailable: {message} (is berthd running? try `berth version`)")
        }
        (Code::FailedPrecondition, _) => format!("refused: {message}"),
        (Code::InvalidArgument, _) => format!("invalid request: {message}"),
        (Code::Unimplemented, _) => format!(
            "the server at {address} does not serve this call ({message}); is the service running behind the gateway? \
             check `berth version`"
        ),
        (Code::DeadlineExceeded, _) => {
            format!("berth at {address} did not answer in time: {message} (raise --timeout)")
        }
        (Code::PermissionDenied | Code::Unauthenticated, _) => format!("permission denied by berth: {message}"),
        (code, _) => format!("{}: {message}", code_name(code)),
    }
}

/// `message` as is when it names `name`, else prefixed with `what name: `.
fn naming(message: &str, what: &str, name: &str) -> String {
    if message.contains(name) { message.to_string() } else { format!("{what} {name}: {message}") }
}

/// The `berth snapshots` command line that runs `rest` in the same namespace and snapshotter.
fn snapshots_command(namespace: &str, snapshotter: &str, rest: &str) -> String {
    let flag = if snapshotter == crate::commands::snapshots::DEFAULT_SNAPSHOTTER {
        String::new()
    } else {
        format!(" --snapshotter {snapshotter}")
    };
    format!("berth -n {namespace} snapshots{flag} {rest}")
}

/// The I/O error behind a failed connection attempt, if that is what `status` reports.
/// tonic reports dial failures as Unavailable with the transport error as the source.
fn connect_failure(status: &Status) -> Option<&std::io::Error> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let mut source = status.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = err.source();
    }
    None
}

fn code_name(code: Code) -> String {
    // Code's Display is a sentence ("Some requested entity was not found"); the snake form is
    // what people search for.
    format!("{code:?}").chars().fold(String::new(), |mut name, c| {
        if c.is_uppercase() && !name.is_empty() {
            name.push(' ');
        }
        name.push(c.to_ascii_lowercase());
        name
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn explained(status: Status, subject: Subject<'_>) -> String {
        CallError::explain(&status, "/run/berth/berth.sock", "ns1", subject).message
    }

    #[test]
    fn not_found_names_the_blob_and_namespace() {
        let text = explained(Status::not_found("blob not found"), Subject::Content(DIGEST));
        assert!(text.starts_with(&format!("content {DIGEST} not found in namespace ns1")), "{text}");
    }

    #[test]
    fn connect_failure_says_start_berthd() {
        let mut status = Status::unavailable("transport error");
        status.set_source(std::sync::Arc::new(std::io::Error::from(std::io::ErrorKind::NotFound)));
        let text = explained(status, Subject::Server);
        assert_eq!(
            text,
            "cannot reach berth at /run/berth/berth.sock (no such socket): is berthd running? (start it with `berthd`)"
        );
        assert!(text.contains("`berthd`"), "{text}");
    }

    #[test]
    fn unavailable_from_a_live_server_is_not_a_connect_failure() {
        let text = explained(Status::unavailable("ref r locked"), Subject::Ingest("r"));
        assert!(text.starts_with("ingest \"r\" is busy"), "{text}");
    }

    #[test]
    fn records_are_named_with_their_namespace_and_the_command_to_list_them() {
        let text = explained(Status::not_found("container web: not found"), Subject::Container("web"));
        assert_eq!(
            text,
            "container web not found in namespace ns1 (list containers with `berth -n ns1 containers ls`)"
        );
        let text = explained(Status::not_found("lease l: not found"), Subject::Lease("l"));
        assert!(text.starts_with("lease l not found in namespace ns1") && text.contains("leases ls"), "{text}");
        let text = explained(Status::not_found("namespace x: not found"), Subject::Namespace("x"));
        assert_eq!(text, "namespace x not found (list namespaces with `berth namespaces ls`)");
        let text = explained(Status::already_exists("container web: already exists"), Subject::Container("web"));
        assert!(text.contains("already exists in namespace ns1") && text.contains("containers rm web"), "{text}");
        let text = explained(Status::already_exists("lease l"), Subject::Lease("l"));
        assert!(text.contains("--id"), "{text}");
    }

    #[test]
    fn a_busy_namespace_says_what_to_remove() {
        let status = Status::failed_precondition("namespace busy must be empty, but it still has 1 containers");
        let text = explained(status, Subject::Namespace("busy"));
        assert!(
            text.starts_with("refused: namespace busy must be empty, but it still has 1 containers (remove"),
            "{text}"
        );
        assert!(text.contains("berth -n busy containers ls"), "{text}");
        let text = explained(Status::failed_precondition("not empty"), Subject::Namespace("busy"));
        assert!(text.starts_with("refused: namespace busy: not empty (remove"), "{text}");
    }

    #[test]
    fn snapshots_are_named_with_their_snapshotter_and_the_command_to_list_them() {
        let subject = Subject::Snapshot { key: "k", snapshotter: "native" };
        let text = explained(Status::not_found("snapshot \"k\" does not exist"), subject);
        assert_eq!(
            text,
            "snapshot \"k\" does not exist in namespace ns1 (list snapshots with `berth -n ns1 snapshots --snapshotter native ls`)"
        );
        let subject = Subject::Snapshot { key: "k", snapshotter: "overlayfs" };
        let text = explained(Status::not_found("parent snapshot \"p\" does not exist"), subject);
        assert!(text.starts_with("snapshot k: parent snapshot \"p\" does not exist in namespace ns1"), "{text}");
        assert!(text.ends_with("`berth -n ns1 snapshots ls`)"), "{text}");
        let text = explained(Status::already_exists("snapshot \"k\" already exists"), subject);
        assert!(text.ends_with("remove it first with `berth -n ns1 snapshots rm k`)"), "{text}");
        for status in
            [Status::invalid_argument("snapshotter not loaded: zfs"), Status::not_found("snapshotter not loaded: zfs")]
        {
            let text = explained(status, Subject::Snapshotter("zfs"));
            assert!(text.starts_with("snapshotter not loaded: zfs (pick another with --snapshotter"), "{text}");
        }
    }

    #[test]
    fn other_codes_keep_the_server_message() {
        let text = explained(Status::data_loss("disk on fire"), Subject::Server);
        assert_eq!(text, "data loss: disk on fire");
        let text = explained(Status::invalid_argument("bad filter"), Subject::Server);
        assert_eq!(text, "invalid request: bad filter");
    }
}
