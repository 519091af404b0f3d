//! The runtime's own config sections: `[http]`, `[admin]` and `[shutdown]`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ByteSize, Problems, Validate};
use crate::resilience::RateLimitConfig;
use crate::tls::ServerTlsConfig;

/// `[http]`: the main listener and the limits every request gets.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpConfig {
    /// `http.host`: the address to bind. Default `"0.0.0.0"`.
    pub host: IpAddr,
    /// `http.port`: default `8080`; `0` picks a free port (tests).
    pub port: u16,
    /// `http.request_timeout`: a request still running after this is answered with 503
    /// `timeout`. Default `"30s"`.
    #[serde(with = "crate::config::duration")]
    pub request_timeout: Duration,
    /// `http.body_limit`: the largest request body accepted; larger ones get 413. Default
    /// `"2MiB"` (axum's own default).
    pub body_limit: ByteSize,
    /// `http.max_concurrent_requests`: requests handled at once; beyond it requests are shed
    /// at once with 503 `overloaded` and `Retry-After: 1`. Default `1024`; `0` disables the
    /// limit.
    pub max_concurrent_requests: usize,
    /// `[http.rate_limit]`: a rate limit on every request (see
    /// [`RateLimitConfig`]). Default: none.
    /// Per-route limits are added with `RateLimitLayer` on the routes.
    pub rate_limit: Option<RateLimitConfig>,
    /// `http.header_read_timeout`: how long a client may take to send a complete request head
    /// (request line and headers), counted from the connection's start for its first request
    /// and from the head's first byte for later ones; then the connection is closed. Protects
    /// against slow-header (slowloris) clients. Also bounds a TLS handshake. Applies to both
    /// listeners. Default `"10s"` (Envoy's recommended edge setting; nginx uses 60 s).
    #[serde(with = "crate::config::duration")]
    pub header_read_timeout: Duration,
    /// `http.keep_alive_timeout`: how long a connection may stay open without a request in
    /// progress before the server closes it. Keep it above the idle timeout of the load
    /// balancer in front (60 s for AWS' ALB), so the balancer, not the service, closes idle
    /// connections. Applies to both listeners. Default `"75s"` (nginx's).
    #[serde(with = "crate::config::duration")]
    pub keep_alive_timeout: Duration,
    /// `http.max_requests_per_connection`: after this many requests a connection is closed
    /// (the last response says `Connection: close`; HTTP/2 gets a GOAWAY), which spreads
    /// long-lived clients over replicas. Default `1000` (nginx's `keepalive_requests`); `0`:
    /// no limit.
    pub max_requests_per_connection: u32,
    /// `http.max_connection_age`: a connection this old is wound down the same way after its
    /// running requests. Default `"0s"`: no limit.
    #[serde(with = "crate::config::duration")]
    pub max_connection_age: Duration,
    /// `http.max_connections`: connections open at once on each listener; a connection over
    /// the limit is answered `503` (`urn:chassis:problem:overloaded`, `Retry-After: 1`,
    /// `Connection: close`) and closed (over TLS it is closed at once). Keep it below the
    /// process' open-file limit (`ulimit -n`). Default `10000`; `0`: no limit.
    pub max_connections: usize,
    /// `[http.tls]`: serve HTTPS with these certificate files (see [`ServerTlsConfig`]).
    /// Default: none, plain HTTP.
    pub tls: Option<ServerTlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 8080,
            request_timeout: Duration::from_secs(30),
            body_limit: ByteSize::mib(2),
            max_concurrent_requests: 1024,
            rate_limit: None,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            max_requests_per_connection: 1000,
            max_connection_age: Duration::ZERO,
            max_connections: 10_000,
            tls: None,
        }
    }
}

impl HttpConfig {
    /// The socket address to bind.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

impl Validate for HttpConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(
            !self.request_timeout.is_zero(),
            "request_timeout",
            "must be greater than zero",
        );
        problems.check(self.body_limit.bytes() > 0, "body_limit", "must be greater than zero");
        problems.nested("rate_limit", |p| self.rate_limit.validate(p));
        problems.check(
            !self.header_read_timeout.is_zero(),
            "header_read_timeout",
            "must be greater than zero",
        );
        problems.check(
            !self.keep_alive_timeout.is_zero(),
            "keep_alive_timeout",
            "must be greater than zero",
        );
        problems.nested("tls", |p| self.tls.validate(p));
    }
}

