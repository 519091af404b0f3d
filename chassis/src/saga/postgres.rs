use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgRow};

use super::{SagaError, SagaRecord, SagaStatus, SagaStore};
use crate::storage::span::Database;
use futures_util::future::BoxFuture;

/// The SQL that creates the `chassis_sagas` table; [`PostgresSagaStore::migrate`] runs it.
///
/// Needs the cargo feature `postgres`.
pub const SAGA_MIGRATION: &str = include_str!("../../migrations/0002_chassis_sagas.sql");

/// Saga state in PostgreSQL: survives restarts and is shared by every instance of the
/// orchestrator. Writes are compare-and-set on the record's version, and "stalled" is judged by
/// the database's clock.
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::saga::SagaError> {
/// let store = chassis::saga::PostgresSagaStore::connect("postgres://127.0.0.1/test").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
///
/// Needs the cargo feature `postgres`.
#[derive(Debug, Clone)]
pub struct PostgresSagaStore {
    pool: PgPool,
    database: Database,
}

/// The store's table, as its spans name it.
const TABLE: Option<&str> = Some("chassis_sagas");

fn error(e: impl std::fmt::Display) -> SagaError {
    SagaError::Store(format!("postgres: {e}"))
}

impl PostgresSagaStore {
    /// Connects a small pool to `url`.
    pub async fn connect(url: &str) -> Result<Self, SagaError> {
        let pool = crate::storage::postgres::connect_pool(url).await.map_err(error)?;
        Ok(Self::from_pool(pool))
    }

    /// Uses an existing pool (the service's own).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            database: Database::postgres(&pool),
            pool,
        }
    }

    /// A readiness check of the database behind the store, `postgres:connections` (a `SELECT 1`
    /// round trip): register it with the service's health registry.
    pub fn health_check(&self) -> crate::health::Check {
        crate::storage::postgres::health_check(self.pool.clone())
    }

    /// Deletes completed and compensated sagas not written for `retention`, a batch at a time;
    /// failed ones stay for an operator.
    pub(crate) async fn delete_finished(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
        crate::storage::postgres::delete_in_batches(
            pool,
            "DELETE FROM chassis_sagas WHERE (saga, id) IN (
                 SELECT saga, id FROM chassis_sagas
                 WHERE status IN ('completed', 'compensated')
                   AND updated_at < now() - $1 * interval '1 millisecond' LIMIT 10000)",
            retention,
        )
        .await
    }

    /// Creates the table if it does not exist ([`SAGA_MIGRATION`]).
    pub async fn migrate(&self) -> Result<(), SagaError> {
        crate::storage::postgres::migrate(&self.pool, &[SAGA_MIGRATION])
            .await
            .map_err(error)?;
        Ok(())
    }
}

fn record(row: &PgRow) -> Result<SagaRecord, SagaError> {
    let status: String = row.try_get("status").map_err(error)?;
    let data: String = row.try_get("data").map_err(error)?;
    let step: i32 = row.try_get("step").map_err(error)?;
    Ok(SagaRecord {
        saga: row.try_get("saga").map_err(error)?,
        id: row.try_get("id").map_err(error)?,
        status: SagaStatus::parse(&status).ok_or_else(|| error(format!("unknown saga status {status:?}")))?,
        step: u32::try_from(step).map_err(error)?,
        data: serde_json::from_str(&data).map_err(error)?,
        failed_step: row.try_get("failed_step").map_err(error)?,
        error: row.try_get("error").map_err(error)?,
        version: row.try_get("version").map_err(error)?,
    })
}

macro_rules! select {
    ($rest:literal) => {
        concat!(
            "SELECT saga, id, status, step, data::text AS data, failed_step, error, version FROM chassis_sagas ",
            $rest
        )
    };
}

impl PostgresSagaStore {
    /// Runs `statement` with the record's columns bound as `$1`..`$8` (saga, id, status, step,
    /// data, failed_step, error, version); `true` when it changed a row.
    async fn write(&self, operation: &'static str, statement: &'static str, r: &SagaRecord) -> Result<bool, SagaError> {
        let write = sqlx::query(statement)
            .bind(&r.saga)
            .bind(&r.id)
            .bind(r.status.as_str())
            .bind(r.step as i32)
            .bind(r.data.to_string())
            .bind(&r.failed_step)
            .bind(&r.error)
            .bind(r.version)
            .execute(&self.pool);
        let changed = self
            .database
            .call(operation, TABLE, write)
            .await
            .map_err(error)?
            .rows_affected();
        Ok(changed == 1)
    }
}

impl SagaStore for PostgresSagaStore {
    fn create<'a>(&'a self, r: &'a SagaRecord) -> BoxFuture<'a, Result<bool, SagaError>> {
        Box::pin(self.write(
            "INSERT",
            "INSERT INTO chassis_sagas (saga, id, status, step, data, failed_step, error, version)
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8) ON CONFLICT DO NOTHING",
            r,
        ))
    }

    fn update<'a>(&'a self, r: &'a SagaRecord) -> BoxFuture<'a, Result<bool, SagaError>> {
        Box::pin(self.write(
            "UPDATE",
            "UPDATE chassis_sagas
             SET status = $3, step = $4, data = $5::jsonb, failed_step = $6, error = $7, version = $8,
                 updated_at = now()
             WHERE saga = $1 AND id = $2 AND version = $8 - 1",
            r,
        ))
    }

    fn load<'a>(&'a self, saga: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<SagaRecord>, SagaError>> {
        Box::pin(async move {
            let select = sqlx::query(select!("WHERE saga = $1 AND id = $2"))
                .bind(saga)
                .bind(id)
                .fetch_optional(&self.pool);
            let row = self.database.call("SELECT", TABLE, select).await.map_err(error)?;
            row.as_ref().map(record).transpose()
        })
    }

    fn stalled<'a>(&'a self, saga: &'a str, idle: Duration) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaError>> {
        Box::pin(async move {
            let select = sqlx::query(select!(
                "WHERE saga = $1 AND status IN ('running', 'compensating')
                   AND updated_at <= now() - $2 * interval '1 millisecond'
                 ORDER BY updated_at LIMIT 1000"
            ))
            .bind(saga)
            .bind(idle.as_millis() as i64)
            .fetch_all(&self.pool);
            let rows = self.database.call("SELECT", TABLE, select).await.map_err(error)?;
            rows.iter().map(record).collect()
        })
    }
}
