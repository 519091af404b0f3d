//! PostgreSQL connection pools.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use super::PostgresConfig;
use crate::health::{Check, CheckResult};

/// The small pool the chassis' PostgreSQL stores open for themselves when given a URL instead
/// of the service's pool.
pub(crate) async fn connect_pool(url: &str) -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

/// The service's pool, as `[postgres]` describes it: one attempt to open its first connection.
pub(crate) async fn connect(config: &PostgresConfig, url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect(url)
        .await
}

/// `postgres:connections`: a round trip (`SELECT 1`) through `pool`; `fail` with the error when
/// the database cannot be reached, the connections in the pool as the observed value.
pub(crate) fn health_check(pool: PgPool) -> Check {
    Check::new("postgres:connections", move || {
        let pool = pool.clone();
        async move {
            match sqlx::query("SELECT 1").execute(&pool).await {
                Ok(_) => CheckResult::pass().with_observed_value(pool.size(), "connections"),
                Err(error) => CheckResult::fail(format!("PostgreSQL is unreachable: {error}")),
            }
        }
    })
    .component_type("datastore")
}

/// Runs `delete` (a statement deleting at most 10,000 rows older than `$1` milliseconds) until
/// it deletes fewer; returns the rows deleted. Batches keep each statement's locks short.
pub(crate) async fn delete_in_batches(
    pool: &PgPool,
    delete: &'static str,
    older_than: Duration,
) -> Result<u64, sqlx::Error> {
    let millis = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let mut deleted = 0;
    loop {
        let rows = sqlx::query(delete).bind(millis).execute(pool).await?.rows_affected();
        deleted += rows;
        if rows < 10_000 {
            return Ok(deleted);
        }
    }
}
