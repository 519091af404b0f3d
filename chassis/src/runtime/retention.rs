//! Deleting the chassis' old rows from PostgreSQL, every `retention.interval`.

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::RetentionConfig;

/// Name of the counter of rows deleted by retention (`table`).
///
/// Needs the cargo feature `postgres`.
pub const RETENTION_DELETED_TOTAL: &str = "chassis_retention_deleted_total";

/// Deletes old rows at start and then every `config.interval` until `shutdown`.
pub(super) async fn run(pool: PgPool, config: RetentionConfig, shutdown: CancellationToken) {
    loop {
        delete_expired(&pool, &config).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.interval) => {}
        }
    }
}

/// One round: expired idempotency keys, processed-message records, published outbox rows and
/// finished sagas older than their retention. A table that fails is logged and tried again at
/// the next round.
pub(super) async fn delete_expired(pool: &PgPool, config: &RetentionConfig) -> u64 {
    let rounds: [(&str, Result<u64, sqlx::Error>); 4] = [
        (
            "chassis_idempotency",
            crate::idempotency::PostgresStore::delete_expired(pool).await,
        ),
        (
            "chassis_processed_messages",
            crate::messaging::delete_processed(pool, config.processed_messages).await,
        ),
        ("chassis_outbox", crate::outbox::delete_sent(pool, config.outbox).await),
        (
            "chassis_sagas",
            crate::saga::PostgresSagaStore::delete_finished(pool, config.sagas).await,
        ),
    ];
    let mut total = 0;
    for (table, deleted) in rounds {
        match deleted {
            Ok(0) => {}
            Ok(rows) => {
                total += rows;
                metrics::counter!(RETENTION_DELETED_TOTAL, "table" => table).increment(rows);
                tracing::debug!(table, rows, "deleted rows past their retention");
            }
            Err(error) => {
                tracing::warn!(table, %error, "deleting rows past their retention failed; trying again at the next round")
            }
        }
    }
    total
}
