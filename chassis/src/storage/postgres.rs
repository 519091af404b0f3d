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

/// Runs `migrations` (idempotent DDL: `CREATE ... IF NOT EXISTS`) in one transaction that
/// holds an advisory lock for the current schema, so replicas starting together take turns:
/// concurrent `CREATE TABLE IF NOT EXISTS` of one table can otherwise fail with a duplicate
/// type. The chassis creates its own tables this way; a service can create its own likewise.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// chassis::storage::migrate(&pool, &["CREATE TABLE IF NOT EXISTS orders (id BIGSERIAL PRIMARY KEY)"]).await?;
/// # Ok(())
/// # }
/// ```
///
/// Needs the cargo feature `postgres`.
pub async fn migrate(pool: &PgPool, migrations: &[&'static str]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('chassis migrations ' || current_schema()))")
        .execute(&mut *tx)
        .await?;
    for migration in migrations {
        sqlx::raw_sql(*migration).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Runs `statement` on `connection` (inside a transaction) with `lock_timeout` set to `wait`,
/// then restores the session's setting for the rest of the transaction: a row another
/// transaction is writing is waited for that long, not as long as that transaction runs.
pub(crate) async fn with_lock_timeout<T>(
    connection: &mut sqlx::PgConnection,
    wait: Duration,
    statement: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, sqlx::Error>,
) -> Result<T, sqlx::Error> {
    let millis = wait.as_millis().max(1);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL lock_timeout = '{millis}ms'")))
        .execute(&mut *connection)
        .await?;
    let result = statement(&mut *connection).await?;
    sqlx::raw_sql("SET LOCAL lock_timeout TO DEFAULT")
        .execute(connection)
        .await?;
    Ok(result)
}

/// Whether `error` is PostgreSQL's `lock_not_available` (a `lock_timeout` ran out).
pub(crate) fn is_lock_timeout(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("55P03"))
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

/// Connections of the service's PostgreSQL pools, by pool and state (`idle`, `in_use`).
pub const POOL_CONNECTIONS: &str = "chassis_postgres_pool_connections";
/// The largest size of each pool.
pub const POOL_MAX_CONNECTIONS: &str = "chassis_postgres_pool_max_connections";

/// Sets the pool gauges of `pool` (named `name`): run before each scrape.
pub(crate) fn record_pool(pool: &PgPool, name: &str) {
    let size = pool.size() as f64;
    let idle = pool.num_idle() as f64;
    metrics::gauge!(POOL_CONNECTIONS, "pool" => name.to_owned(), "state" => "idle").set(idle);
    metrics::gauge!(POOL_CONNECTIONS, "pool" => name.to_owned(), "state" => "in_use").set((size - idle).max(0.0));
    metrics::gauge!(POOL_MAX_CONNECTIONS, "pool" => name.to_owned())
        .set(f64::from(pool.options().get_max_connections()));
}

pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        POOL_CONNECTIONS,
        "Connections of the service's PostgreSQL pool, by pool and state (idle, in_use)."
    );
    metrics::describe_gauge!(
        POOL_MAX_CONNECTIONS,
        "The largest size of the service's PostgreSQL pool (postgres.max_connections)."
    );
}
