//! The chassis' configuration: every section the chassis owns, gathered into one tree with the
//! service's settings.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{AdminConfig, HttpConfig, RetentionConfig, ShutdownConfig, StartupConfig};
use crate::client::ClientConfig;
use crate::config::{ConfigError, ConfigLoader, Problems, ServiceConfig, Validate};
use crate::health::HealthConfig;
use crate::identity::IdentityConfig;
use crate::messaging::MessagingConfig;
use crate::metrics::MetricsConfig;
use crate::outbox::OutboxConfig;
use crate::storage::{PostgresConfig, RedisConfig};
use crate::telemetry::TelemetryConfig;

/// The loaded configuration: the chassis' sections and the service's settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config<T> {
    /// The chassis' own sections.
    pub chassis: ChassisConfig,
    /// The service's settings: every key outside [`ChassisConfig::section_names`].
    pub settings: T,
}

impl<T: DeserializeOwned + 'static> Config<T> {
    /// Loads and validates the configuration `loader` describes.
    ///
    /// ```
    /// use chassis::config::ConfigLoader;
    /// use chassis::runtime::Config;
    ///
    /// let config = Config::<()>::load(&ConfigLoader::new().set("http.port", 8081)).unwrap();
    /// assert_eq!(config.chassis.http.port, 8081);
    /// ```
    pub fn load(loader: &ConfigLoader) -> Result<Self, ConfigError> {
        let (chassis, settings) = loader.load::<ChassisConfig, T>()?;
        Ok(Self { chassis, settings })
    }
}

/// The chassis' own sections of the configuration tree. Every other top-level key belongs to
/// the service.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ChassisConfig {
    /// `[service]`: identity of the service.
    pub service: ServiceConfig,
    /// `[http]`: the main listener and its request limits.
    pub http: HttpConfig,
    /// `[admin]`: the admin listener (health probes, `/metrics`).
    pub admin: AdminConfig,
    /// `[identity]`: how requests carry and prove who they are from.
    pub identity: IdentityConfig,
    /// `[telemetry]`: logs and traces.
    pub telemetry: TelemetryConfig,
    /// `[metrics]`: the Prometheus recorder and the HTTP RED metrics.
    pub metrics: MetricsConfig,
    /// `[health]`: health check execution.
    pub health: HealthConfig,
    /// `[startup]`: how long start-up waits for the broker and the databases.
    pub startup: StartupConfig,
    /// `[shutdown]`: graceful shutdown timing.
    pub shutdown: ShutdownConfig,
    /// `[clients.<name>]`: the downstream services this one calls.
    pub clients: BTreeMap<String, ClientConfig>,
    /// `[messaging]`: the message bus.
    pub messaging: MessagingConfig,
    /// `[postgres]`: the service's PostgreSQL.
    pub postgres: PostgresConfig,
    /// `[redis]`: the service's Redis.
    pub redis: RedisConfig,
    /// `[outbox]`: the relay of the transactional outbox.
    pub outbox: OutboxConfig,
    /// `[retention]`: how long the chassis' own rows are kept.
    pub retention: RetentionConfig,
}

impl ChassisConfig {
    /// The top-level keys the chassis owns (`service`, `http`, ...): the names of this
    /// struct's fields.
    ///
    /// ```
    /// assert!(chassis::runtime::ChassisConfig::section_names().contains(&"http"));
    /// ```
    pub fn section_names() -> &'static [&'static str] {
        crate::config::field_names::<Self>()
    }
}

