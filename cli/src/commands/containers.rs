//! `berth containers ...`: container records (containerd.services.containers.v1).
//!
//! A container here is only its record: image, runtime, snapshot and OCI spec. Starting it is
//! the job of tasks.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use berth_api::containerd::services::containers::v1::container::Runtime;
use berth_api::containerd::services::containers::v1::{
    Container, CreateContainerRequest, DeleteContainerRequest, GetContainerRequest, ListContainersRequest,
    UpdateContainerRequest,
};
use berth_api::containerd::services::snapshots::v1::RemoveSnapshotRequest;
use clap::Subcommand;
use serde::Serialize;
use serde_json::Value;

use crate::args::{check_filters, parse_label};
use crate::client::Client;
use crate::commands::{label_changes, remove_each};
use crate::errors::Subject;
use crate::output::{self, Format, Table};
use crate::spec;

/// What containerd's clients use when nothing else is said.
pub const DEFAULT_RUNTIME: &str = "io.containerd.runc.v2";
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

const FILTER_EXAMPLE: &str = "labels.app==web, image~=nginx or runtime.name==io.containerd.runc.v2,id==web";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a container record for IMAGE under ID (no snapshot is prepared, nothing is started)
    Create(CreateArgs),
    /// List containers, optionally only those matching containerd filters
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Print a container's record as JSON, with its spec decoded
    Info(InfoArgs),
    /// Set labels on a container (k=v), or remove them (k=); prints the resulting labels
    Label(LabelArgs),
    /// Remove containers and their snapshots; prints each ID removed
    #[command(visible_aliases = ["delete", "del", "remove"])]
    Rm(RmArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Label, key=value (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Runtime that will run the container
    #[arg(long, default_value = DEFAULT_RUNTIME)]
    pub runtime: String,
    /// Snapshotter holding the container's root filesystem
    #[arg(long, default_value = DEFAULT_SNAPSHOTTER)]
    pub snapshotter: String,
    /// Key of the container's snapshot (none by default: no snapshot is prepared)
    #[arg(long)]
    pub snapshot_key: Option<String>,
    /// OCI runtime spec (JSON) to store, from FILE or `-` for standard input [default: a minimal
    /// spec with containerd's defaults]
    #[arg(long, value_name = "FILE|-", conflicts_with = "args")]
    pub spec: Option<PathBuf>,
    /// Image the container runs, e.g. docker.io/library/busybox:latest
    pub image: String,
    /// Container ID
    pub id: String,
    /// Process to put in the default spec, e.g. sh -c 'echo hi'
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print only IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// containerd filters, e.g. labels.app==web or image~=nginx (any of them may match)
    pub filters: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    pub id: String,
    /// Print only the spec
    #[arg(long)]
    pub spec: bool,
}

#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    pub id: String,
    /// key=value to set, key= to remove
    #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Keep the containers' snapshots (by default they are removed with the records)
    #[arg(long)]
    pub keep_snapshot: bool,
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create(args) => create(client, args).await,
        Command::Ls(args) => ls(client, args).await,
        Command::Info(args) => info(client, args).await,
        Command::Label(args) => label(client, args).await,
        Command::Rm(args) => rm(client, args).await,
    }
}

async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    check_id(&args.id)?;
    let spec = match &args.spec {
        None => spec::default_spec(client.namespace(), &args.id, &args.args),
        Some(path) => read_spec(path)?,
    };
    let container = record(&args, spec::to_any(&spec)?);
    client
        .containers()
        .create(CreateContainerRequest { container: Some(container) })
        .await
        .map_err(|status| client.explain(status, Subject::Container(&args.id)))?;
    Ok(())
}

/// The record `create` sends for `args` with `spec`.
pub fn record(args: &CreateArgs, spec: berth_api::prost_types::Any) -> Container {
    Container {
        id: args.id.clone(),
        labels: args.labels.iter().cloned().collect(),
        image: args.image.clone(),
        runtime: Some(Runtime { name: args.runtime.clone(), options: None }),
        spec: Some(spec),
        snapshotter: args.snapshotter.clone(),
        snapshot_key: args.snapshot_key.clone().unwrap_or_default(),
        ..Default::default()
    }
}

