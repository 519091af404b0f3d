//! TLS for both directions, with rustls: the main listener serving HTTPS from certificate and
//! key files that are reloaded when they change ([`ServerTlsConfig`], `[http.tls]`), and the
//! outbound client verifying servers against the system's roots or a CA file, optionally with a
//! client certificate for mutual TLS ([`ClientTlsConfig`], `[clients.<name>.tls]`).
//!
//! Certificates and keys are PEM files. Every error names the file and what to fix.
//!
//! ```no_run
//! use chassis::tls::ServerTlsConfig;
//!
//! let config = ServerTlsConfig::new("/etc/tls/tls.crt", "/etc/tls/tls.key");
//! let acceptor = chassis::tls::ReloadingAcceptor::new(&config).expect("valid certificate files");
//! ```

mod client;
mod files;
mod server;

pub(crate) use client::trusting_nothing;
pub use client::{ClientTlsConfig, client_config};
pub use server::{ReloadingAcceptor, ServerTlsConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or CA file could not be read or holds nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file was for (`"certificate file"`, `"private key file"`, `"CA file"`).
        what: &'static str,
        /// The path as configured.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificates or the key (a key that does not match the
    /// certificate, an unsupported key type).
    #[error("{context}: {reason}")]
    Rustls {
        /// What was being set up.
        context: String,
        /// rustls' reason.
        reason: String,
    },
}

/// The process' crypto provider (ring): every TLS config here is built with it, so a
/// dependency that installs another default provider cannot change what the chassis uses.
///
/// ring rather than aws-lc-rs, which needs cmake and a C toolchain to build; newer rustls
/// releases deprecate ring's provider because it has no post-quantum key exchange.
#[allow(deprecated)]
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
