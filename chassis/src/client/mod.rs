//! The outbound HTTP client: how a service calls the next one.
//!
//! Every request passes, outermost first (the outbound layer order of the architecture guide):
//!
//! total timeout > retry (backoff, budget, `Retry-After`) > trace and metrics per attempt (a
//! client span with `http.request.resend_count`, W3C `traceparent` injected,
//! `http_client_request_duration_seconds`) > circuit breaker (one per downstream) > attempt
//! timeout > connection pool.
//!
//! Clients are configured under `[clients.<name>]` and created from the service's context:
//!
//! ```toml
//! [clients.payments]
//! base_url = "http://payments:8080"
//! timeout = "10s"
//! attempt_timeout = "2s"
//! retry = { max_retries = 2 }
//! circuit_breaker = { consecutive_failures = 5, open_duration = "10s" }
//! ```
//!
//! ```no_run
//! # async fn demo(ctx: chassis::Context<()>) -> chassis::Result<()> {
//! let payments = ctx.client("payments")?;
//! let response = payments.get("/balances/42").await?;
//! let balance: serde_json::Value = chassis::client::json(response).await?;
//! # let _ = balance; Ok(()) }
//! ```

pub mod observe;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, Response, Uri, header};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

pub use observe::{HTTP_CLIENT_REQUEST_DURATION, Observe, ObserveLayer};

use crate::BoxError;
use crate::config::{ByteSize, ConfigError, Problems, Validate};
use crate::resilience::{
    Breaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerRegistry, RetryConfig, RetryLayer, TimeoutLayer,
};
use crate::tls::{ClientTlsConfig, TlsError};

/// `[clients.<name>]`: one downstream service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `base_url`: scheme, host and port (and optionally a path prefix) of the downstream,
    /// e.g. `"http://payments:8080"`. Required.
    pub base_url: String,
    /// `timeout`: the total time for a request, retries included. Default `"30s"`.
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    /// `attempt_timeout`: the time for one attempt. Default `"10s"`; at most `timeout`.
    #[serde(with = "crate::config::duration")]
    pub attempt_timeout: Duration,
    /// `connect_timeout`: the time to open a connection. Default `"2s"`.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
    /// `pool_idle_timeout`: how long an idle pooled connection is kept. Default `"90s"`.
    #[serde(with = "crate::config::duration")]
    pub pool_idle_timeout: Duration,
    /// `pool_max_idle`: idle connections kept to the downstream. Default `32`.
    pub pool_max_idle: usize,
    /// `max_response_bytes`: the largest body [`json`] and [`bytes`] read. Default `"8MiB"`.
    pub max_response_bytes: ByteSize,
    /// `[retry]`: see [`RetryConfig`].
    pub retry: RetryConfig,
    /// `[circuit_breaker]`: see [`CircuitBreakerConfig`].
    pub circuit_breaker: CircuitBreakerConfig,
    /// `[tls]`: how an `https://` downstream is verified, and the client certificate shown to
    /// it (see [`ClientTlsConfig`]). Default: the system's trusted roots, no client
    /// certificate.
    pub tls: ClientTlsConfig,
    /// `http_version`: `"auto"` (default: HTTP/2 when an `https://` server offers it by ALPN,
    /// HTTP/1.1 otherwise), `"http1"` (HTTP/1.1 only) or `"http2"` (HTTP/2 only: by ALPN over
    /// `https://`, with prior knowledge, h2c, over `http://`).
    pub http_version: HttpVersion,
}

crate::config::choices! {
    /// The HTTP versions a [`Client`] speaks (`http_version`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    #[non_exhaustive]
    pub enum HttpVersion {
        /// HTTP/2 when the server offers it by ALPN, HTTP/1.1 otherwise.
        #[default]
        Auto = "auto",
        /// HTTP/1.1 only.
        Http1 = "http1",
        /// HTTP/2 only; over `http://` with prior knowledge (h2c).
        Http2 = "http2",
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle: 32,
            max_response_bytes: ByteSize::mib(8),
            retry: RetryConfig::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
            tls: ClientTlsConfig::default(),
            http_version: HttpVersion::Auto,
        }
    }
}

impl ClientConfig {
    /// Settings for a client of `base_url`, everything else at its default.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            ..Self::default()
        }
    }
}

impl Validate for ClientConfig {
    fn validate(&self, problems: &mut Problems) {
        match self.base_url.parse::<Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => problems.push(
                "base_url",
                format!(
                    "must be an absolute http:// or https:// URL such as \"http://payments:8080\", got {:?}",
                    self.base_url
                ),
            ),
        }
        problems.nested("tls", |p| self.tls.validate(p));
        problems.check(!self.timeout.is_zero(), "timeout", "must be greater than zero");
        problems.check(
            !self.attempt_timeout.is_zero() && self.attempt_timeout <= self.timeout,
            "attempt_timeout",
            format!(
                "must be greater than zero and at most timeout ({}): an attempt cannot outlive the request",
                crate::config::duration::format(&self.timeout)
            ),
        );
        problems.nested("retry", |p| self.retry.validate(p));
        problems.nested("circuit_breaker", |p| self.circuit_breaker.validate(p));
    }
}

