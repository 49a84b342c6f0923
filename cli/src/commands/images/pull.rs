//! `berth images pull REF`: asks berth's image service to pull (berth.image.v1.Transfer/Pull)
//! and shows what it reports: bars per blob like docker's on a terminal, a line per change
//! otherwise, JSON lines with `--format json`.

use std::collections::HashMap;
use std::io::IsTerminal as _;
use std::time::Duration;

use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_api::berth::image::v1::{
    BlobProgress, BlobState, Credentials, LayerProgress, LayerState, PullRequest, pull_progress,
};
use berth_api::containerd::services::images::v1::Image;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};
use tonic::Code;

use super::documents::kind;
use crate::client::Client;
use crate::errors::Subject;
use crate::output::{self, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image reference: busybox, docker.io/library/busybox:1.36, 127.0.0.1:5000/app@sha256:...
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Platform to pull from an index, os/arch[/variant] (repeatable; default: this host's)
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,
    /// Pull every platform of an index
    #[arg(long, conflicts_with = "platforms")]
    pub all_platforms: bool,
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
    /// Snapshotter to unpack into
    #[arg(long, default_value = "overlayfs")]
    pub snapshotter: String,
    /// Fetch only; do not unpack the layers into snapshots
    #[arg(long)]
    pub no_unpack: bool,
    /// Blobs fetched at once (0: the service's default)
    #[arg(long, default_value_t = 0)]
    pub max_concurrent_downloads: u32,
    /// Label for the image record, key=value (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::args::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Progress as bars (on a terminal) or lines; json: one JSON object per event on stdout
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub(super) fn parse_user(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((user, secret)) if !secret.is_empty() => Ok((user.to_string(), secret.to_string())),
        _ => Err(format!("{text:?}: write USER:PASSWORD (or :TOKEN)")),
    }
}

/// Whether a reference names a registry on this machine, which rarely has TLS.
pub fn is_loopback(reference: &str) -> bool {
    let Some((first, _)) = reference.split_once('/') else { return false };
    let host = match first.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => first.rsplit_once(':').map_or(first, |(host, _)| host),
    };
    host == "localhost" || host == "::1" || host.starts_with("127.")
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    // A loopback registry without TLS is found by the service (it falls back to plain HTTP).
    let plain_http = args.plain_http;
    let credentials = match &args.user {
        Some(user) => Some(user.clone()),
        None => super::credentials::for_reference(&args.reference)?,
    };
    let request = PullRequest {
        reference: args.reference.clone(),
        platforms: args.platforms.clone(),
        all_platforms: args.all_platforms,
        plain_http,
        skip_verify: args.skip_verify,
        unpack: !args.no_unpack,
        snapshotter: args.snapshotter.clone(),
        credentials: credentials.map(|(username, secret)| Credentials { username, secret }),
        labels: args.labels.iter().cloned().collect(),
        max_concurrent_downloads: args.max_concurrent_downloads,
    };
    let explain = |status: tonic::Status| explain(client, status, &args, plain_http);
    let mut stream = TransferClient::new(client.transport()).pull(request).await.map_err(explain)?.into_inner();
    let mut view = View::new(args.format);
    let mut image = None;
    loop {
        let event = match stream.message().await {
            Ok(Some(progress)) => progress.event,
            Ok(None) => break,
            Err(status) => {
                view.abandon();
                return Err(explain(status));
            }
        };
        match event {
            Some(pull_progress::Event::Image(record)) => {
                view.image(&record)?;
                image = Some(record);
            }
            Some(event) => view.event(event)?,
            None => {}
        }
    }
    let Some(image) = image else {
        view.abandon();
        anyhow::bail!("pull {}: the image service ended the stream without the image record", args.reference);
    };
    view.finish();
    if args.format == Format::Table {
        let digest = image.target.as_ref().map(|t| t.digest.as_str()).unwrap_or_default();
        output::print(&format!("{} {digest}\n", image.name))?;
    }
    Ok(())
}

