//! The shim's ttrpc service: each method of `containerd.task.v2.Task`, decoded and handed to
//! the [`Task`].

use std::sync::Arc;

use prost::Message;
use tokio::sync::Notify;

use super::task::Task;
use crate::protocol::TASK_SERVICE;
use crate::ttrpc::{Dispatch, Reply, decode};

/// Serves one task; `stop` is notified when the shim should exit (Shutdown).
pub struct ShimService {
    pub task: Arc<Task>,
    pub stop: Arc<Notify>,
}

fn encoded<T: Message>(result: Result<T, tonic::Status>) -> Result<Vec<u8>, tonic::Status> {
    result.map(|message| message.encode_to_vec())
}

impl Dispatch for ShimService {
    fn call(&self, service: &str, method: &str, payload: Vec<u8>) -> Reply {
        let task = self.task.clone();
        let stop = self.stop.clone();
        let service_ok = service == TASK_SERVICE;
        let service = service.to_string();
        let method = method.to_string();
        Box::pin(async move {
            if !service_ok {
                return Err(tonic::Status::unimplemented(format!("service {service} is not served by berth-shim")));
            }
            let m = method.as_str();
            let p = payload.as_slice();
            match m {
                "State" => encoded(task.state_of(decode(m, p)?).await),
                "Create" => encoded(task.create(decode(m, p)?).await),
                "Start" => encoded(task.start(decode(m, p)?).await),
                "Delete" => encoded(task.delete(decode(m, p)?).await),
                "Pids" => encoded(task.pids(decode(m, p)?).await),
                "Pause" => encoded(task.pause(decode(m, p)?).await),
                "Resume" => encoded(task.resume(decode(m, p)?).await),
                "Kill" => encoded(task.kill(decode(m, p)?).await),
                "Exec" => encoded(task.exec(decode(m, p)?).await),
                "ResizePty" => encoded(task.resize_pty(decode(m, p)?).await),
                "CloseIO" => encoded(task.close_io(decode(m, p)?).await),
                "Update" => encoded(task.update(decode(m, p)?).await),
                "Wait" => encoded(task.wait(decode(m, p)?).await),
                "Stats" => encoded(task.stats(decode(m, p)?).await),
                "Connect" => encoded(task.connect(decode(m, p)?)),
                "Shutdown" => {
                    let request: crate::protocol::v2::ShutdownRequest = decode(m, p)?;
                    // containerd's shims stay while their task exists, unless told `now`.
                    if request.now || !task.is_live() {
                        stop.notify_one();
                    }
                    Ok(Vec::new())
                }
                "Checkpoint" => encoded(task.checkpoint(decode(m, p)?).await),
                other => Err(tonic::Status::unimplemented(format!("{TASK_SERVICE}/{other} does not exist"))),
            }
        })
    }
}
