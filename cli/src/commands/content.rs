//! `berth content ...`: blobs and ingests in the content store (containerd.services.content.v1).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;
use berth_api::containerd::services::content::v1::{
    DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest, ReadContentRequest,
    ReadContentResponse, Status as IngestStatus, UpdateRequest,
};
use berth_api::prost_types::FieldMask;
use clap::Subcommand;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use crate::args::parse_label;
use crate::client::Client;
use crate::errors::Subject;
use crate::ingest::{self, Input, Options};
use crate::output::{self, Format, Table, human_size};
use crate::progress;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a blob from stdin (or --file) through an ingest REF and commit it; prints its digest
    Ingest(IngestArgs),
    /// List blobs, optionally only those matching containerd filters
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Write a blob to stdout (or --output FILE)
    Get(GetArgs),
    /// Delete blobs; prints each digest deleted
    #[command(visible_aliases = ["delete", "del", "remove"])]
    Rm(RmArgs),
    /// List ingests in progress (partial writes)
    Active(ActiveArgs),
    /// Set labels on a blob (k=v), or remove them (k=); prints the resulting labels
    Label(LabelArgs),
}

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Ingest ref: names the partial write so an interrupted ingest can be resumed
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Digest the blob must have (computed locally when not given)
    #[arg(long, value_parser = parse_digest)]
    pub expected_digest: Option<String>,
    /// Size in bytes the blob must have
    #[arg(long)]
    pub expected_size: Option<u64>,
    /// Label for the committed blob, key=value (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Read this file instead of standard input
    #[arg(short, long)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print only digests
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// containerd filters, e.g. labels."a.b"==v or digest~=^sha256:ab (any of them may match)
    pub filters: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[arg(value_parser = parse_digest)]
    pub digest: String,
    /// Write to this file instead of standard output
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "DIGEST")]
    pub digests: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ActiveArgs {
    /// Print only refs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// containerd filters, e.g. ref~=^layer-
    pub filters: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    #[arg(value_parser = parse_digest)]
    pub digest: String,
    /// key=value to set, key= to remove
    #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Ingest(args) => ingest(client, args).await,
        Command::Ls(args) => ls(client, args).await,
        Command::Get(args) => get(client, args).await,
        Command::Rm(args) => rm(client, args).await,
        Command::Active(args) => active(client, args).await,
        Command::Label(args) => label(client, args).await,
    }
}

async fn ingest(client: &Client, args: IngestArgs) -> anyhow::Result<()> {
    let input = match &args.file {
        Some(path) => Input::path(path).with_context(|| format!("cannot open {}", path.display()))?,
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("berth: reading the blob from the terminal; end it with Ctrl-D (or use --file or `< FILE`)");
            }
            Input::stdin().context("cannot read standard input")?
        }
    };
    let mut options = Options::new(args.reference.clone());
    options.expected_digest = args.expected_digest;
    options.expected_size = args.expected_size;
    options.labels = args.labels.into_iter().collect();
    let bar = progress::bytes(options.expected_size.or(input.known_len()), &args.reference);
    let outcome = ingest::ingest(client, input, &options, &bar).await;
    bar.finish_and_clear();
    let outcome = outcome?;
    if outcome.resumed_from > 0 {
        eprintln!("berth: resumed ingest {:?} at {}", args.reference, human_size(outcome.resumed_from));
    }
    if outcome.restarted_over > 0 {
        eprintln!(
            "berth: ingest {:?} held {} already; the input cannot seek, so it was written again from the start",
            args.reference,
            human_size(outcome.restarted_over)
        );
    }
    if outcome.already_exists {
        eprintln!("berth: content {} already exists", outcome.digest);
    }
    output::print(&format!("{}\n", outcome.digest))?;
    Ok(())
}

async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<()> {
    check_filters(&args.filters)?;
    let mut stream = client
        .content()
        .list(ListContentRequest { filters: args.filters })
        .await
        .map_err(|status| client.explain(status, Subject::Server))?
        .into_inner();
    let mut blobs = Vec::new();
    while let Some(page) = stream.message().await.map_err(|status| client.explain(status, Subject::Server))? {
        blobs.extend(page.info);
    }
    let text = match (args.quiet, args.format) {
        (true, _) => blobs.iter().map(|info| format!("{}\n", info.digest)).collect(),
        (false, Format::Table) => blobs_table(&blobs, SystemTime::now()),
        (false, Format::Json) => output::json(&blobs.iter().map(BlobRow::from).collect::<Vec<_>>())?,
    };
    output::print(&text)?;
    Ok(())
}

