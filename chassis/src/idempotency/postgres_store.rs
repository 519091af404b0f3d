use std::time::Duration;

use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Row};

use super::store::{Begin, IdempotencyStore, StoreError, StoredResponse, new_token};
use crate::storage::span::Database;
use futures_util::future::BoxFuture;

/// The SQL that creates the store's tables (`chassis_idempotency`,
/// `chassis_processed_messages`); [`PostgresStore::migrate`] runs it. Copy it into your own
/// migrations if you manage the schema yourself.
///
/// Needs the cargo feature `postgres`.
pub const MIGRATION: &str = include_str!("../../migrations/0001_chassis_idempotency.sql");

/// Keys in PostgreSQL, shared by every instance. A claim is one `INSERT ... ON CONFLICT DO
/// UPDATE ... WHERE expired` statement, so of concurrent callers exactly one wins; expiry
/// (lease and TTL) is judged by the database's clock. The idempotent consumer can record a
/// message id in the handler's own transaction ([`PostgresStore::record_message`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::idempotency::StoreError> {
/// let store = chassis::idempotency::PostgresStore::connect("postgres://127.0.0.1/test").await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
///
/// Needs the cargo feature `postgres`.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    database: Database,
}

/// The store's table, as its spans name it.
const TABLE: Option<&str> = Some("chassis_idempotency");

fn error(e: impl std::fmt::Display) -> StoreError {
    StoreError::new("postgres", e)
}

/// Marks the claim `token` on `key` done with its response, if the claim is still the current one.
fn complete_query<'q>(
    key: &'q str,
    token: &'q str,
    response: &'q StoredResponse,
    ttl: Duration,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(
        "UPDATE chassis_idempotency
         SET state = 'done', status = $3, headers = $4, body = $5,
             expires_at = now() + $6 * interval '1 millisecond'
         WHERE key = $1 AND token = $2 AND state = 'in_flight' AND expires_at > now()",
    )
    .bind(key)
    .bind(token)
    .bind(i32::from(response.status))
    .bind(response.encode_headers())
    .bind(response.body.as_slice())
    .bind(millis(ttl))
}

fn millis(duration: Duration) -> i64 {
    (duration.as_millis() as i64).max(1)
}

impl PostgresStore {
    /// Connects a small pool to `url`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
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

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A readiness check of the database behind the store, `postgres:connections` (a `SELECT 1`
    /// round trip): register it with the service's health registry.
    pub fn health_check(&self) -> crate::health::Check {
        crate::storage::postgres::health_check(self.pool.clone())
    }

    /// Creates the tables if they do not exist ([`MIGRATION`]).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        crate::storage::postgres::migrate(&self.pool, &[MIGRATION])
            .await
            .map_err(error)?;
        Ok(())
    }

    /// Deletes expired keys (claims past their lease, records past their TTL), a batch at a time.
    pub(crate) async fn delete_expired(pool: &PgPool) -> Result<u64, sqlx::Error> {
        crate::storage::postgres::delete_in_batches(
            pool,
            "DELETE FROM chassis_idempotency WHERE key IN (
                 SELECT key FROM chassis_idempotency
                 WHERE expires_at < now() - $1 * interval '1 millisecond' LIMIT 10000)",
            Duration::ZERO,
        )
        .await
    }

    /// Claims `key` inside `connection`'s transaction, so the claim commits with the request's
    /// effect or vanishes with it: a request that is cancelled, fails or dies holds nothing
    /// afterwards, and no lease is needed. A concurrent request with the same key waits up to
    /// `wait` for the first to end (then sees its record, or claims the key if it rolled back),
    /// and after that answers [`Begin::InFlight`]. After anything but [`Begin::Claimed`], roll
    /// the transaction back.
    pub(crate) async fn claim_in(
        &self,
        connection: &mut PgConnection,
        key: &str,
        fingerprint: &str,
        wait: Duration,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let token = new_token();
        let claim = crate::storage::postgres::with_lock_timeout(&mut *connection, wait, async |connection| {
            claim_query(key, fingerprint, &token, lease)
                .fetch_optional(connection)
                .await
        });
        let claimed = self.database.call("INSERT", TABLE, claim).await;
        match claimed {
            Ok(Some(_)) => Ok(Begin::Claimed { token }),
            Ok(None) => existing(&self.database, connection, key, fingerprint).await,
            Err(error) if crate::storage::postgres::is_lock_timeout(&error) => Ok(Begin::InFlight { lease_left: wait }),
            Err(other) => Err(error(other)),
        }
    }

    /// Records the response of the claim `token` on `key` inside `connection`'s transaction;
    /// `false` when the claim is no longer the current one (its lease ran out and another
    /// request may have claimed the key), and the caller must roll back.
    pub async fn complete_in(
        &self,
        connection: &mut PgConnection,
        key: &str,
        token: &str,
        response: &StoredResponse,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let update = complete_query(key, token, response, ttl).execute(connection);
        let updated = self
            .database
            .call("UPDATE", TABLE, update)
            .await
            .map_err(error)?
            .rows_affected();
        Ok(updated == 1)
    }

    /// Records that `consumer` processed `message_id`, inside the caller's transaction: `true`
    /// the first time, `false` for a duplicate. Commit it together with the handler's own
    /// writes and the effect happens exactly once, even if the process dies before the
    /// broker hears the acknowledgement.
    pub async fn record_message(
        connection: &mut PgConnection,
        consumer: &str,
        message_id: &str,
    ) -> Result<bool, StoreError> {
        let insert = sqlx::query(
            "INSERT INTO chassis_processed_messages (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(consumer)
        .bind(message_id)
        .execute(connection);
        let inserted = Database::postgres_unknown()
            .call("INSERT", Some("chassis_processed_messages"), insert)
            .await
            .map_err(error)?
            .rows_affected();
        Ok(inserted == 1)
    }
}