/// What went wrong with an outbound call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No `[clients.<name>]` section.
    #[error("no client named {name:?} is configured; add [clients.{name}] with a base_url (configured: {known})")]
    NotConfigured {
        /// The name asked for.
        name: String,
        /// The names that are configured, comma-separated.
        known: String,
    },
    /// The settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The path could not be joined to the base URL.
    #[error("invalid request path {path:?}: {reason}")]
    InvalidPath {
        /// The path given.
        path: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The TLS settings of an `https://` client could not be loaded.
    #[error("client {client}: {source}")]
    Tls {
        /// The client's name.
        client: String,
        /// What is wrong.
        source: TlsError,
    },
    /// The request failed: connection error, TLS verification, timeout, open breaker, ... The
    /// message carries the whole chain of causes.
    #[error("request to {client} failed: {}", causes(source.as_ref()))]
    Request {
        /// The client's name.
        client: Arc<str>,
        /// The underlying error; downcast to `Elapsed` or `CircuitOpen` to tell them apart.
        source: BoxError,
    },
    /// The response body could not be read or decoded.
    #[error("reading the response of {client} failed: {reason}")]
    Body {
        /// The client's name.
        client: Arc<str>,
        /// Why.
        reason: String,
    },
}

type Stack = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// An HTTP client for one downstream service. Cheap to clone; clones share the connection pool,
/// the retry budget and the circuit breaker.
#[derive(Clone)]
pub struct Client {
    name: Arc<str>,
    base: Uri,
    max_response_bytes: usize,
    breaker: Breaker,
    stack: Stack,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client named `name` (its metrics label and breaker name), whose breaker is taken from
    /// (or created in) `breakers`.
    ///
    /// ```
    /// use chassis::client::{Client, ClientConfig};
    /// use chassis::resilience::CircuitBreakerRegistry;
    ///
    /// let client = Client::new("payments", ClientConfig::new("http://127.0.0.1:8081"), &CircuitBreakerRegistry::new()).unwrap();
    /// assert!(Client::new("bad", ClientConfig::new("payments:8081"), &CircuitBreakerRegistry::new()).is_err());
    /// ```
    pub fn new(name: &str, config: ClientConfig, breakers: &CircuitBreakerRegistry) -> Result<Self, ClientError> {
        crate::config::validate(&format!("clients.{name}"), &config)?;
        let base: Uri = config.base_url.parse().expect("validated above");
        let name: Arc<str> = name.into();

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        // Plain-http clients only ever call their base URL's host (see `send`), so they need
        // no roots.
        let tls = match base.scheme_str() {
            Some("https") => crate::tls::client_config(&config.tls).map_err(|source| ClientError::Tls {
                client: name.to_string(),
                source,
            })?,
            _ => plain_http_tls(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http();
        let connector = match config.http_version {
            HttpVersion::Auto => https.enable_all_versions().wrap_connector(connector),
            HttpVersion::Http1 => https.enable_http1().wrap_connector(connector),
            HttpVersion::Http2 => https.enable_http2().wrap_connector(connector),
        };
        let hyper = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .http2_only(config.http_version == HttpVersion::Http2)
            .build::<_, Body>(connector);
        let connection = tower::service_fn(move |request: Request<Body>| {
            let hyper = hyper.clone();
            async move {
                let response = hyper.request(request).await?;
                Ok::<_, BoxError>(response.map(Body::new))
            }
        });

        let breaker = breakers.get_or_create(&name, &config.circuit_breaker)?;
        // One CLIENT span and one duration sample per attempt: the observer sits below the
        // retries, which tell it how many sends came before (`http.request.resend_count`).
        let stack = ServiceBuilder::new()
            .layer(TimeoutLayer::new(config.timeout))
            .layer(RetryLayer::new(name.clone(), config.retry.clone())?)
            .layer(ObserveLayer::new(name.clone()))
            .layer(CircuitBreakerLayer::new(breaker.clone()))
            .layer(TimeoutLayer::new(config.attempt_timeout))
            .service(connection);
        Ok(Self {
            name,
            base,
            max_response_bytes: config.max_response_bytes.as_usize(),
            breaker,
            stack: BoxCloneSyncService::new(stack),
        })
    }

    /// The client's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The circuit breaker guarding this downstream.
    pub fn circuit_breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// The absolute URL of `path` (`"/orders/42?full=true"`) on this downstream.
    pub fn url(&self, path: &str) -> Result<Uri, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidPath {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if !path.starts_with('/') {
            return Err(invalid("must start with '/'"));
        }
        let prefix = self.base.path().trim_end_matches('/');
        let authority = self
            .base
            .authority()
            .ok_or_else(|| invalid("the base URL has no host"))?;
        Uri::builder()
            .scheme(self.base.scheme_str().unwrap_or("http"))
            .authority(authority.as_str())
            .path_and_query(format!("{prefix}{path}"))
            .build()
            .map_err(|e| invalid(&e.to_string()))
    }

    /// A request builder for `method` on `path`, to finish and pass to [`Client::send`].
    pub fn request(&self, method: Method, path: &str) -> Result<http::request::Builder, ClientError> {
        Ok(Request::builder().method(method).uri(self.url(path)?))
    }

    /// Sends a request through the client's stack. A relative URI is taken as a path on the
    /// downstream; an absolute one must name the downstream's own scheme and host (a client,
    /// its breaker and its pool belong to one downstream: make one client per host).
    pub async fn send(&self, mut request: Request<Body>) -> Result<Response<Body>, ClientError> {
        if let Some(authority) = request.uri().authority()
            && (Some(authority) != self.base.authority() || request.uri().scheme() != self.base.scheme())
        {
            return Err(ClientError::InvalidPath {
                path: request.uri().to_string(),
                reason: format!(
                    "this client calls {}; configure a client per downstream host, so that each has its own \
                     circuit breaker",
                    self.base
                ),
            });
        }
        if request.uri().authority().is_none() {
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .to_owned();
            *request.uri_mut() = self.url(&path)?;
        }
        self.stack
            .clone()
            .oneshot(request)
            .await
            .map_err(|source| ClientError::Request {
                client: self.name.clone(),
                source,
            })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Response<Body>, ClientError> {
        let request = self
            .request(Method::GET, path)?
            .body(Body::empty())
            .expect("valid request");
        self.send(request).await
    }

    /// `POST path` with `value` as a JSON body.
    pub async fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        value: &T,
    ) -> Result<Response<Body>, ClientError> {
        let body = serde_json::to_vec(value).map_err(|e| ClientError::Body {
            client: self.name.clone(),
            reason: format!("cannot encode the request body: {e}"),
        })?;
        let request = self
            .request(Method::POST, path)?
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("valid request");
        self.send(request).await
    }

    /// Reads a response body up to `max_response_bytes`.
    pub async fn bytes(&self, response: Response<Body>) -> Result<bytes::Bytes, ClientError> {
        axum::body::to_bytes(response.into_body(), self.max_response_bytes)
            .await
            .map_err(|e| ClientError::Body {
                client: self.name.clone(),
                reason: e.to_string(),
            })
    }
}

/// A TLS configuration for clients of `http://` URLs, which never make a TLS connection.
fn plain_http_tls() -> std::sync::Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<std::sync::Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG.get_or_init(crate::tls::trusting_nothing).clone()
}

/// An error and its causes, outermost first.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    crate::error::with_causes(error, ": ")
}

