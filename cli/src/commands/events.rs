//! `berth events`: follows the event stream (containerd.services.events.v1 Subscribe) and
//! prints one line per event until interrupted.

use berth_api::containerd::services::events::v1::{Envelope, SubscribeRequest};
use serde::Serialize;

use crate::args::check_filters;
use crate::client::Client;
use crate::errors::Subject;
use crate::events::{self, Fields};
use crate::output::{self, Format};

const FILTER_EXAMPLE: &str = "topic~=/containers/, namespace==default or event.id==web";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format: `table` prints TIMESTAMP NAMESPACE TOPIC EVENT, `json` one object per line
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// containerd filters, e.g. topic~=/containers/ or namespace==default (any of them may match)
    pub filters: Vec<String>,
}

/// Runs until SIGINT (Ctrl-C) or SIGTERM, which end it with success, or until the stream fails.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    check_filters(&args.filters, FILTER_EXAMPLE)?;
    // Listen before subscribing, so that an early Ctrl-C also ends the command cleanly.
    let stop = stop_signal()?;
    tokio::select! {
        () = stop => Ok(()),
        result = follow(client, args) => result,
    }
}

async fn follow(client: &Client, args: Args) -> anyhow::Result<()> {
    let explain = |status| client.explain(status, Subject::Server);
    let mut stream =
        client.events().subscribe(SubscribeRequest { filters: args.filters }).await.map_err(explain)?.into_inner();
    let broken = |status| {
        anyhow::anyhow!(
            "lost the event stream from berth at {} ({}); was berthd stopped? check with `berth version`",
            client.address_text(),
            client.explain(status, Subject::Server)
        )
    };
    while let Some(envelope) = stream.message().await.map_err(broken)? {
        output::print(&line(&envelope, args.format))?;
    }
    anyhow::bail!(
        "berth at {} ended the event stream; was berthd stopped? check with `berth version`",
        client.address_text()
    )
}

/// Resolves at the first SIGINT or SIGTERM.
fn stop_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// One envelope as printed: `TIMESTAMP NAMESPACE TOPIC EVENT` (the event as JSON, or its type
/// URL when it is of a type we do not know), or one JSON object.
pub fn line(envelope: &Envelope, format: Format) -> String {
    let event = envelope.event.as_ref().and_then(events::decode);
    let mut text = match format {
        Format::Table => {
            let timestamp = output::rfc3339(envelope.timestamp.as_ref()).unwrap_or_else(|| "-".to_string());
            let namespace = if envelope.namespace.is_empty() { "-" } else { envelope.namespace.as_str() };
            let shown = match (&event, &envelope.event) {
                (Some(fields), _) => fields.to_json(),
                (None, Some(any)) => any.type_url.clone(),
                (None, None) => "-".to_string(),
            };
            format!("{timestamp} {namespace} {} {shown}", envelope.topic)
        }
        Format::Json => {
            let row = EventRow {
                timestamp: output::rfc3339(envelope.timestamp.as_ref()),
                namespace: &envelope.namespace,
                topic: &envelope.topic,
                type_url: envelope.event.as_ref().map(|any| any.type_url.as_str()),
                event,
            };
            // Strings, numbers and string-keyed maps always serialize.
            serde_json::to_string(&row).unwrap_or_default()
        }
    };
    text.push('\n');
    text
}

/// One event in `events --format json`; `event` is null when its type is unknown.
#[derive(Debug, Serialize)]
pub struct EventRow<'a> {
    pub timestamp: Option<String>,
    pub namespace: &'a str,
    pub topic: &'a str,
    #[serde(rename = "type")]
    pub type_url: Option<&'a str>,
    pub event: Option<Fields>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::containerd::events::ContainerDelete;
    use berth_api::prost_types::{Any, Timestamp};
    use clap::Parser as _;
    use prost::{Message as _, Name as _};

    use crate::args::{Cli, Command as Top};

    fn envelope(event: Option<Any>) -> Envelope {
        Envelope {
            timestamp: Some(Timestamp { seconds: 1_700_000_000, nanos: 500_000_000 }),
            namespace: "watched".into(),
            topic: "/containers/delete".into(),
            event,
        }
    }

    fn delete_event() -> Any {
        Any { type_url: ContainerDelete::full_name(), value: ContainerDelete { id: "c1".into() }.encode_to_vec() }
    }

    #[test]
    fn arguments() {
        let cli = Cli::try_parse_from(["berth", "events", "--format", "json", "topic~=/containers/"]).unwrap();
        let Top::Events(args) = cli.command else { panic!("not events") };
        assert_eq!(args.format, Format::Json);
        assert_eq!(args.filters, ["topic~=/containers/"]);
    }

    #[test]
    fn one_line_per_event() {
        let text = line(&envelope(Some(delete_event())), Format::Table);
        assert_eq!(text, "2023-11-14T22:13:20.500Z watched /containers/delete {\"id\":\"c1\"}\n");
        let unknown = Any { type_url: "example.com/Mystery".into(), value: vec![] };
        let text = line(&envelope(Some(unknown)), Format::Table);
        assert!(text.ends_with(" /containers/delete example.com/Mystery\n"), "{text}");
        let mut bare = envelope(None);
        bare.namespace.clear();
        bare.timestamp = None;
        assert_eq!(line(&bare, Format::Table), "- - /containers/delete -\n");
    }

    #[test]
    fn json_lines() {
        let text = line(&envelope(Some(delete_event())), Format::Json);
        assert_eq!(text.lines().count(), 1);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "timestamp": "2023-11-14T22:13:20.500Z",
                "namespace": "watched",
                "topic": "/containers/delete",
                "type": "containerd.events.ContainerDelete",
                "event": {"id": "c1"},
            })
        );
        let unknown = Any { type_url: "example.com/Mystery".into(), value: vec![] };
        let value: serde_json::Value = serde_json::from_str(&line(&envelope(Some(unknown)), Format::Json)).unwrap();
        assert_eq!(value["type"], "example.com/Mystery");
        assert_eq!(value["event"], serde_json::Value::Null);
    }
}