fn read_spec(path: &std::path::Path) -> anyhow::Result<Value> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes).context("cannot read the spec from standard input")?;
        spec::parse(&bytes, "the spec on standard input")
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read the spec {}", path.display()))?;
        spec::parse(&bytes, &path.display().to_string())
    }
}

async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<()> {
    check_filters(&args.filters, FILTER_EXAMPLE)?;
    let mut containers = list(client, args.filters).await?;
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    let text = match (args.quiet, args.format) {
        (true, _) => containers.iter().map(|container| format!("{}\n", container.id)).collect(),
        (false, Format::Table) => containers_table(&containers),
        (false, Format::Json) => output::json(&containers.iter().map(ContainerRow::from).collect::<Vec<_>>())?,
    };
    output::print(&text)?;
    Ok(())
}

/// Lists through ListStream (no message size limit on the whole list), falling back to List
/// for servers without it, as containerd's client does.
async fn list(client: &Client, filters: Vec<String>) -> anyhow::Result<Vec<Container>> {
    let explain = |status| client.explain(status, Subject::Server);
    let mut containers = client.containers();
    let request = ListContainersRequest { filters };
    match containers.list_stream(request.clone()).await {
        Ok(response) => {
            let mut stream = response.into_inner();
            let mut found = Vec::new();
            while let Some(message) = stream.message().await.map_err(explain)? {
                found.extend(message.container);
            }
            Ok(found)
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            Ok(containers.list(request).await.map_err(explain)?.into_inner().containers)
        }
        Err(status) => Err(explain(status)),
    }
}

async fn info(client: &Client, args: InfoArgs) -> anyhow::Result<()> {
    check_id(&args.id)?;
    let container = client
        .containers()
        .get(GetContainerRequest { id: args.id.clone() })
        .await
        .map_err(|status| client.explain(status, Subject::Container(&args.id)))?
        .into_inner()
        .container
        .with_context(|| format!("berth answered without the record of container {}", args.id))?;
    let text = if args.spec {
        output::json(&container.spec.as_ref().map(spec::decode))?
    } else {
        output::json(&ContainerInfo::from(&container))?
    };
    output::print(&text)?;
    Ok(())
}

async fn label(client: &Client, args: LabelArgs) -> anyhow::Result<()> {
    check_id(&args.id)?;
    let explain = |status| client.explain(status, Subject::Container(&args.id));
    let mut containers = client.containers();
    let container = if args.labels.is_empty() {
        // Nothing to change: show what is there.
        containers.get(GetContainerRequest { id: args.id.clone() }).await.map_err(explain)?.into_inner().container
    } else {
        containers.update(label_update(&args.id, &args.labels)).await.map_err(explain)?.into_inner().container
    };
    let labels = container.map(|container| container.labels).unwrap_or_default();
    output::print(&format!("{}\n", output::labels_inline(&labels)))?;
    Ok(())
}

/// The Update that applies `labels` to container `id`, masked key by key as ctr does.
pub fn label_update(id: &str, labels: &[(String, String)]) -> UpdateContainerRequest {
    let (labels, mask) = label_changes(labels);
    UpdateContainerRequest {
        container: Some(Container { id: id.to_string(), labels, ..Default::default() }),
        update_mask: Some(mask),
    }
}

async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<()> {
    let containers = client.containers();
    let keep_snapshot = args.keep_snapshot;
    remove_each("containers", &args.ids, |id| {
        let mut containers = containers.clone();
        async move {
            check_id(&id)?;
            let explain = |status| client.explain(status, Subject::Container(&id));
            // The record names the snapshot; read it before it is gone.
            let container = containers
                .get(GetContainerRequest { id: id.clone() })
                .await
                .map_err(explain)?
                .into_inner()
                .container
                .unwrap_or_default();
            containers.delete(DeleteContainerRequest { id: id.clone() }).await.map_err(explain)?;
            if !keep_snapshot {
                remove_snapshot(client, &id, &container).await?;
            }
            Ok(())
        }
    })
    .await
}

