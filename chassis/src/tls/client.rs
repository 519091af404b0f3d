//! HTTPS for outbound calls: [`ClientTlsConfig`] (`[clients.<name>.tls]`) and the rustls
//! configuration it makes.

use std::sync::{Arc, OnceLock};

use serde::Deserialize;

use super::{TlsError, files, provider};
use crate::config::{Problems, Validate};

/// `[clients.<name>.tls]`: how the client verifies the servers it calls over `https://`, and
/// the certificate it shows them.
///
/// ```toml
/// [clients.payments.tls]
/// ca_file = "/etc/tls/internal-ca.crt"   # default: the system's trusted roots
/// cert_file = "/etc/tls/client.crt"      # mutual TLS, with key_file
/// key_file = "/etc/tls/client.key"
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientTlsConfig {
    /// `ca_file`: trust only the CAs in this PEM file. Default: the operating system's
    /// trusted roots.
    pub ca_file: Option<String>,
    /// `cert_file`: a PEM client certificate chain to present (mutual TLS); needs `key_file`.
    /// Default: none.
    pub cert_file: Option<String>,
    /// `key_file`: the private key of `cert_file`.
    pub key_file: Option<String>,
}

impl ClientTlsConfig {
    /// Trusts the CAs of `path` instead of the system's roots.
    pub fn ca_file(mut self, path: impl Into<String>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents the certificate of `cert_file` with the key of `key_file` (mutual TLS).
    pub fn client_certificate(mut self, cert_file: impl Into<String>, key_file: impl Into<String>) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }
}

impl Validate for ClientTlsConfig {
    fn validate(&self, problems: &mut Problems) {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => problems.push("key_file", "is required with cert_file"),
            (None, Some(_)) => problems.push("cert_file", "is required with key_file"),
            _ => {}
        }
        if let Some(path) = &self.ca_file
            && let Err(error) = files::root_store(path)
        {
            problems.push("ca_file", error.to_string());
        }
        if let Some(path) = &self.cert_file
            && let Err(error) = files::certificates("certificate file", path)
        {
            problems.push("cert_file", error.to_string());
        }
        if let Some(path) = &self.key_file
            && let Err(error) = files::private_key(path)
        {
            problems.push("key_file", error.to_string());
        }
    }
}

/// The operating system's trusted roots, read once per process.
fn system_roots() -> Result<Arc<rustls::RootCertStore>, TlsError> {
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(format!(
                    "no trusted CA certificates found in the system store ({}); install the \
                     ca-certificates package or set the client's tls.ca_file",
                    if errors.is_empty() {
                        "it is empty".to_owned()
                    } else {
                        errors.join("; ")
                    }
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(|reason| TlsError::File {
            what: "CA file",
            path: "(system roots)".into(),
            reason,
        })
}

/// The rustls client configuration of `config` (without ALPN protocols: the connector
/// offers the HTTP versions the client speaks).
///
/// ```
/// use chassis::tls::{ClientTlsConfig, client_config};
///
/// let error = client_config(&ClientTlsConfig::default().ca_file("/missing/ca.pem")).unwrap_err();
/// assert!(error.to_string().contains("/missing/ca.pem"), "{error}");
/// ```
pub fn client_config(config: &ClientTlsConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = match &config.ca_file {
        Some(path) => Arc::new(files::root_store(path)?),
        None => system_roots()?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls {
            context: "TLS protocol versions".into(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    let tls = match (&config.cert_file, &config.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = files::certificates("certificate file", cert_file)?;
            let key = files::private_key(key_file)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Rustls {
                    context: format!("client certificate {cert_file} with key {key_file}"),
                    reason: e.to_string(),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(tls))
}

/// A client configuration that trusts no server, for clients that never make a TLS connection.
pub(crate) fn trusting_nothing() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    Arc::new(config)
}