async fn get(client: &Client, args: GetArgs) -> anyhow::Result<()> {
    let digest = args.digest.as_str();
    let explain = |status| client.explain(status, Subject::Content(digest));
    let mut content = client.content();
    let to_file_or_pipe = args.output.is_some() || !std::io::stdout().is_terminal();
    let bar = if progress::enabled() && to_file_or_pipe {
        let info = content.info(InfoRequest { digest: digest.to_string() }).await.map_err(explain)?.into_inner();
        progress::bytes(info.info.map(|info| u64::try_from(info.size).unwrap_or(0)), &short(digest))
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut stream = content
        .read(ReadContentRequest { digest: digest.to_string(), offset: 0, size: 0 })
        .await
        .map_err(explain)?
        .into_inner();
    // Wait for the first chunk before touching the output file, so a missing blob leaves it alone.
    let first = stream.message().await.map_err(explain)?;
    let result = match &args.output {
        None => copy(first, &mut stream, &mut tokio::io::stdout(), &bar, explain).await,
        Some(path) => {
            let mut file =
                tokio::fs::File::create(path).await.with_context(|| format!("cannot create {}", path.display()))?;
            let result = copy(first, &mut stream, &mut file, &bar, explain).await;
            if result.is_err() {
                remove_partial(path).await;
            }
            result
        }
    };
    bar.finish_and_clear();
    result
}

async fn copy(
    first: Option<ReadContentResponse>,
    stream: &mut tonic::Streaming<ReadContentResponse>,
    sink: &mut (impl AsyncWrite + Unpin),
    bar: &indicatif::ProgressBar,
    explain: impl Fn(tonic::Status) -> anyhow::Error,
) -> anyhow::Result<()> {
    let mut written: u64 = 0;
    let mut next = first;
    while let Some(chunk) = next {
        // Offsets must be contiguous; a gap would silently corrupt the output.
        if u64::try_from(chunk.offset).ok() != Some(written) {
            anyhow::bail!("berth sent data at offset {} where {written} was expected; retry", chunk.offset);
        }
        sink.write_all(&chunk.data).await.context("cannot write the blob")?;
        written += chunk.data.len() as u64;
        bar.set_position(written);
        next = stream.message().await.map_err(&explain)?;
    }
    sink.flush().await.context("cannot write the blob")?;
    Ok(())
}

async fn remove_partial(path: &Path) {
    if let Err(err) = tokio::fs::remove_file(path).await {
        eprintln!("berth: could not remove the partial {}: {err}", path.display());
    }
}

async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<()> {
    let mut content = client.content();
    let mut failed = 0;
    for digest in &args.digests {
        let result = match parse_digest(digest) {
            Err(err) => Err(anyhow::anyhow!(err)),
            Ok(_) => content
                .delete(DeleteContentRequest { digest: digest.clone() })
                .await
                .map_err(|status| client.explain(status, Subject::Content(digest))),
        };
        match result {
            Ok(_) => output::print(&format!("{digest}\n"))?,
            Err(err) => {
                eprintln!("berth: {err:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} blobs could not be removed (see above)", args.digests.len());
    }
    Ok(())
}

async fn active(client: &Client, args: ActiveArgs) -> anyhow::Result<()> {
    check_filters(&args.filters)?;
    let statuses = client
        .content()
        .list_statuses(ListStatusesRequest { filters: args.filters })
        .await
        .map_err(|status| client.explain(status, Subject::Server))?
        .into_inner()
        .statuses;
    let text = match (args.quiet, args.format) {
        (true, _) => statuses.iter().map(|status| format!("{}\n", status.r#ref)).collect(),
        (false, Format::Table) => ingests_table(&statuses, SystemTime::now()),
        (false, Format::Json) => output::json(&statuses.iter().map(IngestRow::from).collect::<Vec<_>>())?,
    };
    output::print(&text)?;
    Ok(())
}

async fn label(client: &Client, args: LabelArgs) -> anyhow::Result<()> {
    let digest = args.digest.as_str();
    let explain = |status| client.explain(status, Subject::Content(digest));
    let mut content = client.content();
    let info = if args.labels.is_empty() {
        // Nothing to change: show what is there, as ctr does.
        content.info(InfoRequest { digest: digest.to_string() }).await.map_err(explain)?.into_inner().info
    } else {
        let request = label_update(digest, &args.labels);
        content.update(request).await.map_err(explain)?.into_inner().info
    };
    let labels = info.map(|info| info.labels).unwrap_or_default();
    output::print(&format!("{}\n", output::labels_inline(&labels)))?;
    Ok(())
}

/// The Update that applies `labels`: each key is in the mask; an empty value removes the label.
pub fn label_update(digest: &str, labels: &[(String, String)]) -> UpdateRequest {
    let mut info = Info { digest: digest.to_string(), ..Default::default() };
    let mut paths = Vec::new();
    for (key, value) in labels {
        paths.push(format!("labels.{key}"));
        if !value.is_empty() {
            info.labels.insert(key.clone(), value.clone());
        }
    }
    paths.sort();
    paths.dedup();
    UpdateRequest { info: Some(info), update_mask: Some(FieldMask { paths }) }
}

/// Accepts `algorithm:hex` with the algorithm's length, as containerd's digest package does.
pub fn parse_digest(text: &str) -> Result<String, String> {
    let hint = "expected sha256:<64 lowercase hex digits>";
    let Some((algorithm, hex)) = text.split_once(':') else {
        return Err(format!("invalid digest {text:?}: {hint}"));
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("invalid digest {text:?}: unsupported algorithm {algorithm:?}, {hint}")),
    };
    if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("invalid digest {text:?}: {hint}"));
    }
    Ok(text.to_string())
}

/// Checks `content ls`/`content active` filters before calling.
fn check_filters(filters: &[String]) -> anyhow::Result<()> {
    crate::args::check_filters(filters, "labels.\"a.b\"==v or digest~=^sha256:ab")
}

fn short(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.chars().take(12).collect()
}

/// One blob in `content ls --format json`.
#[derive(Debug, Serialize)]
pub struct BlobRow {
    pub digest: String,
    pub size: i64,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl From<&Info> for BlobRow {
    fn from(info: &Info) -> BlobRow {
        BlobRow {
            digest: info.digest.clone(),
            size: info.size,
            created_at: output::rfc3339(info.created_at.as_ref()),
            updated_at: output::rfc3339(info.updated_at.as_ref()),
            labels: output::sorted(&info.labels),
        }
    }
}

/// One ingest in `content active --format json`.
#[derive(Debug, Serialize)]
pub struct IngestRow {
    #[serde(rename = "ref")]
    pub reference: String,
    pub offset: i64,
    pub total: i64,
    pub expected: String,
    pub started_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<&IngestStatus> for IngestRow {
    fn from(status: &IngestStatus) -> IngestRow {
        IngestRow {
            reference: status.r#ref.clone(),
            offset: status.offset,
            total: status.total,
            expected: status.expected.clone(),
            started_at: output::rfc3339(status.started_at.as_ref()),
            updated_at: output::rfc3339(status.updated_at.as_ref()),
        }
    }
}

/// `content ls` as ctr prints it: DIGEST SIZE AGE LABELS.
pub fn blobs_table(blobs: &[Info], now: SystemTime) -> String {
    let mut table = Table::new(&["DIGEST", "SIZE", "AGE", "LABELS"]);
    for info in blobs {
        let labels = output::labels_inline(&info.labels);
        table.row(vec![
            info.digest.clone(),
            human_size(u64::try_from(info.size).unwrap_or(0)),
            output::age(info.created_at.as_ref(), now),
            if labels.is_empty() { "-".to_string() } else { labels },
        ]);
    }
    table.render()
}

/// `content active`: REF SIZE (offset/total) AGE (since the ingest started).
pub fn ingests_table(statuses: &[IngestStatus], now: SystemTime) -> String {
    let mut table = Table::new(&["REF", "SIZE", "AGE"]);
    for status in statuses {
        let offset = human_size(u64::try_from(status.offset).unwrap_or(0));
        let size = match u64::try_from(status.total) {
            Ok(total) if total > 0 => format!("{offset}/{}", human_size(total)),
            _ => offset,
        };
        table.row(vec![status.r#ref.clone(), size, output::age(status.started_at.as_ref(), now)]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::prost_types::Timestamp;
    use clap::Parser as _;
    use std::time::Duration;

    use crate::args::{Cli, Command as Top};

    const DIGEST: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn content(args: &[&str]) -> Result<Command, clap::Error> {
        let cli = Cli::try_parse_from(["berth", "content"].iter().chain(args.iter()).copied())?;
        match cli.command {
            Top::Content(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn ingest_arguments() {
        let Command::Ingest(args) = content(&[
            "ingest",
            "my-ref",
            "--expected-digest",
            DIGEST,
            "--expected-size",
            "0",
            "--label",
            "a=b",
            "--label",
            "c",
        ])
        .unwrap() else {
            panic!("not ingest")
        };
        assert_eq!(args.reference, "my-ref");
        assert_eq!(args.expected_digest.as_deref(), Some(DIGEST));
        assert_eq!(args.expected_size, Some(0));
        assert_eq!(args.labels, [("a".to_string(), "b".to_string()), ("c".to_string(), "true".to_string())]);
        assert!(args.file.is_none());

        assert!(content(&["ingest"]).is_err(), "REF is required");
        let err = content(&["ingest", "r", "--expected-digest", "sha256:abc"]).unwrap_err();
        assert!(err.to_string().contains("invalid digest"), "{err}");
    }

    #[test]
    fn listing_arguments_and_aliases() {
        let Command::Ls(args) =
            content(&["list", "-q", "--format", "json", "labels.a==b", "digest~=^sha256:e"]).unwrap()
        else {
            panic!("not ls")
        };
        assert!(args.quiet);
        assert_eq!(args.format, Format::Json);
        assert_eq!(args.filters, ["labels.a==b", "digest~=^sha256:e"]);
        assert!(content(&["ls", "--format", "yaml"]).is_err());
        assert!(matches!(content(&["delete", DIGEST]).unwrap(), Command::Rm(_)));
        assert!(content(&["rm"]).is_err(), "rm needs a digest");
        let Command::Label(args) = content(&["label", DIGEST, "a=1", "b="]).unwrap() else { panic!("not label") };
        assert_eq!(args.labels, [("a".to_string(), "1".to_string()), ("b".to_string(), String::new())]);
    }

    #[test]
    fn digests() {
        assert_eq!(parse_digest(DIGEST).unwrap(), DIGEST);
        assert!(parse_digest("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855").is_err());
        assert!(parse_digest(&DIGEST.to_uppercase()).is_err());
        assert!(parse_digest("md5:abc").unwrap_err().contains("unsupported algorithm"));
        assert!(parse_digest(&format!("sha512:{}", "a".repeat(128))).is_ok());
    }

    #[test]
    fn label_update_masks_every_key_and_drops_empty_values() {
        let request =
            label_update(DIGEST, &[("a".into(), "1".into()), ("gone".into(), String::new()), ("a".into(), "1".into())]);
        let info = request.info.unwrap();
        assert_eq!(info.digest, DIGEST);
        assert_eq!(info.labels.len(), 1);
        assert_eq!(info.labels["a"], "1");
        assert_eq!(request.update_mask.unwrap().paths, ["labels.a", "labels.gone"]);
    }

    fn blob(digest: &str, size: i64, created: i64, labels: &[(&str, &str)]) -> Info {
        Info {
            digest: digest.to_string(),
            size,
            created_at: Some(Timestamp { seconds: created, nanos: 0 }),
            updated_at: Some(Timestamp { seconds: created + 1, nanos: 0 }),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn blobs_as_a_table() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        let blobs =
            [blob(DIGEST, 1234, 10_000 - 5, &[("z", "1"), ("a", "2")]), blob("sha256:ab", 0, 10_000 - 7200, &[])];
        let text = blobs_table(&blobs, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let columns: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(columns, ["DIGEST", "SIZE", "AGE", "LABELS"]);
        assert!(lines[1].starts_with(DIGEST));
        assert!(lines[1].ends_with("1.234kB   5 seconds   a=2,z=1"), "{}", lines[1]);
        assert!(lines[2].ends_with("0B        2 hours     -"), "{}", lines[2]);
        // SIZE starts in the same column on every line.
        let column = lines[0].find("SIZE").unwrap();
        assert_eq!(lines[1].find("1.234kB"), Some(column));
        assert_eq!(lines[2].find("0B"), Some(column));
    }

    #[test]
    fn blobs_as_json() {
        let blobs = [blob(DIGEST, 3, 0, &[("k", "v")])];
        let text = output::json(&blobs.iter().map(BlobRow::from).collect::<Vec<_>>()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{
                "digest": DIGEST,
                "size": 3,
                "created_at": "1970-01-01T00:00:00Z",
                "updated_at": "1970-01-01T00:00:01Z",
                "labels": {"k": "v"},
            }])
        );
    }

    #[test]
    fn ingests_as_a_table_and_json() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let statuses = [
            IngestStatus {
                r#ref: "layer-1".into(),
                offset: 1 << 20,
                total: 10 << 20,
                started_at: Some(Timestamp { seconds: 1000 - 30, nanos: 0 }),
                ..Default::default()
            },
            IngestStatus { r#ref: "unknown-size".into(), offset: 12, ..Default::default() },
        ];
        let text = ingests_table(&statuses, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["REF", "SIZE", "AGE"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["layer-1", "1.049MB/10.49MB", "30", "seconds"]);
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["unknown-size", "12B", "-"]);

        let text = output::json(&statuses.iter().map(IngestRow::from).collect::<Vec<_>>()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value[0]["ref"], "layer-1");
        assert_eq!(value[0]["offset"], 1 << 20);
        assert_eq!(value[0]["total"], 10 << 20);
        assert_eq!(value[0]["started_at"], "1970-01-01T00:16:10Z");
        assert_eq!(value[1]["started_at"], serde_json::Value::Null);
    }

    #[test]
    fn bad_filters_fail_before_calling() {
        assert!(check_filters(&["labels.a==b".to_string()]).is_ok());
        let err = check_filters(&["labels.a==".to_string(), "==".to_string()]).unwrap_err();
        assert!(err.to_string().contains("filter"), "{err}");
    }
}