/// `[admin]`: the listener for `/health/*` and `/metrics`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AdminConfig {
    /// `admin.host`: default `"0.0.0.0"`.
    pub host: IpAddr,
    /// `admin.port`: default `9090`; `0` picks a free port.
    pub port: u16,
    /// `admin.shared`: serve the admin endpoints on the main listener instead of their own.
    /// Default `false`. Shared or not, admin requests are kept out of request traces and
    /// metrics.
    pub shared: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port: 9090,
            shared: false,
        }
    }
}

impl AdminConfig {
    /// The socket address to bind (unused when `shared`).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

/// The admin port is checked against `http.port` where both are known
/// ([`ChassisConfig`](super::ChassisConfig)).
impl Validate for AdminConfig {
    fn validate(&self, _: &mut Problems) {}
}

/// `[shutdown]`: graceful shutdown timing.
///
/// On SIGTERM or Ctrl-C readiness turns to `fail` at once; after `readiness_delay` (time for the
/// load balancer to notice) the listener closes, in-flight requests and background tasks get
/// `grace_period` to finish, then telemetry is flushed. A second signal exits at once.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ShutdownConfig {
    /// `shutdown.readiness_delay`: how long to keep serving while readiness fails. Default
    /// `"5s"`; `"0s"` in tests.
    #[serde(with = "crate::config::duration")]
    pub readiness_delay: Duration,
    /// `shutdown.grace_period`: how long in-flight work may take once the listener is closed.
    /// Default `"20s"`, which with the delay fits Kubernetes' 30 s termination grace period.
    #[serde(with = "crate::config::duration")]
    pub grace_period: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            readiness_delay: Duration::from_secs(5),
            grace_period: Duration::from_secs(20),
        }
    }
}

impl Validate for ShutdownConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(
            !self.grace_period.is_zero(),
            "grace_period",
            "must be greater than zero",
        );
    }
}

/// `[startup]`: how start-up waits for the service's dependencies.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StartupConfig {
    /// `startup.connect_timeout`: how long start-up keeps trying to reach the message broker,
    /// PostgreSQL and Redis (an attempt about every second, each failure logged) before the
    /// service exits with an error naming what it could not reach. Default `"30s"`.
    #[serde(with = "crate::config::duration")]
    pub connect_timeout: Duration,
}

impl Default for StartupConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
        }
    }
}

impl Validate for StartupConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(
            !self.connect_timeout.is_zero(),
            "connect_timeout",
            "must be greater than zero",
        );
    }
}

/// `[retention]`: how long the chassis keeps the rows it writes to PostgreSQL, and how often it
/// deletes older ones. Expired idempotency keys are deleted at every round (their `ttl` is their
/// retention); failed sagas are kept for an operator.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetentionConfig {
    /// `retention.interval`: how often old rows are deleted. Default `"10m"`.
    #[serde(with = "crate::config::duration")]
    pub interval: Duration,
    /// `retention.processed_messages`: how long the inbox remembers a processed message id; a
    /// message redelivered after that is processed again, so keep it longer than the broker
    /// keeps messages. Default `"7d"`.
    #[serde(with = "crate::config::duration")]
    pub processed_messages: Duration,
    /// `retention.outbox`: how long published outbox rows are kept. Default `"7d"`.
    #[serde(with = "crate::config::duration")]
    pub outbox: Duration,
    /// `retention.sagas`: how long completed and compensated sagas are kept. Default `"30d"`.
    #[serde(with = "crate::config::duration")]
    pub sagas: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            interval: Duration::from_secs(600),
            processed_messages: Duration::from_secs(7 * DAY),
            outbox: Duration::from_secs(7 * DAY),
            sagas: Duration::from_secs(30 * DAY),
        }
    }
}

impl Validate for RetentionConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(
            self.interval >= Duration::from_secs(1),
            "interval",
            "must be at least 1s",
        );
    }
}
