//! HTTPS on a listener: [`ServerTlsConfig`] (`[http.tls]`) and the [`ReloadingAcceptor`] that
//! picks up renewed certificate files without a restart.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio_rustls::TlsAcceptor;

use super::{TlsError, files, provider};
use crate::config::{Problems, Validate};

/// `[http.tls]`: serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) instead of plain HTTP.
///
/// ```toml
/// [http.tls]
/// cert_file = "/etc/tls/tls.crt"      # the chain, leaf first
/// key_file = "/etc/tls/tls.key"
/// # client_ca_file = "/etc/tls/ca.crt" # require client certificates (mutual TLS)
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerTlsConfig {
    /// `cert_file`: PEM file with the server's certificate chain, leaf first. Required.
    pub cert_file: String,
    /// `key_file`: PEM file with the certificate's private key. Required.
    pub key_file: String,
    /// `client_ca_file`: when set, every client must present a certificate issued by one of the
    /// CAs in this PEM file (mutual TLS); a client without one fails the handshake. Default:
    /// none, client certificates are not asked for.
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// `reload_interval`: how often the files are checked for changes; a changed certificate
    /// or key is used for new connections from then on, and a broken one is logged and
    /// ignored (the previous one stays in use). Default `"10s"`.
    #[serde(default = "default_reload_interval", with = "crate::config::duration")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(10)
}

impl ServerTlsConfig {
    /// Serves the certificate chain in `cert_file` with the key in `key_file`.
    pub fn new(cert_file: impl Into<String>, key_file: impl Into<String>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            client_ca_file: None,
            reload_interval: default_reload_interval(),
        }
    }

    /// Requires client certificates issued by the CAs in `path` (mutual TLS).
    pub fn client_ca_file(mut self, path: impl Into<String>) -> Self {
        self.client_ca_file = Some(path.into());
        self
    }

    fn files(&self) -> Vec<&str> {
        let mut files = vec![self.cert_file.as_str(), self.key_file.as_str()];
        files.extend(self.client_ca_file.as_deref());
        files
    }

    /// The rustls configuration these files make.
    fn build(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let chain = files::certificates("certificate file", &self.cert_file)?;
        let key = files::private_key(&self.key_file)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| rustls_error("TLS protocol versions", e))?;
        let builder = match &self.client_ca_file {
            Some(path) => {
                let roots = Arc::new(files::root_store(path)?);
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| rustls_error(&format!("client CA file {path}"), e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            rustls_error(
                &format!(
                    "certificate file {} with private key file {}",
                    self.cert_file, self.key_file
                ),
                e,
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn rustls_error(context: &str, error: impl std::fmt::Display) -> TlsError {
    TlsError::Rustls {
        context: context.to_owned(),
        reason: error.to_string(),
    }
}

impl Validate for ServerTlsConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(
            self.reload_interval >= Duration::from_secs(1),
            "reload_interval",
            "must be at least 1s",
        );
        if let Err(error) = self.build() {
            let key = match &error {
                TlsError::File {
                    what: "private key file",
                    ..
                } => "key_file",
                TlsError::File { what: "CA file", .. } => "client_ca_file",
                _ => "cert_file",
            };
            problems.push(key, error.to_string());
        }
    }
}

/// A TLS acceptor whose certificate follows its files: [`ReloadingAcceptor::reload_if_changed`]
/// (which the runtime calls every `reload_interval`) builds a new configuration when a file's
/// modification time changed, and new connections use it from then on.
#[derive(Debug)]
pub struct ReloadingAcceptor {
    config: ServerTlsConfig,
    current: RwLock<Loaded>,
}

struct Loaded {
    acceptor: TlsAcceptor,
    modified: Vec<Option<SystemTime>>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("modified", &self.modified)
            .finish_non_exhaustive()
    }
}

impl ReloadingAcceptor {
    /// Loads the files of `config`; fails with the file and the reason when one is unusable.
    pub fn new(config: &ServerTlsConfig) -> Result<Self, TlsError> {
        let modified = files::modified(&config.files());
        let acceptor = TlsAcceptor::from(config.build()?);
        Ok(Self {
            config: config.clone(),
            current: RwLock::new(Loaded { acceptor, modified }),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(|e| e.into_inner()).acceptor.clone()
    }

    /// How often the files should be checked (`reload_interval`).
    pub fn reload_interval(&self) -> Duration {
        self.config.reload_interval
    }

    /// Loads the files again if one changed since they were last loaded: `Ok(true)` when the
    /// new certificate is in use, `Ok(false)` when nothing changed, and the error when the
    /// changed files are unusable (the previous certificate stays in use; the next call tries
    /// again).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let modified = files::modified(&self.config.files());
        if self.current.read().unwrap_or_else(|e| e.into_inner()).modified == modified {
            return Ok(false);
        }
        let acceptor = TlsAcceptor::from(self.config.build()?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Loaded { acceptor, modified };
        Ok(true)
    }
}
