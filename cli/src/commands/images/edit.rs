//! `berth images rm` and `berth images tag`: changing image records.

use berth_api::containerd::services::images::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, UpdateImageRequest,
};
use tonic::Code;

use crate::client::Client;
use crate::commands::remove_each;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Wait until the garbage collector has removed what only these images held
    #[arg(long)]
    pub sync: bool,
    #[arg(required = true, value_name = "REF")]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// Point DST at SRC's target even when DST exists
    #[arg(short, long)]
    pub force: bool,
    /// The image whose target the new names get
    #[arg(value_name = "SRC")]
    pub source: String,
    #[arg(required = true, value_name = "DST")]
    pub targets: Vec<String>,
}

pub async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<()> {
    let sync = args.sync;
    remove_each("images", &args.names, |name| async move {
        super::images(client)
            .delete(DeleteImageRequest { name: name.clone(), sync })
            .await
            .map_err(|status| super::explain(client, status, &name))?;
        Ok(())
    })
    .await
}

pub async fn get(client: &Client, name: &str) -> anyhow::Result<Image> {
    let response = super::images(client)
        .get(GetImageRequest { name: name.to_string() })
        .await
        .map_err(|status| super::explain(client, status, name))?;
    response.into_inner().image.ok_or_else(|| super::not_found(client, name))
}

pub async fn tag(client: &Client, args: TagArgs) -> anyhow::Result<()> {
    let source = get(client, &args.source).await?;
    for name in &args.targets {
        let image = Image {
            name: name.clone(),
            labels: source.labels.clone(),
            target: source.target.clone(),
            ..Default::default()
        };
        let created = super::images(client)
            .create(CreateImageRequest { image: Some(image.clone()), source_date_epoch: None })
            .await;
        match created {
            Ok(_) => {}
            Err(status) if status.code() == Code::AlreadyExists && args.force => {
                // No mask: the whole record (target and labels) becomes SRC's.
                super::images(client)
                    .update(UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None })
                    .await
                    .map_err(|status| super::explain(client, status, name))?;
            }
            Err(status) => return Err(super::explain(client, status, name)),
        }
        output::print(&format!("{name}\n"))?;
    }
    Ok(())
}