/// A failed pull in words that say what to do next.
fn explain(client: &Client, status: tonic::Status, args: &Args, plain_http: bool) -> anyhow::Error {
    let message = status.message();
    let reference = &args.reference;
    let hint = match status.code() {
        Code::Unauthenticated | Code::PermissionDenied if args.user.is_some() => {
            Some("the registry refused the credentials: check USER:PASSWORD given with --user".to_string())
        }
        Code::Unauthenticated | Code::PermissionDenied => Some(
            "the registry wants credentials: pass them with --user USER:PASSWORD, or keep them in docker's \
                 config.json (docker login)"
                .to_string(),
        ),
        Code::NotFound => Some(if message.contains("platform") {
            "the image has no manifest for that platform: pick one with --platform, or pass --all-platforms".to_string()
        } else {
            "no such image or tag at the registry: check the repository name and tag".to_string()
        }),
        Code::Unavailable if message.contains("registry") || message.contains("token service") => {
            let mut hint = "is the registry running and reachable from berth's image service?".to_string();
            if !plain_http {
                hint.push_str(" for a registry without TLS pass --plain-http");
            }
            Some(hint)
        }
        Code::FailedPrecondition | Code::Unavailable
            if !plain_http
                && !message.contains("hosts.toml")
                && (message.contains("certificate") || message.contains("tls") || message.contains("TLS")) =>
        {
            Some(
                "TLS failed: pass --skip-verify to accept its certificate, or --plain-http if it has no TLS"
                    .to_string(),
            )
        }
        _ => None,
    };
    match hint {
        Some(hint) => anyhow::Error::new(crate::errors::CallError {
            code: status.code(),
            message: format!("pull {reference}: {message} ({hint})"),
        }),
        None => client.explain(status, Subject::Server).context(format!("pull {reference}")),
    }
}

/// Words for a blob's state, docker-like.
fn blob_words(state: BlobState) -> &'static str {
    match state {
        BlobState::Waiting => "waiting",
        BlobState::Downloading => "downloading",
        BlobState::Verifying => "verifying",
        BlobState::Done => "done",
        BlobState::Skipped => "already exists",
    }
}

fn layer_words(state: LayerState) -> &'static str {
    match state {
        LayerState::Waiting => "waiting to unpack",
        LayerState::Unpacking => "unpacking",
        LayerState::Done => "unpacked",
        LayerState::Skipped => "already unpacked",
    }
}

fn state_name(state: BlobState) -> &'static str {
    match state {
        BlobState::Waiting => "waiting",
        BlobState::Downloading => "downloading",
        BlobState::Verifying => "verifying",
        BlobState::Done => "done",
        BlobState::Skipped => "skipped",
    }
}

fn layer_state_name(state: LayerState) -> &'static str {
    match state {
        LayerState::Waiting => "waiting",
        LayerState::Unpacking => "unpacking",
        LayerState::Done => "done",
        LayerState::Skipped => "skipped",
    }
}

/// One event as a JSON line.
pub fn event_json(event: &pull_progress::Event) -> Value {
    match event {
        pull_progress::Event::Resolved(r) => {
            json!({"event": "resolved", "name": r.name, "digest": r.digest, "media_type": r.media_type, "size": r.size})
        }
        pull_progress::Event::Blob(b) => json!({
            "event": "blob",
            "digest": b.digest,
            "media_type": b.media_type,
            "kind": kind(&b.media_type),
            "state": state_name(b.state()),
            "offset": b.offset,
            "total": b.total,
            "resumed_from": b.resumed_from,
        }),
        pull_progress::Event::Layer(l) => json!({
            "event": "layer",
            "digest": l.digest,
            "chain_id": l.chain_id,
            "state": layer_state_name(l.state()),
        }),
        pull_progress::Event::Image(image) => image_json(image),
    }
}

fn image_json(image: &Image) -> Value {
    let target = image.target.clone().unwrap_or_default();
    json!({
        "event": "image",
        "name": image.name,
        "digest": target.digest,
        "media_type": target.media_type,
        "size": target.size,
        "labels": output::sorted(&image.labels),
    })
}

/// The short name docker shows for a blob: 12 hex digits.
fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    &hex[..hex.len().min(12)]
}

/// Where progress goes: bars on a terminal, lines on stderr otherwise, or JSON lines.
pub(super) enum View {
    Json,
    Lines { last: HashMap<String, String> },
    Bars(Box<Bars>),
}

pub(super) struct Bars {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    text: ProgressStyle,
    bytes: ProgressStyle,
}

