//! The global command line (`berth [--address SOCK] [-n NS] [--timeout DUR] COMMAND`) and the
//! small value parsers commands share (durations, labels).

use std::time::Duration;

use berth_core::connect::Address;
use clap::{Parser, Subcommand};

use crate::commands::{containers, content, events, leases, namespaces, snapshots, version};

/// Where berthd's gateway listens unless told otherwise.
pub const DEFAULT_ADDRESS: &str = "/run/berth/berth.sock";

/// Namespace used when neither `-n` nor the environment names one.
pub const DEFAULT_NAMESPACE: &str = berth_core::namespace::DEFAULT;

#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "Command line client for berth (and any containerd v1 API server)")]
pub struct Cli {
    /// Address of berth's socket: /path, unix:///path or host:port
    #[arg(
        short = 'a',
        long,
        env = "BERTH_ADDRESS",
        default_value = DEFAULT_ADDRESS,
        value_parser = parse_address,
        global = true
    )]
    pub address: Address,

    /// Namespace to work in [env: BERTH_NAMESPACE, then CONTAINERD_NAMESPACE] [default: default]
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,

    /// Give up on the whole command after this long, e.g. 30s, 1m30s, 500ms (0 = never)
    #[arg(long, value_parser = parse_duration, global = true)]
    pub timeout: Option<Duration>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the client's and the server's versions
    Version(version::Args),
    /// Manage blobs and ingests in the content store
    #[command(subcommand)]
    Content(content::Command),
    /// Manage namespaces
    #[command(subcommand, visible_aliases = ["namespace", "ns"])]
    Namespaces(namespaces::Command),
    /// Manage container records
    #[command(subcommand, visible_aliases = ["container", "c"])]
    Containers(containers::Command),
    /// Manage snapshots, and make or apply layers from them
    #[command(visible_aliases = ["snapshot", "sn"])]
    Snapshots(snapshots::Group),
    /// Manage leases, which keep content and snapshots from garbage collection
    #[command(subcommand, visible_alias = "lease")]
    Leases(leases::Command),
    /// Print events as they happen, until interrupted (Ctrl-C)
    #[command(visible_alias = "event")]
    Events(events::Args),
    /// Run a container from an image: pull if needed, create, start, wait (like `ctr run`)
    Run(crate::commands::run::Args),
    /// Manage tasks, the running processes of containers
    #[command(subcommand, visible_aliases = ["task", "t"])]
    Tasks(crate::commands::tasks::Command),
    /// Pull, list, check, tag, inspect and remove images
    #[command(subcommand, visible_aliases = ["image", "i"])]
    Images(crate::commands::images::Command),
}

/// The namespace a command runs in: `-n`, else $BERTH_NAMESPACE, else $CONTAINERD_NAMESPACE,
/// else `default`. Empty values count as unset, as they do for ctr.
pub fn resolve_namespace(flag: Option<String>, env: impl Fn(&str) -> Option<String>) -> String {
    flag.filter(|value| !value.is_empty())
        .or_else(|| env("BERTH_NAMESPACE").filter(|value| !value.is_empty()))
        .or_else(|| env("CONTAINERD_NAMESPACE").filter(|value| !value.is_empty()))
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string())
}

fn parse_address(text: &str) -> Result<Address, String> {
    Address::parse(text)
}

/// Parses a duration the way Go (and so ctr) writes them: `300ms`, `1.5h`, `2h45m`, `10s`.
/// `0` alone means zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration: use e.g. 30s, 1m30s or 500ms".to_string());
    }
    let mut rest = text;
    let mut nanos = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| {
            format!("invalid duration {text:?}: expected a number at {rest:?} (use e.g. 30s, 1m30s, 500ms)")
        })?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit after {number} (use ns, us, ms, s, m or h)"
                ));
            }
            other => {
                return Err(format!("invalid duration {text:?}: unknown unit {other:?} (use ns, us, ms, s, m or h)"));
            }
        };
        nanos += value * scale;
        rest = after;
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(format!("invalid duration {text:?}: too long"));
    }
    Ok(Duration::from_nanos(nanos as u64))
}

/// Parses one `key=value` label argument. As with ctr, `key` alone means `key=true` and `key=`
/// is an empty value (which `content label` uses to remove the label).
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').unwrap_or((text, "true"));
    if key.is_empty() {
        return Err(format!("label {text:?}: key must not be empty (write key=value)"));
    }
    berth_core::labels::validate_one(key, value).map_err(|status| status.message().to_string())?;
    Ok((key.to_string(), value.to_string()))
}

