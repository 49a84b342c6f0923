//! `berth images import FILE|-` and `berth images export FILE|- REF...`: image archives,
//! read and written by berth's image service (berth.image.v1.Transfer/Import and Export);
//! the CLI only moves the bytes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use berth_api::berth::image::v1::transfer_client::TransferClient;
use berth_api::berth::image::v1::{ExportRequest, ImportOptions, ImportRequest, pull_progress};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::pull::View;
use crate::client::Client;
use crate::errors::Subject;
use crate::output::{self, Format};

/// Bytes per import message.
const CHUNK: usize = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Name prefix for images the archive names only by tag (`1` becomes BASE:1); only
    /// images whose names start with it are imported
    #[arg(long, value_name = "BASE")]
    pub base_name: Option<String>,
    /// Also keep the archive's index as an image of this name
    #[arg(long, value_name = "NAME")]
    pub index_name: Option<String>,
    /// Import only this platform's manifests of an index, os/arch[/variant] (repeatable;
    /// default: every platform the archive holds)
    #[arg(long = "platform", value_name = "PLATFORM")]
    pub platforms: Vec<String>,
    /// Do not unpack the images into snapshots
    #[arg(long)]
    pub no_unpack: bool,
    /// Snapshotter to unpack into
    #[arg(long, default_value = "overlayfs")]
    pub snapshotter: String,
    /// Label for the image records, key=value (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::args::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Progress as bars (on a terminal) or lines; json: one JSON object per event on stdout
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// An OCI image layout tar (oci-archive) or a `docker save` tar; - for standard input
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Where to write the OCI image layout tar; - for standard output
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[arg(required = true, value_name = "REF")]
    pub names: Vec<String>,
}

async fn open(path: &Path) -> anyhow::Result<Box<dyn AsyncRead + Unpin + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(tokio::io::stdin()));
    }
    let file = tokio::fs::File::open(path).await.with_context(|| format!("open {}", path.display()))?;
    Ok(Box::new(file))
}

pub async fn import(client: &Client, args: ImportArgs) -> anyhow::Result<()> {
    let mut input = open(&args.file).await?;
    let options = ImportOptions {
        base_name: args.base_name.clone().unwrap_or_default(),
        index_name: args.index_name.clone().unwrap_or_default(),
        unpack: !args.no_unpack,
        snapshotter: args.snapshotter.clone(),
        labels: args.labels.iter().cloned().collect(),
        platforms: args.platforms.clone(),
    };
    let (messages, outgoing) = mpsc::channel(2);
    let shown = args.file.display().to_string();
    // Reads the archive while the call runs; a read error ends the stream early, which the
    // service sees as a truncated tar, and is reported here.
    let reader = tokio::spawn(async move {
        let mut options = Some(options);
        loop {
            let mut data = vec![0; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                let read = input.read(&mut data[filled..]).await.with_context(|| format!("read {shown}"))?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            data.truncate(filled);
            let done = filled < CHUNK;
            if (filled > 0 || options.is_some())
                && messages.send(ImportRequest { options: options.take(), data }).await.is_err()
            {
                return Ok(());
            }
            if done {
                return Ok::<(), anyhow::Error>(());
            }
        }
    });
    let explain = |status: tonic::Status| {
        client.explain(status, Subject::Server).context(format!("import {}", args.file.display()))
    };
    let call = TransferClient::new(client.transport())
        .max_decoding_message_size(crate::client::MAX_MESSAGE_SIZE)
        .import(ReceiverStream::new(outgoing))
        .await;
    let read = |reader_result: Result<anyhow::Result<()>, tokio::task::JoinError>| match reader_result {
        Ok(result) => result,
        Err(err) => Err(anyhow::anyhow!("archive reader failed: {err}")),
    };
    let mut stream = match call {
        Ok(response) => response.into_inner(),
        Err(status) => {
            read(reader.await)?;
            return Err(explain(status));
        }
    };
    read(reader.await)?;
    let mut view = View::new(args.format);
    let mut images = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(progress)) => match progress.event {
                Some(pull_progress::Event::Image(image)) => {
                    view.image(&image)?;
                    images.push(image);
                }
                Some(event) => view.event(event)?,
                None => {}
            },
            Ok(None) => break,
            Err(status) => {
                view.abandon();
                return Err(explain(status));
            }
        }
    }
    view.finish();
    if images.is_empty() {
        anyhow::bail!("import {}: the image service ended without naming an image", args.file.display());
    }
    if args.format == Format::Table {
        let lines: String = images
            .iter()
            .map(|image| {
                format!("{} {}\n", image.name, image.target.as_ref().map(|t| t.digest.as_str()).unwrap_or_default())
            })
            .collect();
        output::print(&lines)?;
    }
    Ok(())
}

pub async fn export(client: &Client, args: ExportArgs) -> anyhow::Result<()> {
    let request = ExportRequest { names: args.names.clone() };
    let what = format!("export {}", args.names.join(" "));
    let explain = |status: tonic::Status| -> anyhow::Error {
        if status.code() == tonic::Code::NotFound && status.message().contains("image") {
            let namespace = client.namespace();
            return anyhow::anyhow!("{what}: {} (list images with `berth -n {namespace} images ls`)", status.message());
        }
        client.explain(status, Subject::Server).context(what.clone())
    };
    let mut stream = TransferClient::new(client.transport())
        .max_decoding_message_size(crate::client::MAX_MESSAGE_SIZE)
        .export(request)
        .await
        .map_err(explain)?
        .into_inner();
    if args.file == Path::new("-") {
        let mut stdout = tokio::io::stdout();
        copy(&mut stream, &mut stdout).await.map_err(|e| match e {
            Copy::Call(status) => explain(status),
            Copy::Write(err) => anyhow::Error::new(err).context("write to standard output"),
        })?;
        return Ok(());
    }
    // Written beside the target and renamed at the end: a failed export leaves no half tar.
    let partial = partial_path(&args.file);
    let mut file = tokio::fs::File::create(&partial).await.with_context(|| format!("create {}", partial.display()))?;
    let copied = copy(&mut stream, &mut file).await;
    let synced = file.sync_all().await;
    drop(file);
    let result = match (copied, synced) {
        (Err(Copy::Call(status)), _) => Err(explain(status)),
        (Err(Copy::Write(err)), _) | (Ok(()), Err(err)) => {
            Err(anyhow::Error::new(err).context(format!("write {}", partial.display())))
        }
        (Ok(()), Ok(())) => tokio::fs::rename(&partial, &args.file)
            .await
            .with_context(|| format!("rename {} to {}", partial.display(), args.file.display())),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

enum Copy {
    Call(tonic::Status),
    Write(std::io::Error),
}

async fn copy(
    stream: &mut tonic::Streaming<berth_api::berth::image::v1::ExportChunk>,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<(), Copy> {
    while let Some(chunk) = stream.message().await.map_err(Copy::Call)? {
        out.write_all(&chunk.data).await.map_err(Copy::Write)?;
    }
    out.flush().await.map_err(Copy::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_files_sit_beside_the_target() {
        assert_eq!(partial_path(Path::new("/tmp/a.tar")), PathBuf::from("/tmp/a.tar.partial"));
        assert_eq!(partial_path(Path::new("a.tar")), PathBuf::from("a.tar.partial"));
    }
}