impl View {
    pub(super) fn new(format: Format) -> View {
        if format == Format::Json {
            return View::Json;
        }
        if !std::io::stderr().is_terminal() {
            return View::Lines { last: HashMap::new() };
        }
        let text = ProgressStyle::with_template("{prefix} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
        let bytes = ProgressStyle::with_template("{prefix} {msg:12} [{bar:40}] {bytes}/{total_bytes}")
            .map(|style| style.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        View::Bars(Box::new(Bars { multi, bars: HashMap::new(), text, bytes }))
    }

    pub(super) fn event(&mut self, event: pull_progress::Event) -> anyhow::Result<()> {
        match self {
            View::Json => {
                output::print(&format!("{}\n", event_json(&event)))?;
            }
            View::Lines { last } => {
                let line = match &event {
                    pull_progress::Event::Resolved(r) => Some(format!("resolved {} to {}", r.name, r.digest)),
                    pull_progress::Event::Blob(b) => {
                        Some(format!("{} {}: {}", kind(&b.media_type), short(&b.digest), blob_words(b.state())))
                    }
                    pull_progress::Event::Layer(l) => {
                        Some(format!("layer {}: {}", short(&l.digest), layer_words(l.state())))
                    }
                    pull_progress::Event::Image(_) => None,
                };
                // Byte counts repeat the downloading state; say each change once.
                if let Some(line) = line {
                    let key = match &event {
                        pull_progress::Event::Blob(b) => format!("blob {}", b.digest),
                        pull_progress::Event::Layer(l) => format!("layer {}", l.digest),
                        _ => String::new(),
                    };
                    if last.get(&key) != Some(&line) {
                        eprintln!("{line}");
                        last.insert(key, line);
                    }
                }
            }
            View::Bars(bars) => bars.event(event),
        }
        Ok(())
    }

    pub(super) fn image(&mut self, image: &Image) -> anyhow::Result<()> {
        if let View::Json = self {
            output::print(&format!("{}\n", image_json(image)))?;
        }
        Ok(())
    }

    pub(super) fn finish(&mut self) {
        if let View::Bars(bars) = self {
            for bar in bars.bars.values() {
                bar.finish();
            }
        }
    }

    pub(super) fn abandon(&mut self) {
        if let View::Bars(bars) = self {
            for bar in bars.bars.values() {
                bar.abandon();
            }
        }
    }
}

impl Bars {
    fn bar(&mut self, digest: &str, media_type: &str) -> &ProgressBar {
        let (multi, text) = (&self.multi, &self.text);
        self.bars.entry(digest.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(0).with_style(text.clone()));
            bar.set_prefix(format!("{:<8} {}:", kind(media_type), short(digest)));
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        })
    }

    fn event(&mut self, event: pull_progress::Event) {
        match event {
            pull_progress::Event::Resolved(r) => {
                let _ = self.multi.println(format!("resolved {} to {}", r.name, r.digest));
            }
            pull_progress::Event::Blob(blob) => self.blob(&blob),
            pull_progress::Event::Layer(layer) => self.layer(&layer),
            pull_progress::Event::Image(_) => {}
        }
    }

    fn blob(&mut self, blob: &BlobProgress) {
        let (text, bytes) = (self.text.clone(), self.bytes.clone());
        let bar = self.bar(&blob.digest, &blob.media_type);
        let state = blob.state();
        if state == BlobState::Downloading {
            bar.set_style(bytes);
            bar.set_length(u64::try_from(blob.total).unwrap_or(0));
            bar.set_position(u64::try_from(blob.offset).unwrap_or(0));
            let words = if blob.resumed_from > 0 { "resuming" } else { "downloading" };
            bar.set_message(words);
        } else {
            bar.set_style(text);
            bar.set_message(blob_words(state));
            // Manifests and configs are finished; layers may still be unpacked.
            if matches!(state, BlobState::Done | BlobState::Skipped) && kind(&blob.media_type) != "layer" {
                bar.finish();
            }
        }
    }

    fn layer(&mut self, layer: &LayerProgress) {
        let text = self.text.clone();
        let bar = self.bar(&layer.digest, "layer");
        bar.set_style(text);
        bar.set_message(layer_words(layer.state()));
        if matches!(layer.state(), LayerState::Done | LayerState::Skipped) {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        for reference in ["127.0.0.1:5000/app:1", "localhost/app", "localhost:5000/a/b@sha256:00", "[::1]:5000/x"] {
            assert!(is_loopback(reference), "{reference}");
        }
        for reference in ["busybox", "docker.io/library/busybox", "registry.example:5000/app", "localhost"] {
            assert!(!is_loopback(reference), "{reference}");
        }
    }

    #[test]
    fn users_need_a_secret() {
        assert_eq!(parse_user("a:b:c").unwrap(), ("a".to_string(), "b:c".to_string()));
        assert_eq!(parse_user(":token").unwrap(), (String::new(), "token".to_string()));
        assert!(parse_user("alone").is_err());
        assert!(parse_user("a:").is_err());
    }

    #[test]
    fn events_as_json_lines() {
        let blob = pull_progress::Event::Blob(BlobProgress {
            digest: "sha256:ab".into(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            state: BlobState::Downloading as i32,
            offset: 5,
            total: 10,
            resumed_from: 2,
        });
        assert_eq!(
            event_json(&blob),
            json!({"event": "blob", "digest": "sha256:ab", "media_type": "application/vnd.oci.image.layer.v1.tar+gzip",
                   "kind": "layer", "state": "downloading", "offset": 5, "total": 10, "resumed_from": 2})
        );
        assert_eq!(short("sha256:0123456789abcdef"), "0123456789ab");
    }
}