/// Decodes a JSON response body (up to 8 MiB); a non-2xx status is an error carrying the body.
pub async fn json<T: serde::de::DeserializeOwned>(response: Response<Body>) -> Result<T, ClientError> {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 8 << 20)
        .await
        .map_err(|e| ClientError::Body {
            client: "response".into(),
            reason: e.to_string(),
        })?;
    if !status.is_success() {
        return Err(ClientError::Body {
            client: "response".into(),
            reason: format!("status {status}: {}", String::from_utf8_lossy(&bytes)),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| ClientError::Body {
        client: "response".into(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// The configured clients and the breakers they share, built once per service.
#[derive(Debug, Clone, Default)]
pub(crate) struct Clients {
    configs: BTreeMap<String, ClientConfig>,
    breakers: CircuitBreakerRegistry,
    built: Arc<std::sync::Mutex<BTreeMap<String, Client>>>,
}

impl Clients {
    pub(crate) fn new(configs: BTreeMap<String, ClientConfig>, breakers: CircuitBreakerRegistry) -> Self {
        Self {
            configs,
            breakers,
            built: Arc::default(),
        }
    }

    pub(crate) fn breakers(&self) -> &CircuitBreakerRegistry {
        &self.breakers
    }

    pub(crate) fn get(&self, name: &str) -> Result<Client, ClientError> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(client) = built.get(name) {
            return Ok(client.clone());
        }
        let config = self.configs.get(name).ok_or_else(|| ClientError::NotConfigured {
            name: name.to_owned(),
            known: if self.configs.is_empty() {
                "none".into()
            } else {
                self.configs.keys().cloned().collect::<Vec<_>>().join(", ")
            },
        })?;
        let client = Client::new(name, config.clone(), &self.breakers)?;
        built.insert(name.to_owned(), client.clone());
        Ok(client)
    }
}

/// HELP and units for the metrics of this module.
pub(crate) fn describe_metrics() {
    metrics::describe_histogram!(
        HTTP_CLIENT_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Duration of HTTP client requests."
    );
}
