//! `berth leases ...`: leases, which keep what they hold from garbage collection
//! (containerd.services.leases.v1).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use berth_api::containerd::services::leases::v1::{CreateRequest, DeleteRequest, Lease, ListRequest};
use berth_api::prost_types::Timestamp;
use clap::Subcommand;
use serde::Serialize;

use crate::args::{check_filters, parse_duration, parse_label};
use crate::client::Client;
use crate::commands::remove_each;
use crate::errors::Subject;
use crate::output::{self, Format, Table};

/// The label containerd's collector reads a lease's expiry from.
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

const FILTER_EXAMPLE: &str = "id==pull-1 or labels.\"containerd.io/gc.expire\"";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a lease; prints its ID
    Create(CreateArgs),
    /// List leases, optionally only those matching containerd filters
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Remove leases; prints each ID removed
    #[command(visible_aliases = ["delete", "del", "remove"])]
    Rm(RmArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Lease ID [default: a random one]
    #[arg(long)]
    pub id: Option<String>,
    /// Expire the lease this long from now, e.g. 1h or 30m (0 = never), as ctr does
    #[arg(short = 'x', long, value_parser = parse_duration, default_value = "24h")]
    pub expires: Duration,
    /// Label, key=value (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// More labels, written as ctr takes them
    #[arg(value_name = "KEY=VALUE", value_parser = parse_label)]
    pub more_labels: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// Print only IDs
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// containerd filters, e.g. id==pull-1 or labels.purpose==test (any of them may match)
    pub filters: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// Wait until the garbage collector has run after each removal
    #[arg(long)]
    pub sync: bool,
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create(args) => create(client, args).await,
        Command::Ls(args) => ls(client, args).await,
        Command::Rm(args) => rm(client, args).await,
    }
}

async fn create(client: &Client, args: CreateArgs) -> anyhow::Result<()> {
    let request = create_request(&args, SystemTime::now(), random_id)?;
    let id = request.id.clone();
    let lease = client
        .leases()
        .create(request)
        .await
        .map_err(|status| client.explain(status, Subject::Lease(&id)))?
        .into_inner()
        .lease;
    output::print(&format!("{}\n", lease.map_or(id, |lease| lease.id)))?;
    Ok(())
}

/// The Create call for `args` at `now`; `random` makes an ID when none is given.
pub fn create_request(
    args: &CreateArgs,
    now: SystemTime,
    random: impl FnOnce(SystemTime) -> String,
) -> anyhow::Result<CreateRequest> {
    let id = args.id.clone().unwrap_or_else(|| random(now));
    berth_core::identifiers::validate("lease id", &id).map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    let mut labels: std::collections::HashMap<String, String> =
        args.labels.iter().chain(&args.more_labels).cloned().collect();
    if !args.expires.is_zero() {
        labels.insert(EXPIRE_LABEL.to_string(), expiry(now, args.expires)?);
    }
    Ok(CreateRequest { id, labels })
}

/// `now + after` in RFC 3339 to the second, the form containerd's `leases.WithExpiration` writes.
pub fn expiry(now: SystemTime, after: Duration) -> anyhow::Result<String> {
    let at = now.checked_add(after).ok_or_else(|| anyhow::anyhow!("--expires {after:?} is too far in the future"))?;
    Ok(output::rfc3339_seconds(Some(&Timestamp::from(at))))
}

/// A fresh lease ID: the clock's nanoseconds and random bits, as containerd's `WithRandomID`
/// makes them, but only from characters every identifier accepts.
pub fn random_id(now: SystemTime) -> String {
    let nanos = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    format!("{nanos}-{:08x}", rand::random::<u32>())
}

async fn ls(client: &Client, args: LsArgs) -> anyhow::Result<()> {
    check_filters(&args.filters, FILTER_EXAMPLE)?;
    let mut leases = client
        .leases()
        .list(ListRequest { filters: args.filters })
        .await
        .map_err(|status| client.explain(status, Subject::Server))?
        .into_inner()
        .leases;
    leases.sort_by(|a, b| a.id.cmp(&b.id));
    let text = match (args.quiet, args.format) {
        (true, _) => leases.iter().map(|lease| format!("{}\n", lease.id)).collect(),
        (false, Format::Table) => leases_table(&leases),
        (false, Format::Json) => output::json(&leases.iter().map(LeaseRow::from).collect::<Vec<_>>())?,
    };
    output::print(&text)?;
    Ok(())
}

async fn rm(client: &Client, args: RmArgs) -> anyhow::Result<()> {
    let leases = client.leases();
    remove_each("leases", &args.ids, |id| {
        let mut leases = leases.clone();
        async move {
            leases
                .delete(DeleteRequest { id: id.clone(), sync: args.sync })
                .await
                .map_err(|status| client.explain(status, Subject::Lease(&id)))?;
            Ok(())
        }
    })
    .await
}

