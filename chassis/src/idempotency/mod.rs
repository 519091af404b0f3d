//! Idempotency: the HTTP `Idempotency-Key` layer and the idempotent consumer, over one store
//! trait with in-memory, Redis (feature `redis`) and PostgreSQL (feature `postgres`) stores.
//!
//! See [`IdempotencyLayer`] for the HTTP semantics and [`IdempotentConsumer`] for messages.
//!
//! Metrics: `chassis_idempotency_requests_total{outcome}` with outcome `new`, `replayed`,
//! `conflict`, `mismatch`, `rejected` or `unavailable`;
//! `chassis_idempotent_consumer_messages_total{consumer,outcome}` with `processed`,
//! `duplicate`, `in_flight` or `failed`.

mod consumer;
mod layer;
mod memory;
#[cfg(feature = "postgres")]
mod postgres_store;
#[cfg(feature = "redis")]
mod redis_store;
mod store;

pub use consumer::{CONSUMED_TOTAL, ConsumeError, IdempotentConsumer, Processed};
pub use layer::{Idempotency, IdempotencyConfig, IdempotencyLayer, REPLAYED_HEADER, REQUESTS_TOTAL, ResponseFuture};
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres_store::{MIGRATION, PostgresStore};
#[cfg(feature = "redis")]
pub use redis_store::RedisStore;
pub use store::{Begin, IdempotencyStore, StoreError, StoredResponse};

/// HELP and units for the metrics of this module.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        layer::REQUESTS_TOTAL,
        "Requests seen by the Idempotency-Key layer, by outcome."
    );
    metrics::describe_counter!(
        consumer::CONSUMED_TOTAL,
        "Messages seen by idempotent consumers, by consumer and outcome (processed, duplicate, in_flight, failed)."
    );
}
