//! Events shims publish themselves: containerd's ttrpc Events API on a socket under the
//! service's root, whose address shims get in `TTRPC_ADDRESS`. Only what the service cannot
//! see on its own is passed on to metadata (`/tasks/oom`); the rest it publishes itself.

use std::path::Path;
use std::sync::Arc;

use berth_api::containerd::events::TaskOom;
use berth_peers::Publisher;
use prost::Message;
use tokio::net::UnixListener;

use crate::protocol::EVENTS_SERVICE;
use crate::protocol::events::ForwardRequest;
use crate::ttrpc::{self, Dispatch, Reply};

struct FromShims {
    events: Publisher,
}

impl FromShims {
    fn forward(&self, request: ForwardRequest) -> Result<(), tonic::Status> {
        let envelope = request.envelope.ok_or_else(|| tonic::Status::invalid_argument("forward: no envelope"))?;
        berth_core::identifiers::validate("namespace", &envelope.namespace)?;
        let event = envelope.event.unwrap_or_default();
        match envelope.topic.as_str() {
            "/tasks/oom" => {
                let oom = TaskOom::decode(event.value.as_slice())
                    .map_err(|e| tonic::Status::invalid_argument(format!("forward /tasks/oom: {e}")))?;
                self.events.publish(&envelope.namespace, "/tasks/oom", &oom);
            }
            // Task lifecycle events (create, start, exec-added, exec-started, paused, resumed,
            // checkpointed, exit, delete): this service publishes its own for every shim, once
            // each (exits even across its restarts), so the copies containerd's shims send
            // would be duplicates.
            topic => tracing::debug!(topic, namespace = envelope.namespace, "shim event not passed on"),
        }
        Ok(())
    }
}

impl Dispatch for FromShims {
    fn call(&self, service: &str, method: &str, payload: Vec<u8>) -> Reply {
        let result = if service == EVENTS_SERVICE && method == "Forward" {
            ttrpc::decode::<ForwardRequest>(method, &payload)
                .and_then(|request| self.forward(request))
                .map(|()| Vec::new())
        } else {
            Err(tonic::Status::unimplemented(format!("{service}/{method} is not served here")))
        };
        Box::pin(std::future::ready(result))
    }
}

/// Serves shims' events on `socket` (mode 0600) in the background.
pub fn serve(socket: &Path, events: Publisher) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = std::os::unix::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    tokio::spawn(async move {
        if let Err(e) = ttrpc::serve(listener, Arc::new(FromShims { events })).await {
            tracing::error!("shim events socket: {e}");
        }
    });
    Ok(())
}
