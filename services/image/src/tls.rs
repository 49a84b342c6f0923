//! TLS for registry connections: rustls with the ring crypto provider, installed once per
//! process (reqwest is built without a provider of its own).

use std::sync::Once;

pub fn install_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only when another provider is installed already, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
