//! `berth images push REF [REMOTE]`: asks berth's image service to push an image
//! (berth.image.v1.Transfer/Push) and shows its progress as `pull` does.

use anyhow::Context as _;
use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_api::berth::image::v1::{Credentials, PushRequest, pull_progress};
use tonic::Code;

use super::pull::{View, is_loopback, parse_user};
use crate::client::Client;
use crate::errors::{CallError, Subject};
use crate::output::{self, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The local image
    #[arg(value_name = "REF")]
    pub name: String,
    /// Where to push it (default: REF itself)
    #[arg(value_name = "REMOTE")]
    pub remote: Option<String>,
    /// Speak plain HTTP to the registry (127.0.0.1 and localhost fall back to it by themselves)
    #[arg(long)]
    pub plain_http: bool,
    /// Accept any TLS certificate from the registry
    #[arg(long)]
    pub skip_verify: bool,
    /// Registry credentials, USER:PASSWORD (or :TOKEN for an identity token); default: the
    /// registry's entry in docker's config.json ($DOCKER_CONFIG or ~/.docker)
    #[arg(short, long, value_name = "USER:PASSWORD", value_parser = parse_user)]
    pub user: Option<(String, String)>,
    /// Progress as bars (on a terminal) or lines; json: one JSON object per event on stdout
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    let remote = args.remote.clone().unwrap_or_else(|| args.name.clone());
    let plain_http = args.plain_http || is_loopback(&remote);
    let credentials = match &args.user {
        Some(user) => Some(user.clone()),
        None => super::credentials::for_reference(&remote)?,
    };
    let request = PushRequest {
        name: args.name.clone(),
        remote: remote.clone(),
        plain_http: args.plain_http,
        skip_verify: args.skip_verify,
        credentials: credentials.map(|(username, secret)| Credentials { username, secret }),
    };
    let explain = |status: tonic::Status| -> anyhow::Error {
        let message = status.message().to_string();
        let hint = match status.code() {
            Code::NotFound if message.contains("image") => {
                Some(format!("list local images with `berth -n {} images ls`", client.namespace()))
            }
            Code::Unauthenticated | Code::PermissionDenied => Some(
                "the registry wants (other) credentials: pass them with --user USER:PASSWORD, or keep them in \
                     docker's config.json (docker login)"
                    .to_string(),
            ),
            Code::Unavailable if message.contains("registry") => Some(if plain_http {
                "is the registry running and reachable from berth's image service?".to_string()
            } else {
                "is the registry running? for a registry without TLS pass --plain-http".to_string()
            }),
            _ => None,
        };
        match hint {
            Some(hint) => anyhow::Error::new(CallError {
                code: status.code(),
                message: format!("push {}: {message} ({hint})", args.name),
            }),
            None => client.explain(status, Subject::Server).context(format!("push {}", args.name)),
        }
    };
    let mut stream = TransferClient::new(client.transport()).push(request).await.map_err(explain)?.into_inner();
    let mut view = View::new(args.format);
    let mut pushed = None;
    loop {
        match stream.message().await {
            Ok(Some(progress)) => {
                if let Some(pull_progress::Event::Resolved(resolved)) = &progress.event {
                    pushed = Some(format!("{} {}", resolved.name, resolved.digest));
                }
                if let Some(event) = progress.event {
                    view.event(event)?;
                }
            }
            Ok(None) => break,
            Err(status) => {
                view.abandon();
                return Err(explain(status));
            }
        }
    }
    view.finish();
    let pushed =
        pushed.with_context(|| format!("push {}: the image service ended without saying what it pushed", args.name))?;
    if args.format == Format::Table {
        output::print(&format!("{pushed}\n"))?;
    }
    Ok(())
}
