//! How berth services reach each other.
//!
//! Services call their peers through the same containerd API clients use, on the peers' own
//! sockets (berthd passes `--peer NAME=ADDR[,ADDR]` to every service). What travels with
//! each call: the caller's namespace and its trace context.
//!
//! - [`peers`]: the address book and the channels to each peer;
//! - [`events`]: publishing containerd's events (`/content/delete`, ...) to the metadata
//!   service without ever slowing the call that caused them;
//! - [`leases`]: adding what a call creates to the lease it runs under;
//! - [`namespaces`]: making a namespace exist the first time a service stores something in it,
//!   as containerd does implicitly.

pub mod events;
pub mod leases;
pub mod namespaces;
pub mod peers;

pub use events::Publisher;
pub use leases::LeaseResources;
pub use namespaces::Namespaces;
pub use peers::{PeerChannel, Peers, request};
