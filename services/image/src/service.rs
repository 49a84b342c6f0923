//! The gRPC adapter: containerd's `containerd.services.images.v1.Images` over [`ImageStore`].

use berth_api::containerd::services::images::v1::images_server::{Images, ImagesServer};
use berth_api::containerd::services::images::v1::*;
use tonic::{Request, Response, Status};

use crate::images::ImageStore;

pub struct ImagesService {
    store: ImageStore,
}

impl ImagesService {
    pub fn new(store: ImageStore) -> ImagesService {
        ImagesService { store }
    }

    pub fn into_server(self) -> ImagesServer<Self> {
        ImagesServer::new(self)
    }
}

#[tonic::async_trait]
impl Images for ImagesService {
    async fn get(&self, request: Request<GetImageRequest>) -> Result<Response<GetImageResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let image = self.store.get(&namespace, &request.into_inner().name).await?;
        Ok(Response::new(GetImageResponse { image: Some(image) }))
    }

    async fn list(&self, request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let images = self.store.list(&namespace, &request.into_inner().filters).await?;
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn create(&self, request: Request<CreateImageRequest>) -> Result<Response<CreateImageResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        // containerd's message is not nullable: a missing image is an image without a name.
        let image = request.image.unwrap_or_default();
        let image = self.store.create(&namespace, image, request.source_date_epoch).await?;
        Ok(Response::new(CreateImageResponse { image: Some(image) }))
    }

    async fn update(&self, request: Request<UpdateImageRequest>) -> Result<Response<UpdateImageResponse>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        let image = request.image.unwrap_or_default();
        let image = self.store.update(&namespace, image, request.update_mask, request.source_date_epoch).await?;
        Ok(Response::new(UpdateImageResponse { image: Some(image) }))
    }

    async fn delete(&self, request: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let namespace = berth_core::namespace::of(&request)?;
        let request = request.into_inner();
        self.store.delete(&namespace, &request.name, request.sync).await?;
        Ok(Response::new(()))
    }
}
