//! The inbox (PostgreSQL): a handler's effect and the record that its message was processed
//! commit in one transaction.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use sqlx::postgres::PgPool;

use super::{Incoming, Message, MessageHandler};
use crate::storage::Transaction;
use crate::storage::span::Database;

/// Name of the inbox counter (`outcome`: `processed`, `duplicate`, `failed`).
///
/// Needs the cargo feature `postgres`.
pub const INBOX_TOTAL: &str = "chassis_inbox_messages_total";

/// The idempotent consumer on PostgreSQL: each message runs its handler inside a transaction
/// that first records `(consumer, message id)` in `chassis_processed_messages`, and commits only
/// when the handler succeeded. Effect and record commit together or not at all, so a message
/// delivered again (a redelivery after a crash, a repeat of the outbox relay) is acknowledged
/// without running the handler, and a failure leaves nothing behind for the retry to trip on.
///
/// Two deliveries of one message at the same time cannot both run: the second waits on the
/// first's row (up to `lock_timeout`, 10 s), then sees it processed, or runs if the first
/// rolled back.
///
/// ```no_run
/// # async fn demo(ctx: chassis::Context<()>) -> chassis::Result<()> {
/// use chassis::messaging::{Incoming, Inbox, Message, Event};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { order_id: i64 }
/// impl Message for OrderPlaced { const TYPE: &'static str = "shop.order.placed"; }
/// impl Event for OrderPlaced {}
///
/// let inbox = ctx.inbox()?;
/// let handler = inbox.handler("billing", |incoming: Incoming<OrderPlaced>, tx: chassis::storage::Transaction| async move {
///     let mut connection = tx.lock().await?;
///     sqlx::query("INSERT INTO invoices (order_id) VALUES ($1)")
///         .bind(incoming.message.order_id)
///         .execute(&mut *connection)
///         .await?;
///     Ok::<_, chassis::Error>(())
/// });
/// ctx.subscribe("billing", handler).await?;
/// # Ok(()) }
/// ```
///
/// Needs the cargo feature `postgres`.
#[derive(Debug, Clone)]
pub struct Inbox {
    pool: PgPool,
    database: Database,
}

impl Inbox {
    /// An inbox in `pool`'s database (the table comes with the idempotency migration, which
    /// the runtime runs when `postgres.migrate` is on).
    pub fn new(pool: PgPool) -> Self {
        Self {
            database: Database::postgres(&pool),
            pool,
        }
    }

    /// A handler for `consumer` (message ids are recorded per consumer, so two consumers of one
    /// message both process it) running `handler` with the message's transaction.
    pub fn handler<F>(&self, consumer: &str, handler: F) -> InboxHandler<F> {
        InboxHandler {
            pool: self.pool.clone(),
            database: self.database.clone(),
            consumer: consumer.into(),
            handler,
        }
    }
}

/// A message handler running in the [`Inbox`]'s transaction; made by [`Inbox::handler`].
///
/// Needs the cargo feature `postgres`.
pub struct InboxHandler<F> {
    pool: PgPool,
    database: Database,
    consumer: Arc<str>,
    handler: F,
}

impl<F: Clone> Clone for InboxHandler<F> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            database: self.database.clone(),
            consumer: self.consumer.clone(),
            handler: self.handler.clone(),
        }
    }
}

impl<F> std::fmt::Debug for InboxHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxHandler")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

/// How long a delivery waits for a concurrent delivery of the same message to end.
const CONCURRENT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a message through the inbox was not processed; the bus retries it.
///
/// Needs the cargo feature `postgres`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// The database failed: recording, committing or rolling back.
    #[error("the inbox's database failed: {0}")]
    Database(#[from] sqlx::Error),
    /// The handler failed; its transaction was rolled back.
    #[error("{0}")]
    Handler(String),
}

impl<M, F, Fut, E> MessageHandler<M> for InboxHandler<F>
where
    M: Message,
    F: Fn(Incoming<M>, Transaction) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    type Error = InboxError;
    type Future = BoxFuture<'static, Result<(), InboxError>>;

    fn handle(&self, incoming: Incoming<M>) -> Self::Future {
        let (pool, database) = (self.pool.clone(), self.database.clone());
        let (consumer, handler) = (self.consumer.clone(), self.handler.clone());
        Box::pin(async move {
            let count = |outcome: &'static str| {
                metrics::counter!(INBOX_TOTAL, "consumer" => consumer.to_string(), "outcome" => outcome).increment(1);
            };
            let mut tx = pool.begin().await?;
            // A concurrent delivery of the same message holds the row: wait for it, not forever
            // (and only here: the handler's own statements keep the session's lock_timeout).
            let record = async |connection: &mut sqlx::PgConnection| {
                sqlx::query(
                    "INSERT INTO chassis_processed_messages (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(&*consumer)
                .bind(&incoming.envelope.id)
                .execute(connection)
                .await
            };
            let record = crate::storage::postgres::with_lock_timeout(&mut tx, CONCURRENT_WAIT, record);
            let recorded = database
                .call("INSERT", Some("chassis_processed_messages"), record)
                .await?
                .rows_affected();
            if recorded == 0 {
                tx.rollback().await?;
                count("duplicate");
                tracing::info!(consumer = %consumer, message_id = %incoming.envelope.id, "duplicate message skipped");
                return Ok(());
            }
            let shared = Transaction::new(tx);
            let result = handler(incoming, shared.clone()).await;
            let tx = shared.finish().await.expect("only the inbox finishes the transaction");
            match result {
                Ok(()) => {
                    database.call("COMMIT", None, tx.commit()).await?;
                    count("processed");
                    Ok(())
                }
                Err(error) => {
                    tx.rollback().await?;
                    count("failed");
                    Err(InboxError::Handler(error.to_string()))
                }
            }
        })
    }
}

/// Deletes processed-message records older than `retention`, a batch at a time; returns how
/// many. A message redelivered after its record is gone is processed again, so keep the records
/// longer than any redelivery can come (the brokers' own retention).
pub(crate) async fn delete_processed(pool: &PgPool, retention: std::time::Duration) -> Result<u64, sqlx::Error> {
    crate::storage::postgres::delete_in_batches(
        pool,
        "DELETE FROM chassis_processed_messages WHERE (consumer, message_id) IN (
             SELECT consumer, message_id FROM chassis_processed_messages
             WHERE processed_at < now() - $1 * interval '1 millisecond' LIMIT 10000)",
        retention,
    )
    .await
}
