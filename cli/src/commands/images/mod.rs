//! `berth images ...`: image records (containerd.services.images.v1) and pulls run by the image
//! service (berth.image.v1.Transfer).
//!
//! - [`pull`]: `pull`, with progress bars or JSON lines;
//! - [`push`]: `push`, run by the image service too;
//! - [`list`]: `ls` and `check`;
//! - [`edit`]: `rm` and `tag`;
//! - [`inspect`]: `images inspect`;
//! - [`archive`]: `import` and `export` (done by the image service);
//! - [`credentials`]: registry credentials from docker's config.json;
//! - [`documents`]: reading an image's index, manifests and configs from the content store.

pub mod archive;
pub mod credentials;
pub mod documents;
pub mod edit;
pub mod inspect;
pub mod list;
pub mod pull;
pub mod push;

use berth_api::containerd::services::images::v1::images_client::ImagesClient;
use clap::Subcommand;

use crate::client::{Client, Transport};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Have berth's image service pull an image from its registry (and unpack it)
    Pull(pull::Args),
    /// List images, optionally only those matching containerd filters
    #[command(visible_alias = "list")]
    Ls(list::LsArgs),
    /// Say whether each image's content is all there, and whether it is unpacked
    Check(list::CheckArgs),
    /// Remove image records; prints each name removed
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm(edit::RmArgs),
    /// Give an image more names: DST records pointing at SRC's target
    Tag(edit::TagArgs),
    /// Print an image as JSON: its record and the index, manifests and configs it points at
    Inspect(inspect::Args),
    /// Import images from an OCI image layout tar or a `docker save` tar (FILE, or - for stdin)
    Import(archive::ImportArgs),
    /// Export images as one OCI image layout tar (to FILE, or - for stdout)
    Export(archive::ExportArgs),
    /// Have berth's image service push an image to a registry (as REMOTE if given)
    Push(push::Args),
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Pull(args) => pull::run(client, args).await,
        Command::Ls(args) => list::ls(client, args).await,
        Command::Check(args) => list::check(client, args).await,
        Command::Rm(args) => edit::rm(client, args).await,
        Command::Tag(args) => edit::tag(client, args).await,
        Command::Inspect(args) => inspect::run(client, args).await,
        Command::Import(args) => archive::import(client, args).await,
        Command::Export(args) => archive::export(client, args).await,
        Command::Push(args) => push::run(client, args).await,
    }
}

/// A client of containerd's Images service in the client's namespace.
pub fn images(client: &Client) -> ImagesClient<Transport> {
    ImagesClient::new(client.transport())
        .max_decoding_message_size(crate::client::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(crate::client::MAX_MESSAGE_SIZE)
}

/// How a missing image is worded, with the command that lists the others.
pub fn not_found(client: &Client, name: &str) -> anyhow::Error {
    let namespace = client.namespace();
    anyhow::anyhow!(
        "image {name} not found in namespace {namespace} (list images with `berth -n {namespace} images ls`)"
    )
}

/// Explains a failed Images call about `name`: NotFound names the image, the rest as usual.
pub fn explain(client: &Client, status: tonic::Status, name: &str) -> anyhow::Error {
    match status.code() {
        tonic::Code::NotFound => not_found(client, name),
        tonic::Code::AlreadyExists => anyhow::anyhow!(
            "image {name} already exists in namespace {} (pass --force to point it elsewhere, or remove it first)",
            client.namespace()
        ),
        _ => client.explain(status, crate::errors::Subject::Server),
    }
}
