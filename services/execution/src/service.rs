//! containerd.services.tasks.v1.Tasks on top of [`Tasks`]: namespaces from the call's
//! metadata, everything else handed over as is.

use std::sync::Arc;

use berth_api::containerd::services::tasks::v1::tasks_server::{Tasks as TasksApi, TasksServer};
use berth_api::containerd::services::tasks::v1::*;
use tonic::{Request, Response, Status};

use crate::tasks::Tasks;

pub struct TasksService {
    pub tasks: Arc<Tasks>,
}

impl TasksService {
    pub fn into_server(self) -> TasksServer<TasksService> {
        TasksServer::new(self)
    }
}

fn split<T>(request: Request<T>) -> Result<(String, T), Status> {
    let namespace = berth_core::namespace::of(&request)?;
    Ok((namespace, request.into_inner()))
}

#[tonic::async_trait]
impl TasksApi for TasksService {
    async fn create(&self, request: Request<CreateTaskRequest>) -> Result<Response<CreateTaskResponse>, Status> {
        let lease = berth_peers::leases::of(request.metadata());
        let (namespace, request) = split(request)?;
        self.tasks.create(&namespace, lease, request).await.map(Response::new)
    }

    async fn start(&self, request: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.start(&namespace, request).await.map(Response::new)
    }

    async fn delete(&self, request: Request<DeleteTaskRequest>) -> Result<Response<DeleteResponse>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.delete(&namespace, request).await.map(Response::new)
    }

    async fn delete_process(&self, request: Request<DeleteProcessRequest>) -> Result<Response<DeleteResponse>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.delete_process(&namespace, request).await.map(Response::new)
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.get(&namespace, request).await.map(Response::new)
    }

    async fn list(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.list(&namespace, request).await.map(Response::new)
    }

    async fn kill(&self, request: Request<KillRequest>) -> Result<Response<()>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.kill(&namespace, request).await.map(Response::new)
    }

    async fn exec(&self, request: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.exec(&namespace, request).await.map(Response::new)
    }

    async fn resize_pty(&self, request: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.resize_pty(&namespace, request).await.map(Response::new)
    }

    async fn close_io(&self, request: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.close_io(&namespace, request).await.map(Response::new)
    }

    async fn pause(&self, request: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.pause(&namespace, request).await.map(Response::new)
    }

    async fn resume(&self, request: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.resume(&namespace, request).await.map(Response::new)
    }

    async fn list_pids(&self, request: Request<ListPidsRequest>) -> Result<Response<ListPidsResponse>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.list_pids(&namespace, request).await.map(Response::new)
    }

    async fn checkpoint(
        &self,
        request: Request<CheckpointTaskRequest>,
    ) -> Result<Response<CheckpointTaskResponse>, Status> {
        let lease = berth_peers::leases::of(request.metadata());
        let (namespace, request) = split(request)?;
        self.tasks.checkpoint(&namespace, lease, request).await.map(Response::new)
    }

    async fn update(&self, request: Request<UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.update(&namespace, request).await.map(Response::new)
    }

    async fn metrics(&self, request: Request<MetricsRequest>) -> Result<Response<MetricsResponse>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.metrics(&namespace, request).await.map(Response::new)
    }

    async fn wait(&self, request: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let (namespace, request) = split(request)?;
        self.tasks.wait(&namespace, request).await.map(Response::new)
    }
}
