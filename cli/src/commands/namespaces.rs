//! `berth namespaces ...`: create, list, label and remove namespaces
//! (containerd.services.namespaces.v1).
//!
//! These commands name the namespace they act on as an argument; `-n` does not matter to them.

use std::collections::BTreeMap;

use berth_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest, Namespace,
    UpdateNamespaceRequest,
};
use clap::Subcommand;
use serde::Serialize;

use crate::args::parse_label;
use crate::client::Client;
use crate::commands::{label_changes, remove_each};
use crate::errors::Subject;
use crate::output::{self, Format, Table};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a namespace, with optional labels
    Create(CreateArgs),
    /// List namespaces
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Set labels on a namespace (k=v), or remove them (k=); prints the resulting labels
    Label(LabelArgs),
    /// Remove namespaces (they must be empty); prints each name removed
    #[command(visible_aliases = ["delete", "del", "remove"])]
    Rm(RmArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    /// Labels, key=value
    #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print only names
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    pub name: String,
    /// key=value to set, key= to remove
    #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create(args) => create(client, args).await,
        Command::Ls(args) => ls(client, args).await,
        Command::Label(args) => label(client, args).await,
        Command::Rm(args) => rm(client, args).await,
    }
}

async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let namespace = Namespace { name: args.name.clone(), labels: args.labels.into_iter().collect() };
    client
        .namespaces()
        .create(CreateNamespaceRequest { namespace: Some(namespace) })
        .await
        .map_err(|status| client.explain(status, Subject::Namespace(&args.name)))?;
    Ok(())
}

async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<()> {
    let mut namespaces = client
        .namespaces()
        .list(ListNamespacesRequest { filter: String::new() })
        .await
        .map_err(|status| client.explain(status, Subject::Server))?
        .into_inner()
        .namespaces;
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    let text = match (args.quiet, args.format) {
        (true, _) => namespaces.iter().map(|namespace| format!("{}\n", namespace.name)).collect(),
        (false, Format::Table) => namespaces_table(&namespaces),
        (false, Format::Json) => output::json(&namespaces.iter().map(NamespaceRow::from).collect::<Vec<_>>())?,
    };
    output::print(&text)?;
    Ok(())
}

async fn label(client: &Client, args: LabelArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let explain = |status| client.explain(status, Subject::Namespace(&args.name));
    let mut namespaces = client.namespaces();
    let namespace = if args.labels.is_empty() {
        // Nothing to change: show what is there.
        namespaces.get(GetNamespaceRequest { name: args.name.clone() }).await.map_err(explain)?.into_inner().namespace
    } else {
        namespaces.update(label_update(&args.name, &args.labels)).await.map_err(explain)?.into_inner().namespace
    };
    let labels = namespace.map(|namespace| namespace.labels).unwrap_or_default();
    output::print(&format!("{}\n", output::labels_inline(&labels)))?;
    Ok(())
}

/// The Update that applies `labels` to namespace `name`, masked key by key as ctr does.
pub fn label_update(name: &str, labels: &[(String, String)]) -> UpdateNamespaceRequest {
    let (labels, mask) = label_changes(labels);
    UpdateNamespaceRequest { namespace: Some(Namespace { name: name.to_string(), labels }), update_mask: Some(mask) }
}

async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<()> {
    let namespaces = client.namespaces();
    remove_each("namespaces", &args.names, |name| {
        let mut namespaces = namespaces.clone();
        async move {
            check_name(&name)?;
            namespaces
                .delete(DeleteNamespaceRequest { name: name.clone() })
                .await
                .map_err(|status| client.explain(status, Subject::Namespace(&name)))?;
            Ok(())
        }
    })
    .await
}

/// Refuses names the server would refuse, before calling it.
fn check_name(name: &str) -> anyhow::Result<()> {
    berth_core::identifiers::validate("namespace", name).map_err(|status| anyhow::anyhow!("{}", status.message()))
}

/// One namespace in `namespaces ls --format json`.
#[derive(Debug, Serialize)]
pub struct NamespaceRow {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl From<&Namespace> for NamespaceRow {
    fn from(namespace: &Namespace) -> NamespaceRow {
        NamespaceRow { name: namespace.name.clone(), labels: output::sorted(&namespace.labels) }
    }
}

/// `namespaces ls` as ctr prints it: NAME LABELS.
pub fn namespaces_table(namespaces: &[Namespace]) -> String {
    let mut table = Table::new(&["NAME", "LABELS"]);
    for namespace in namespaces {
        table.row(vec![namespace.name.clone(), output::labels_inline(&namespace.labels)]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    use crate::args::{Cli, Command as Top};

    fn namespaces(args: &[&str]) -> Result<Command, clap::Error> {
        let cli = Cli::try_parse_from(["berth", "ns"].iter().chain(args.iter()).copied())?;
        match cli.command {
            Top::Namespaces(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            name: name.to_string(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn arguments() {
        let Command::Create(args) = namespaces(&["create", "team-a", "owner=alice", "flag"]).unwrap() else {
            panic!("not create")
        };
        assert_eq!(args.name, "team-a");
        assert_eq!(args.labels, [("owner".into(), "alice".into()), ("flag".into(), "true".into())]);
        assert!(namespaces(&["create"]).is_err(), "NAME is required");

        let Command::Ls(args) = namespaces(&["list", "-q"]).unwrap() else { panic!("not ls") };
        assert!(args.quiet);
        let Command::Ls(args) = namespaces(&["ls", "--format", "json"]).unwrap() else { panic!("not ls") };
        assert_eq!(args.format, Format::Json);

        let Command::Rm(args) = namespaces(&["remove", "a", "b"]).unwrap() else { panic!("not rm") };
        assert_eq!(args.names, ["a", "b"]);
        assert!(namespaces(&["rm"]).is_err(), "rm needs a name");
    }

    #[test]
    fn label_update_masks_each_key() {
        let request = label_update("team-a", &[("tier".into(), "gold".into()), ("owner".into(), String::new())]);
        let namespace = request.namespace.unwrap();
        assert_eq!(namespace.name, "team-a");
        assert_eq!(namespace.labels.len(), 1);
        assert_eq!(namespace.labels["tier"], "gold");
        assert_eq!(request.update_mask.unwrap().paths, ["labels.owner", "labels.tier"]);
    }

    #[test]
    fn names_are_checked_locally() {
        assert!(check_name("team-a").is_ok());
        let err = check_name("bad/name").unwrap_err().to_string();
        assert!(err.contains("bad/name"), "{err}");
    }

    #[test]
    fn table_and_json() {
        let list = [namespace("default", &[]), namespace("team-a", &[("z", "1"), ("a", "2")])];
        assert_eq!(namespaces_table(&list), "NAME      LABELS\ndefault\nteam-a    a=2,z=1\n");
        let text = output::json(&list.iter().map(NamespaceRow::from).collect::<Vec<_>>()).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{"name": "default", "labels": {}}, {"name": "team-a", "labels": {"a": "2", "z": "1"}}])
        );
    }
}
