//! Mount records and performing them: shared with the execution service's shims (berth-mount).

pub use berth_mount::*;