/// Fails early, with the position, on filters the server would reject anyway; `example` shows
/// what this command's filters look like.
pub fn check_filters(filters: &[String], example: &str) -> anyhow::Result<()> {
    berth_core::filters::AnyOf::parse(filters)
        .map(|_| ())
        .map_err(|err| anyhow::anyhow!("{err} (filters look like {example})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::PathBuf;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("berth").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_before_and_after_the_command() {
        let cli = parse(&["--address", "/tmp/x.sock", "-n", "ns1", "--timeout", "2s", "version"]).unwrap();
        assert_eq!(cli.address, Address::Unix(PathBuf::from("/tmp/x.sock")));
        assert_eq!(cli.namespace.as_deref(), Some("ns1"));
        assert_eq!(cli.timeout, Some(Duration::from_secs(2)));

        let cli = parse(&["content", "ls", "--namespace", "ns2", "-a", "unix:///tmp/y.sock"]).unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("ns2"));
        assert_eq!(cli.address, Address::Unix(PathBuf::from("/tmp/y.sock")));
    }

    #[test]
    fn address_defaults_to_the_run_socket() {
        // BERTH_ADDRESS is not set in the test environment; if it were, clap would use it.
        if std::env::var_os("BERTH_ADDRESS").is_none() {
            let cli = parse(&["version"]).unwrap();
            assert_eq!(cli.address, Address::Unix(PathBuf::from(DEFAULT_ADDRESS)));
        }
    }

    #[test]
    fn bad_address_is_a_usage_error() {
        let err = parse(&["--address", "nonsense", "version"]).unwrap_err();
        assert!(err.to_string().contains("neither a unix socket path"), "{err}");
    }

    #[test]
    fn namespace_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
        };
        assert_eq!(resolve_namespace(None, env(&[])), "default");
        assert_eq!(resolve_namespace(None, env(&[("CONTAINERD_NAMESPACE", "k8s.io")])), "k8s.io");
        assert_eq!(resolve_namespace(None, env(&[("CONTAINERD_NAMESPACE", "k8s.io"), ("BERTH_NAMESPACE", "b")])), "b");
        assert_eq!(resolve_namespace(Some("flag".into()), env(&[("BERTH_NAMESPACE", "b")])), "flag");
        assert_eq!(resolve_namespace(None, env(&[("BERTH_NAMESPACE", ""), ("CONTAINERD_NAMESPACE", "c")])), "c");
        assert_eq!(resolve_namespace(Some(String::new()), env(&[])), "default");
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2h45m").unwrap(), Duration::from_secs(2 * 3600 + 45 * 60));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn labels_like_ctr() {
        assert_eq!(parse_label("a=b").unwrap(), ("a".into(), "b".into()));
        assert_eq!(parse_label("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_label("a=").unwrap(), ("a".into(), String::new()));
        assert_eq!(parse_label("flag").unwrap(), ("flag".into(), "true".into()));
        assert!(parse_label("=v").unwrap_err().contains("key must not be empty"));
        assert!(parse_label(&format!("k={}", "v".repeat(4096))).unwrap_err().contains("greater than maximum size"));
    }

    #[test]
    fn command_group_aliases_like_ctr() {
        for (alias, group) in [
            ("ns", "namespaces"),
            ("namespace", "namespaces"),
            ("c", "containers"),
            ("container", "containers"),
            ("lease", "leases"),
            ("snapshot", "snapshots"),
            ("sn", "snapshots"),
        ] {
            let cli = parse(&[alias, "ls"]).unwrap_or_else(|err| panic!("{alias}: {err}"));
            let parsed = format!("{:?}", cli.command);
            assert!(parsed.to_lowercase().starts_with(group), "{alias} parsed as {parsed}");
        }
        assert!(matches!(parse(&["event"]).unwrap().command, Command::Events(_)));
    }

    #[test]
    fn filters_are_checked_with_a_hint() {
        assert!(check_filters(&["labels.a==b".to_string()], "x").is_ok());
        let err = check_filters(&["labels.a==".to_string()], "labels.app==web").unwrap_err().to_string();
        assert!(err.ends_with("(filters look like labels.app==web)"), "{err}");
    }
}
