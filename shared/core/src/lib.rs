//! Rules every berth service applies the same way as containerd does: identifiers,
//! labels, namespaces, filters, field masks, and how to reach a peer over a unix socket.

pub mod connect;
pub mod filters;
pub mod identifiers;
pub mod labels;
pub mod lifecycle;
pub mod listen;
pub mod namespace;
