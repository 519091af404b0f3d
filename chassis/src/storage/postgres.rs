//! PostgreSQL connection pools.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::health::{Check, CheckResult};

/// The small pool the chassis' PostgreSQL stores open for themselves.
pub(crate) async fn connect_pool(url: &str) -> Result<PgPool, String> {
    PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
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