impl Validate for ChassisConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.nested("service", |p| self.service.validate(p));
        problems.nested("http", |p| self.http.validate(p));
        problems.nested("admin", |p| self.admin.validate(p));
        problems.nested("identity", |p| self.identity.validate(p));
        problems.nested("telemetry", |p| self.telemetry.validate(p));
        problems.nested("metrics", |p| self.metrics.validate(p));
        problems.nested("health", |p| self.health.validate(p));
        problems.nested("startup", |p| self.startup.validate(p));
        problems.nested("shutdown", |p| self.shutdown.validate(p));
        problems.nested("messaging", |p| self.messaging.validate(p));
        problems.nested("postgres", |p| self.postgres.validate(p));
        problems.nested("redis", |p| self.redis.validate(p));
        problems.nested("outbox", |p| self.outbox.validate(p));
        problems.nested("retention", |p| self.retention.validate(p));
        problems.nested("clients", |p| {
            for (name, client) in &self.clients {
                p.nested(name, |p| client.validate(p));
            }
        });
        problems.check(
            self.admin.shared || self.admin.port == 0 || self.admin.port != self.http.port,
            "admin.port",
            format!(
                "must differ from http.port ({}); set admin.shared = true to serve the admin endpoints on the main port",
                self.http.port
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::ConfigIssue;

    fn loader(dir: &Path) -> ConfigLoader {
        ConfigLoader::new()
            .dir(dir)
            .environment_source(Vec::<(String, String)>::new())
    }

    fn load(loader: ConfigLoader) -> Result<ChassisConfig, ConfigError> {
        Config::<()>::load(&loader).map(|config| config.chassis)
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::File::create(dir.join(name))
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    fn single_issue(err: ConfigError) -> ConfigIssue {
        match err {
            ConfigError::Invalid(mut issues) if issues.len() == 1 => issues.remove(0),
            other => panic!("expected one issue, got {other}"),
        }
    }

    #[test]
    fn the_sections_are_the_fields() {
        assert_eq!(
            ChassisConfig::section_names(),
            [
                "service",
                "http",
                "admin",
                "identity",
                "telemetry",
                "metrics",
                "health",
                "startup",
                "shutdown",
                "clients",
                "messaging",
                "postgres",
                "redis",
                "outbox",
                "retention"
            ]
        );
    }

    #[test]
    fn defaults_apply_with_no_sources() {
        let dir = tempfile::tempdir().unwrap();
        let config = load(loader(dir.path())).unwrap();
        assert_eq!(config.http.port, 8080);
        assert_eq!(config.admin.port, 9090);
        assert_eq!(config.http.request_timeout, Duration::from_secs(30));
        assert_eq!(config.service.environment, "development");
    }

    #[test]
    fn unparsable_address_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[admin]\nhost = \"not-an-ip\"\n");
        let issue = single_issue(load(loader(dir.path())).unwrap_err());
        assert_eq!(issue.key, "admin.host");
        assert!(issue.problem.contains("IP address"), "{issue}");
        assert!(issue.source.ends_with("default.toml"), "{issue}");
    }

    #[test]
    fn zero_timeout_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "default.toml", "[http]\nrequest_timeout = \"0s\"\n");
        let issue = single_issue(load(loader(dir.path())).unwrap_err());
        assert_eq!(issue.key, "http.request_timeout");
        assert!(issue.problem.contains("greater than zero"), "{issue}");
        assert!(issue.source.ends_with("default.toml"), "{issue}");
    }

    #[test]
    fn several_validation_problems_are_reported_together() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(
            loader(dir.path())
                .set("http.request_timeout", "0s")
                .set("telemetry.sampling_ratio", 2.0)
                .set("http.rate_limit.requests", 0)
                .set("clients.payments.base_url", "payments:80"),
        )
        .unwrap_err();
        let keys: Vec<_> = err.issues().iter().map(|i| i.key.as_str()).collect();
        assert!(keys.contains(&"http.request_timeout"), "{err}");
        assert!(keys.contains(&"telemetry.sampling_ratio"), "{err}");
        assert!(keys.contains(&"http.rate_limit.requests"), "{err}");
        assert!(keys.contains(&"clients.payments.base_url"), "{err}");
        assert!(err.issues().iter().all(|i| i.source == "an override"), "{err}");
    }

    #[test]
    fn the_admin_port_must_differ_from_the_main_one() {
        let dir = tempfile::tempdir().unwrap();
        let issue = single_issue(load(loader(dir.path()).set("admin.port", 8080)).unwrap_err());
        assert_eq!(issue.key, "admin.port");
        load(loader(dir.path()).set("admin.port", 8080).set("admin.shared", true)).unwrap();
    }
}
