//! Reaching the service's dependencies at start: the message broker, PostgreSQL and Redis,
//! each retried for `startup.connect_timeout` with a log line per failed attempt.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ChassisConfig, StartError};
use crate::health::HealthRegistry;
use crate::messaging::Transport;

/// What the runtime connected to for the service.
pub(super) struct Dependencies {
    pub(super) transport: Arc<dyn Transport>,
    #[cfg(feature = "postgres")]
    pub(super) postgres: Option<sqlx::PgPool>,
    #[cfg(feature = "redis")]
    pub(super) redis: Option<redis::aio::ConnectionManager>,
}

/// The longest one connection attempt may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls `connect` until it succeeds or `timeout` has passed, about once a second, each
/// attempt bounded by [`ATTEMPT_TIMEOUT`]; every failure is logged with what comes next.
pub(super) async fn connect_retrying<T, E, F, Fut>(
    what: &str,
    key: &str,
    timeout: Duration,
    mut connect: F,
) -> Result<T, StartError>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut attempt = 1u32;
    loop {
        let bound = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(100), ATTEMPT_TIMEOUT);
        let error = match tokio::time::timeout(bound, connect()).await {
            Ok(Ok(connected)) => {
                if attempt > 1 {
                    tracing::info!(dependency = what, attempts = attempt, "reached {what}");
                }
                return Ok(connected);
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {}", crate::config::duration::format(&bound)),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(StartError::Unreachable {
                what: what.to_owned(),
                key: key.to_owned(),
                waited: timeout,
                reason: error,
            });
        }
        let pause = Duration::from_secs(1).min(deadline - now);
        tracing::warn!(
            dependency = what,
            attempt,
            %error,
            gives_up_in_s = (deadline - now).as_secs(),
            "cannot reach {what} yet; retrying (startup.connect_timeout)"
        );
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// Connects the broker (unless one was given), PostgreSQL and Redis as `config` says, creates
/// the chassis' tables, and registers a readiness check for each.
pub(super) async fn connect(
    config: &ChassisConfig,
    given: Option<Arc<dyn Transport>>,
    #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(unused_variables))] health: &HealthRegistry,
) -> Result<Dependencies, StartError> {
    let timeout = config.startup.connect_timeout;
    let transport = match given {
        Some(transport) => transport,
        None => {
            connect_retrying("the message broker", "messaging.url", timeout, || {
                crate::messaging::connect(&config.messaging)
            })
            .await?
        }
    };
    #[cfg(feature = "postgres")]
    let postgres = match &config.postgres.url {
        None => None,
        Some(url) => {
            let pool = connect_retrying("PostgreSQL", "postgres.url", timeout, || {
                crate::storage::postgres::connect(&config.postgres, url)
            })
            .await?;
            if config.postgres.migrate {
                migrate(&pool).await.map_err(|error| StartError::Unreachable {
                    what: "PostgreSQL".into(),
                    key: "postgres.migrate".into(),
                    waited: Duration::ZERO,
                    reason: format!("creating the chassis' tables failed: {error}"),
                })?;
            }
            health.register(crate::storage::postgres::health_check(pool.clone()));
            Some(pool)
        }
    };
    #[cfg(feature = "redis")]
    let redis = match &config.redis.url {
        None => None,
        Some(url) => {
            let client = redis::Client::open(url.as_str()).map_err(|error| StartError::Unreachable {
                what: "Redis".into(),
                key: "redis.url".into(),
                waited: Duration::ZERO,
                reason: format!("invalid URL: {error}"),
            })?;
            let connection = connect_retrying("Redis", "redis.url", timeout, || {
                redis::aio::ConnectionManager::new(client.clone())
            })
            .await?;
            health.register(crate::storage::redis::health_check(connection.clone()));
            Some(connection)
        }
    };
    Ok(Dependencies {
        transport,
        #[cfg(feature = "postgres")]
        postgres,
        #[cfg(feature = "redis")]
        redis,
    })
}

/// Creates the chassis' tables (idempotency keys and processed messages, sagas, the outbox) if
/// they do not exist.
#[cfg(feature = "postgres")]
async fn migrate(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    crate::storage::postgres::migrate(
        pool,
        &[
            crate::idempotency::MIGRATION,
            crate::saga::SAGA_MIGRATION,
            crate::outbox::OUTBOX_MIGRATION,
        ],
    )
    .await
}