/// Removes the snapshot container `id`'s record named, as ctr's snapshot cleanup does; one
/// that is already gone is fine.
async fn remove_snapshot(client: &Client, id: &str, container: &Container) -> anyhow::Result<()> {
    let Some(request) = snapshot_cleanup(container) else { return Ok(()) };
    match client.snapshots().remove(request).await {
        Err(status) if status.code() != tonic::Code::NotFound => {
            let subject = Subject::Snapshot { key: &container.snapshot_key, snapshotter: &container.snapshotter };
            Err(client.explain(status, subject))
                .with_context(|| format!("container {id} was removed but its snapshot was not"))
        }
        _ => Ok(()),
    }
}

/// The Remove that cleans up `container`'s snapshot, if it names one.
fn snapshot_cleanup(container: &Container) -> Option<RemoveSnapshotRequest> {
    if container.snapshot_key.is_empty() || container.snapshotter.is_empty() {
        return None;
    }
    Some(RemoveSnapshotRequest { snapshotter: container.snapshotter.clone(), key: container.snapshot_key.clone() })
}

fn check_id(id: &str) -> anyhow::Result<()> {
    berth_core::identifiers::validate("container id", id).map_err(|status| anyhow::anyhow!("{}", status.message()))
}

/// `containers ls` as ctr prints it: CONTAINER IMAGE RUNTIME.
pub fn containers_table(containers: &[Container]) -> String {
    let mut table = Table::new(&["CONTAINER", "IMAGE", "RUNTIME"]);
    for container in containers {
        let image = if container.image.is_empty() { "-".to_string() } else { container.image.clone() };
        let runtime = container.runtime.as_ref().map(|runtime| runtime.name.clone()).unwrap_or_default();
        table.row(vec![container.id.clone(), image, runtime]);
    }
    table.render()
}

/// One container in `containers ls --format json`.
#[derive(Debug, Serialize)]
pub struct ContainerRow {
    pub id: String,
    pub image: String,
    pub runtime: String,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub labels: BTreeMap<String, String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<&Container> for ContainerRow {
    fn from(container: &Container) -> ContainerRow {
        ContainerRow {
            id: container.id.clone(),
            image: container.image.clone(),
            runtime: container.runtime.as_ref().map(|runtime| runtime.name.clone()).unwrap_or_default(),
            snapshotter: container.snapshotter.clone(),
            snapshot_key: container.snapshot_key.clone(),
            labels: output::sorted(&container.labels),
            created_at: output::rfc3339(container.created_at.as_ref()),
            updated_at: output::rfc3339(container.updated_at.as_ref()),
        }
    }
}

/// `containers info`: the record with ctr's field names (those of containerd's Go
/// `containers.Container`), so that scripts written against ctr keep working.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInfo {
    #[serde(rename = "ID")]
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub image: String,
    pub runtime: RuntimeInfo,
    pub snapshot_key: String,
    pub snapshotter: String,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    pub extensions: BTreeMap<String, Value>,
    #[serde(rename = "SandboxID", skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    /// Last, as ctr prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuntimeInfo {
    pub name: String,
    pub options: Option<Value>,
}

