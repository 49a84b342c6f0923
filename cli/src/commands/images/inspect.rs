//! `berth images inspect REF`: the record and the documents it points at, as one JSON object.

use serde_json::{Value, json};

use super::documents::Tree;
use crate::client::Client;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(value_name = "REF")]
    pub name: String,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    let image = super::edit::get(client, &args.name).await?;
    let target = image.target.clone().unwrap_or_default();
    let tree = Tree::read(client, &target).await?;
    let descriptor = |d: &berth_api::containerd::types::Descriptor| json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size});
    let indexes: Vec<Value> =
        tree.indexes.iter().map(|(d, document)| json!({"descriptor": descriptor(d), "document": document})).collect();
    let manifests: Vec<Value> = tree
        .manifests
        .iter()
        .map(|m| {
            json!({
                "descriptor": descriptor(&m.descriptor),
                "platform": m.platform,
                "document": m.document,
                "config": m.config_document,
            })
        })
        .collect();
    let value = json!({
        "record": {
            "name": image.name,
            "labels": output::sorted(&image.labels),
            "target": descriptor(&target),
            "created_at": output::rfc3339(image.created_at.as_ref()),
            "updated_at": output::rfc3339(image.updated_at.as_ref()),
        },
        "indexes": indexes,
        "manifests": manifests,
    });
    output::print(&output::json(&value)?).map_err(Into::into)
}