/// `leases ls` as ctr prints it: ID, CREATED AT (RFC 3339), LABELS.
pub fn leases_table(leases: &[Lease]) -> String {
    let mut table = Table::new(&["ID", "CREATED AT", "LABELS"]);
    for lease in leases {
        table.row(vec![
            lease.id.clone(),
            output::rfc3339_seconds(lease.created_at.as_ref()),
            output::labels_inline(&lease.labels),
        ]);
    }
    table.render()
}

/// One lease in `leases ls --format json`.
#[derive(Debug, Serialize)]
pub struct LeaseRow {
    pub id: String,
    pub created_at: Option<String>,
    pub labels: BTreeMap<String, String>,
}

impl From<&Lease> for LeaseRow {
    fn from(lease: &Lease) -> LeaseRow {
        LeaseRow {
            id: lease.id.clone(),
            created_at: output::rfc3339(lease.created_at.as_ref()),
            labels: output::sorted(&lease.labels),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    use crate::args::{Cli, Command as Top};

    fn leases(args: &[&str]) -> Result<Command, clap::Error> {
        let cli = Cli::try_parse_from(["berth", "leases"].iter().chain(args.iter()).copied())?;
        match cli.command {
            Top::Leases(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        match leases(&[&["create"], args].concat()).unwrap() {
            Command::Create(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    const NOW: Duration = Duration::from_secs(1_700_000_000);

    #[test]
    fn create_expires_in_a_day_by_default_like_ctr() {
        let now = SystemTime::UNIX_EPOCH + NOW;
        let args = create_args(&[]);
        assert_eq!(args.expires, Duration::from_secs(24 * 3600));
        let request = create_request(&args, now, |_| "random-1".to_string()).unwrap();
        assert_eq!(request.id, "random-1");
        assert_eq!(request.labels.len(), 1);
        assert_eq!(request.labels[EXPIRE_LABEL], "2023-11-15T22:13:20Z");
    }

    #[test]
    fn create_with_id_expiry_and_labels() {
        let now = SystemTime::UNIX_EPOCH + NOW;
        let args = create_args(&["--id", "pull-1", "--expires", "1h", "--label", "a=1", "purpose=test"]);
        let request = create_request(&args, now, |_| unreachable!("an ID was given")).unwrap();
        assert_eq!(request.id, "pull-1");
        assert_eq!(request.labels["a"], "1");
        assert_eq!(request.labels["purpose"], "test");
        assert_eq!(request.labels[EXPIRE_LABEL], "2023-11-14T23:13:20Z");

        let args = create_args(&["-x", "0"]);
        let request = create_request(&args, now, |_| "r".to_string()).unwrap();
        assert!(request.labels.is_empty(), "0 never expires: {:?}", request.labels);

        let args = create_args(&["--id", "bad id"]);
        assert!(create_request(&args, now, |_| String::new()).unwrap_err().to_string().contains("bad id"));
        assert!(leases(&["create", "--expires", "soon"]).is_err());
    }

    #[test]
    fn random_ids_are_identifiers_and_differ() {
        let now = SystemTime::UNIX_EPOCH + NOW + Duration::from_nanos(123);
        let one = random_id(now);
        assert!(one.starts_with("123-"), "{one}");
        berth_core::identifiers::validate("lease id", &one).unwrap();
        assert_ne!(one, random_id(now));
    }

    #[test]
    fn rm_and_ls_arguments() {
        let Command::Rm(args) = leases(&["rm", "--sync", "a", "b"]).unwrap() else { panic!("not rm") };
        assert!(args.sync);
        assert_eq!(args.ids, ["a", "b"]);
        assert!(leases(&["rm"]).is_err());
        let Command::Ls(args) = leases(&["list", "-q", "id==a"]).unwrap() else { panic!("not ls") };
        assert!(args.quiet);
        assert_eq!(args.filters, ["id==a"]);
    }

    #[test]
    fn table_and_json() {
        let lease = Lease {
            id: "pull-1".into(),
            created_at: Some(Timestamp { seconds: 60, nanos: 5 }),
            labels: [("b".to_string(), "2".to_string()), ("a".to_string(), "1".to_string())].into(),
        };
        let bare = Lease { id: "x".into(), ..Default::default() };
        assert_eq!(
            leases_table(&[lease.clone(), bare]),
            "ID       CREATED AT             LABELS\n\
             pull-1   1970-01-01T00:01:00Z   a=1,b=2\n\
             x        -\n"
        );
        let value: serde_json::Value = serde_json::from_str(&output::json(&[LeaseRow::from(&lease)]).unwrap()).unwrap();
        assert_eq!(value[0]["id"], "pull-1");
        assert_eq!(value[0]["labels"], serde_json::json!({"a": "1", "b": "2"}));
        assert!(value[0]["created_at"].as_str().unwrap().starts_with("1970-01-01T00:01:00"));
    }
}
