//! What a snapshot is, as Stat, List and Update report it.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// containerd's three kinds of snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only, made by View; never committed, never a parent.
    View,
    /// Writable, made by Prepare; becomes Committed by Commit.
    Active,
    /// Read-only and immutable; the only kind that can be a parent.
    Committed,
}

impl fmt::Display for Kind {
    /// The names containerd's filters use (`kind==committed`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        })
    }
}

/// One snapshot in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The key of an active snapshot or view, the name of a committed one.
    pub name: String,
    /// Name of the committed parent; empty when there is none.
    pub parent: String,
    pub kind: Kind,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: HashMap<String, String>,
}

/// Disk a snapshot uses on its own (not counting its parents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes of allocated blocks.
    pub size: i64,
    /// Distinct inodes (hard links count once).
    pub inodes: i64,
}
