//! `[postgres]` and `[redis]`: the service's own connections.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{Problems, Validate};

/// `[postgres]`: the service's PostgreSQL. With a `url`, the runtime connects a pool at start
/// (retrying for `startup.connect_timeout`), creates the chassis' tables, registers the
/// `postgres:connections` readiness check and hands the pool to the service
/// (`Context::postgres`); the outbox, the inbox, the PostgreSQL idempotency store and the saga
/// store use it, so the chassis' rows commit with the service's own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// `postgres.url`, e.g. `"postgres://orders@db:5432/orders"`. Default: none (no pool).
    pub url: Option<String>,
    /// `postgres.max_connections`: the pool's size. Default `10`.
    pub max_connections: u32,
    /// `postgres.acquire_timeout`: how long a query waits for a free connection before it
    /// fails. Default `"5s"`.
    #[serde(with = "crate::config::duration")]
    pub acquire_timeout: Duration,
    /// `postgres.migrate`: create the chassis' tables (idempotency keys, processed messages,
    /// outbox, sagas) at start if they do not exist. Default `true`.
    pub migrate: bool,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            migrate: true,
        }
    }
}

impl Validate for PostgresConfig {
    fn validate(&self, problems: &mut Problems) {
        if let Some(url) = &self.url {
            problems.check(
                url.starts_with("postgres://") || url.starts_with("postgresql://"),
                "url",
                format!("must start with postgres:// or postgresql://, got {url:?}"),
            );
            problems.check(
                cfg!(feature = "postgres"),
                "url",
                "needs the chassis cargo feature `postgres`",
            );
        }
        problems.check(self.max_connections > 0, "max_connections", "must be at least 1");
        problems.check(
            !self.acquire_timeout.is_zero(),
            "acquire_timeout",
            "must be greater than zero",
        );
    }
}

/// `[redis]`: the service's Redis. With a `url`, the runtime connects at start (retrying for
/// `startup.connect_timeout`), registers the `redis:ping` readiness check and hands the
/// connection to the service (`Context::redis`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis.url`, e.g. `"redis://cache:6379"`. Default: none (no connection).
    pub url: Option<String>,
}

impl Validate for RedisConfig {
    fn validate(&self, problems: &mut Problems) {
        if let Some(url) = &self.url {
            problems.check(
                url.starts_with("redis://") || url.starts_with("rediss://"),
                "url",
                format!("must start with redis:// or rediss://, got {url:?}"),
            );
            problems.check(
                cfg!(feature = "redis"),
                "url",
                "needs the chassis cargo feature `redis`",
            );
        }
    }
}