impl From<&Container> for ContainerInfo {
    fn from(container: &Container) -> ContainerInfo {
        let runtime = container.runtime.as_ref();
        ContainerInfo {
            id: container.id.clone(),
            labels: output::sorted(&container.labels),
            image: container.image.clone(),
            runtime: RuntimeInfo {
                name: runtime.map(|runtime| runtime.name.clone()).unwrap_or_default(),
                options: runtime.and_then(|runtime| runtime.options.as_ref()).map(output::any_json),
            },
            snapshot_key: container.snapshot_key.clone(),
            snapshotter: container.snapshotter.clone(),
            created_at: output::rfc3339(container.created_at.as_ref()),
            updated_at: output::rfc3339(container.updated_at.as_ref()),
            extensions: container.extensions.iter().map(|(key, any)| (key.clone(), output::any_json(any))).collect(),
            sandbox: container.sandbox.clone(),
            spec: container.spec.as_ref().map(spec::decode),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::prost_types::{Any, Timestamp};
    use clap::Parser as _;

    use crate::args::{Cli, Command as Top};

    fn containers(args: &[&str]) -> Result<Command, clap::Error> {
        let cli = Cli::try_parse_from(["berth", "c"].iter().chain(args.iter()).copied())?;
        match cli.command {
            Top::Containers(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        match containers(&[&["create"], args].concat()).unwrap() {
            Command::Create(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn create_defaults_like_containerd() {
        let args = create_args(&["docker.io/library/busybox:latest", "web"]);
        assert_eq!(args.image, "docker.io/library/busybox:latest");
        assert_eq!(args.id, "web");
        assert_eq!(args.runtime, "io.containerd.runc.v2");
        assert_eq!(args.snapshotter, "overlayfs");
        assert_eq!(args.snapshot_key, None);
        assert!(args.spec.is_none() && args.args.is_empty() && args.labels.is_empty());
        assert!(containers(&["create", "image-only"]).is_err(), "ID is required");
    }

    #[test]
    fn create_with_everything() {
        let args = create_args(&[
            "--label",
            "app=web",
            "--runtime",
            "io.containerd.runsc.v1",
            "--snapshotter",
            "native",
            "--snapshot-key",
            "web-snap",
            "img",
            "web",
            "sh",
            "-c",
            "echo hi",
        ]);
        assert_eq!(args.labels, [("app".to_string(), "web".to_string())]);
        assert_eq!(args.runtime, "io.containerd.runsc.v1");
        assert_eq!(args.args, ["sh", "-c", "echo hi"], "flags after the command belong to it");

        let record = record(&args, spec::to_any(&spec::default_spec("ns", "web", &args.args)).unwrap());
        assert_eq!(record.id, "web");
        assert_eq!(record.image, "img");
        assert_eq!(record.labels["app"], "web");
        assert_eq!(record.runtime.unwrap().name, "io.containerd.runsc.v1");
        assert_eq!(record.snapshotter, "native");
        assert_eq!(record.snapshot_key, "web-snap");
        let spec = record.spec.unwrap();
        assert_eq!(spec.type_url, "types.containerd.io/opencontainers/runtime-spec/1/Spec");
        let decoded: Value = serde_json::from_slice(&spec.value).unwrap();
        assert_eq!(decoded["process"]["args"][2], "echo hi");
    }

    #[test]
    fn flags_after_the_id_are_flags_until_the_command_starts() {
        let args = create_args(&["img", "web", "--label", "a=b", "sh", "-c", "--label"]);
        assert_eq!(args.labels, [("a".to_string(), "b".to_string())]);
        assert_eq!(args.args, ["sh", "-c", "--label"]);
    }

    #[test]
    fn a_spec_file_and_a_command_do_not_mix() {
        let args = create_args(&["--spec", "-", "img", "web"]);
        assert_eq!(args.spec.as_deref(), Some(std::path::Path::new("-")));
        let err = containers(&["create", "--spec", "spec.json", "img", "web", "sh"]).unwrap_err();
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }

    #[test]
    fn other_arguments() {
        let Command::Ls(args) = containers(&["ls", "-q", "labels.app==db", "image~=nginx"]).unwrap() else {
            panic!("not ls")
        };
        assert!(args.quiet);
        assert_eq!(args.filters, ["labels.app==db", "image~=nginx"]);
        let Command::Info(args) = containers(&["info", "--spec", "web"]).unwrap() else { panic!("not info") };
        assert!(args.spec);
        let Command::Label(args) = containers(&["label", "web", "tier=front", "old="]).unwrap() else {
            panic!("not label")
        };
        assert_eq!(args.labels, [("tier".into(), "front".into()), ("old".into(), String::new())]);
        assert!(matches!(containers(&["delete", "a", "b"]).unwrap(), Command::Rm(args) if args.ids == ["a", "b"]));
        assert!(containers(&["rm"]).is_err());
        let Command::Rm(args) = containers(&["rm", "--keep-snapshot", "a"]).unwrap() else { panic!("not rm") };
        assert!(args.keep_snapshot && args.ids == ["a"]);
    }

    #[test]
    fn rm_cleans_up_the_snapshot_the_record_names() {
        let request = snapshot_cleanup(&container("web", "nginx")).unwrap();
        assert_eq!((request.snapshotter.as_str(), request.key.as_str()), ("overlayfs", "web"));
        let bare = Container { id: "bare".into(), snapshotter: "overlayfs".into(), ..Default::default() };
        assert!(snapshot_cleanup(&bare).is_none(), "no snapshot key, nothing to remove");
    }

    #[test]
    fn label_update_masks_each_key() {
        let request = label_update("web", &[("tier".into(), "front".into()), ("app".into(), String::new())]);
        let container = request.container.unwrap();
        assert_eq!(container.id, "web");
        assert_eq!(container.labels.len(), 1);
        assert_eq!(request.update_mask.unwrap().paths, ["labels.app", "labels.tier"]);
    }

    fn container(id: &str, image: &str) -> Container {
        Container {
            id: id.to_string(),
            image: image.to_string(),
            labels: [("app".to_string(), id.to_string())].into(),
            runtime: Some(Runtime { name: DEFAULT_RUNTIME.to_string(), options: None }),
            spec: Some(spec::to_any(&serde_json::json!({"ociVersion": "1.0.2", "process": {"args": ["sh"]}})).unwrap()),
            snapshotter: "overlayfs".to_string(),
            snapshot_key: id.to_string(),
            created_at: Some(Timestamp { seconds: 0, nanos: 0 }),
            updated_at: Some(Timestamp { seconds: 1, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn table_like_ctr() {
        let text = containers_table(&[container("db", "docker.io/library/postgres:16"), container("web", "")]);
        assert_eq!(
            text,
            "CONTAINER   IMAGE                           RUNTIME\n\
             db          docker.io/library/postgres:16   io.containerd.runc.v2\n\
             web         -                               io.containerd.runc.v2\n"
        );
    }

    #[test]
    fn info_uses_ctr_names_and_decodes_the_spec() {
        let mut record = container("web", "nginx");
        record.extensions.insert("ext".into(), Any { type_url: "t".into(), value: b"x".to_vec() });
        let text = output::json(&ContainerInfo::from(&record)).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["ID"], "web");
        assert_eq!(value["Image"], "nginx");
        assert_eq!(value["Labels"]["app"], "web");
        assert_eq!(value["Runtime"], serde_json::json!({"Name": DEFAULT_RUNTIME, "Options": null}));
        assert_eq!(value["Spec"]["process"]["args"][0], "sh");
        assert_eq!(value["SnapshotKey"], "web");
        assert_eq!(value["Snapshotter"], "overlayfs");
        assert_eq!(value["CreatedAt"], "1970-01-01T00:00:00Z");
        assert_eq!(value["Extensions"]["ext"], serde_json::json!({"type_url": "t", "value": "eA=="}));
        assert!(value.get("SandboxID").is_none());
        // Field order follows ctr's.
        assert!(text.find("\"ID\"").unwrap() < text.find("\"Labels\"").unwrap());
        assert!(text.find("\"Extensions\"").unwrap() < text.find("\"Spec\"").unwrap());
    }

    #[test]
    fn ls_json_rows() {
        let text = output::json(&[ContainerRow::from(&container("web", "nginx"))]).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{
                "id": "web",
                "image": "nginx",
                "runtime": DEFAULT_RUNTIME,
                "snapshotter": "overlayfs",
                "snapshot_key": "web",
                "labels": {"app": "web"},
                "created_at": "1970-01-01T00:00:00Z",
                "updated_at": "1970-01-01T00:00:01Z",
            }])
        );
    }
}
