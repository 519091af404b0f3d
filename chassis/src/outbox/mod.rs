//! The transactional outbox (PostgreSQL): a message is published if and only if the
//! transaction that wrote it commits.
//!
//! Each row belongs to its origin, the messaging namespace and service name that wrote it;
//! services sharing a database publish only their own rows.
//!
//! [`Outbox::add`] writes the message's envelope into `chassis_outbox` inside the caller's
//! transaction, next to the business rows that caused it. The [`Relay`], which the runtime
//! runs in every replica, publishes the rows in sequence order with the broker's confirmation
//! and marks them sent; one replica publishes at a time (it holds a session advisory lock), the
//! others stand by. It is woken by `LISTEN/NOTIFY` when a transaction with new rows commits, and
//! looks every `outbox.poll_interval` besides.
//!
//! Guarantees:
//!
//! - A row is published at least once, after its transaction committed, and never when the
//!   transaction rolled back: there is no "saved but not published" and no "published but not
//!   saved".
//! - Rows of one subject ([`Publish::subject`](crate::messaging::Publish)) are numbered in the
//!   order their transactions committed, and published in that order. When a publish fails
//!   partway through a pipelined chunk (`outbox.max_in_flight` > 1), rows after the failed one
//!   may already have reached the broker; they are published again after it.
//! - A relay that dies between publishing and marking publishes nothing twice that a consumer
//!   sees twice: every envelope carries a stable id (NATS drops the repeat within its duplicate
//!   window, by `Nats-Msg-Id`), and the consumers' [`Inbox`](crate::messaging::Inbox) drops
//!   repeats whenever they arrive.
//!
//! Metrics: `chassis_outbox_pending` (rows not yet published), `chassis_outbox_lag_seconds`
//! (age of the oldest of them), `chassis_outbox_published_total`,
//! `chassis_outbox_publish_failures_total`. Readiness: `outbox:lag` warns while the lag exceeds
//! `outbox.lag_warning`.

mod config;
#[cfg(feature = "postgres")]
mod relay;
#[cfg(feature = "postgres")]
mod writer;

#[cfg(feature = "postgres")]
use std::time::Duration;

#[cfg(feature = "postgres")]
use sqlx::postgres::PgPool;

pub use config::OutboxConfig;
#[cfg(feature = "postgres")]
pub use relay::RELAY_APPLICATION_NAME;
#[cfg(feature = "postgres")]
pub use relay::Relay;
#[cfg(feature = "postgres")]
pub use writer::Outbox;

#[cfg(feature = "postgres")]
use crate::health::{Check, CheckResult};
#[cfg(feature = "postgres")]
use crate::messaging::MessagingError;

/// The SQL that creates `chassis_outbox`; the runtime runs it when `postgres.migrate` is on.
///
/// Needs the cargo feature `postgres`.
#[cfg(feature = "postgres")]
pub const OUTBOX_MIGRATION: &str = include_str!("../../migrations/0003_chassis_outbox.sql");

/// Name of the gauge of rows not yet published.
pub const PENDING: &str = "chassis_outbox_pending";
/// Name of the gauge of the age of the oldest row not yet published.
pub const LAG_SECONDS: &str = "chassis_outbox_lag_seconds";
/// Name of the counter of rows published.
pub const PUBLISHED_TOTAL: &str = "chassis_outbox_published_total";
/// Name of the counter of failed publish rounds.
pub const PUBLISH_FAILURES_TOTAL: &str = "chassis_outbox_publish_failures_total";

/// The notification channel a commit with new rows signals on.
#[cfg(feature = "postgres")]
const CHANNEL: &str = "chassis_outbox";

/// Whose rows these are: a service's relay publishes the rows of its messaging namespace and
/// service name, so services (and tests) sharing a database keep to their own.
#[cfg(feature = "postgres")]
fn origin(namespace: &str, service: &str) -> String {
    format!("{namespace}/{service}")
}

/// Why a message could not be added to the outbox.
#[cfg(feature = "postgres")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] MessagingError),
    /// The database refused the write; the caller's transaction should be rolled back.
    #[error("writing to the outbox failed: {0}")]
    Database(#[from] sqlx::Error),
}

#[cfg(feature = "postgres")]
/// `outbox:lag`: `warn` while the oldest unpublished row is older than `lag_warning`, the
/// pending rows as the observed value; `fail` when the database cannot be asked.
pub(crate) fn health_check(pool: PgPool, namespace: &str, service: &str, lag_warning: Duration) -> Check {
    let origin: std::sync::Arc<str> = origin(namespace, service).into();
    Check::new("outbox:lag", move || {
        let (pool, origin) = (pool.clone(), origin.clone());
        async move {
            match relay::backlog(&pool, &origin).await {
                Ok((pending, lag)) if lag > lag_warning => CheckResult::warn(format!(
                    "{pending} messages wait to be published, the oldest for {}",
                    crate::config::duration::format(&Duration::from_secs(lag.as_secs()))
                ))
                .with_observed_value(pending, "messages"),
                Ok((pending, _)) => CheckResult::pass().with_observed_value(pending, "messages"),
                Err(error) => CheckResult::fail(format!("cannot read the outbox: {error}")),
            }
        }
    })
    .component_type("component")
}

#[cfg(feature = "postgres")]
/// Deletes rows published more than `retention` ago, a batch at a time; returns how many.
pub(crate) async fn delete_sent(pool: &PgPool, retention: Duration) -> Result<u64, sqlx::Error> {
    crate::storage::postgres::delete_in_batches(
        pool,
        "DELETE FROM chassis_outbox WHERE seq IN (
             SELECT seq FROM chassis_outbox
             WHERE sent_at < now() - $1 * interval '1 millisecond' LIMIT 10000)",
        retention,
    )
    .await
}

/// HELP and units for the metrics of this module.
pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(PENDING, "Outbox rows not yet published.");
    metrics::describe_gauge!(
        LAG_SECONDS,
        metrics::Unit::Seconds,
        "Age of the oldest outbox row not yet published."
    );
    metrics::describe_counter!(PUBLISHED_TOTAL, "Outbox rows published.");
    metrics::describe_counter!(PUBLISH_FAILURES_TOTAL, "Outbox publish rounds that failed.");
}
