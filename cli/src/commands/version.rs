//! `berth version`: this client's version and the server's (containerd.services.version.v1).

use serde::Serialize;

use crate::client::Client;
use crate::errors::Subject;
use crate::output::{self, Format};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// This build's version.
pub const CLIENT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Versions {
    pub client: Side,
    pub server: Side,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Side {
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

pub async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    let client_side = Side { version: CLIENT_VERSION.to_string(), revision: None };
    if args.format == Format::Table {
        // Like ctr: the client half is useful even when the server cannot be reached.
        output::print(&client_text(&client_side))?;
    }
    let response =
        client.version().version(()).await.map_err(|status| client.explain(status, Subject::Server))?.into_inner();
    let server = Side { version: response.version, revision: Some(response.revision) };
    match args.format {
        Format::Table => output::print(&server_text(&server))?,
        Format::Json => output::print(&output::json(&Versions { client: client_side, server })?)?,
    }
    Ok(())
}

fn client_text(client: &Side) -> String {
    format!("Client:\n  Version:  {}\n\n", client.version)
}

fn server_text(server: &Side) -> String {
    format!("Server:\n  Version:  {}\n  Revision: {}\n", server.version, server.revision.as_deref().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_layout() {
        let side = Side { version: "1.2.3".into(), revision: Some("abc".into()) };
        assert_eq!(server_text(&side), "Server:\n  Version:  1.2.3\n  Revision: abc\n");
        assert!(client_text(&side).starts_with("Client:\n  Version:  1.2.3\n"));
    }

    #[test]
    fn json_layout() {
        let versions = Versions {
            client: Side { version: "0.1.0".into(), revision: None },
            server: Side { version: "1.6.0".into(), revision: Some("r".into()) },
        };
        let value: serde_json::Value = serde_json::from_str(&output::json(&versions).unwrap()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"client": {"version": "0.1.0"}, "server": {"version": "1.6.0", "revision": "r"}})
        );
    }
}