/// Claims `key` unless a live claim or a completed record holds it; answers the new token.
fn claim_query<'q>(
    key: &'q str,
    fingerprint: &'q str,
    token: &'q str,
    lease: Duration,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(
        "INSERT INTO chassis_idempotency AS i (key, fingerprint, token, state, expires_at)
         VALUES ($1, $2, $3, 'in_flight', now() + $4 * interval '1 millisecond')
         ON CONFLICT (key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token, state = 'in_flight',
               status = NULL, headers = NULL, body = NULL, expires_at = EXCLUDED.expires_at
           WHERE i.expires_at <= now()
         RETURNING token",
    )
    .bind(key)
    .bind(fingerprint)
    .bind(token)
    .bind(millis(lease))
}

/// What holds `key` when a claim did not win it: a completed record, a claim in flight, or a
/// request with another fingerprint.
async fn existing<'e>(
    database: &Database,
    executor: impl sqlx::PgExecutor<'e>,
    key: &str,
    fingerprint: &str,
) -> Result<Begin, StoreError> {
    let select = sqlx::query(
        "SELECT fingerprint, state, status, headers, body,
                GREATEST(0, (EXTRACT(EPOCH FROM (expires_at - now())) * 1000)::BIGINT) AS left_ms
         FROM chassis_idempotency WHERE key = $1",
    )
    .bind(key)
    .fetch_optional(executor);
    let row = database.call("SELECT", TABLE, select).await.map_err(error)?;
    let Some(row) = row else {
        // Released between the two statements: report it busy for a moment; the client's
        // retry claims it.
        return Ok(Begin::InFlight {
            lease_left: Duration::from_millis(100),
        });
    };
    let stored: String = row.try_get("fingerprint").map_err(error)?;
    if stored != fingerprint {
        return Ok(Begin::Mismatch);
    }
    let state: String = row.try_get("state").map_err(error)?;
    if state == "done" {
        let status: i32 = row.try_get("status").map_err(error)?;
        let headers: Option<String> = row.try_get("headers").map_err(error)?;
        let body: Option<Vec<u8>> = row.try_get("body").map_err(error)?;
        return Ok(Begin::Completed(StoredResponse {
            status: u16::try_from(status).map_err(error)?,
            headers: StoredResponse::decode_headers(headers.as_deref().unwrap_or("[]")),
            body: body.unwrap_or_default(),
        }));
    }
    let left: i64 = row.try_get("left_ms").map_err(error)?;
    Ok(Begin::InFlight {
        lease_left: Duration::from_millis(left.max(0) as u64),
    })
}

impl IdempotencyStore for PostgresStore {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(async move {
            let token = new_token();
            let claim = claim_query(key, fingerprint, &token, lease).fetch_optional(&self.pool);
            let claimed = self.database.call("INSERT", TABLE, claim).await.map_err(error)?;
            if claimed.is_some() {
                return Ok(Begin::Claimed { token });
            }
            existing(&self.database, &self.pool, key, fingerprint).await
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let update = complete_query(key, token, response, ttl).execute(&self.pool);
            self.database.call("UPDATE", TABLE, update).await.map_err(error)?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let delete =
                sqlx::query("DELETE FROM chassis_idempotency WHERE key = $1 AND token = $2 AND state = 'in_flight'")
                    .bind(key)
                    .bind(token)
                    .execute(&self.pool);
            self.database.call("DELETE", TABLE, delete).await.map_err(error)?;
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}
