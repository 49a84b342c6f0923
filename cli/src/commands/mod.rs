//! One module per command group.

pub mod content;
pub mod version;
