//! What the shop's services share: the messages they exchange ([`events`]), how each picks its
//! stores from config ([`StoreSettings`]), and the idempotent subscription they all use
//! ([`subscribe_once`]).

pub mod events;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chassis::Context;
use chassis::http::Problem;
use chassis::idempotency::{IdempotencyStore, IdempotentConsumer, MemoryStore, PostgresStore, Processed, RedisStore};
use chassis::messaging::{Event, Incoming, Message, Publish};
use chassis::saga::{MemorySagaStore, PostgresSagaStore, SagaStore};
use serde::Deserialize;

/// `[store]`: where a service keeps idempotency keys, processed message ids and saga state.
///
/// ```toml
/// [store]
/// kind = "postgres"                                # memory (default) | redis | postgres
/// url = "postgres://postgres@127.0.0.1:5432/test"  # default: the local server of that kind
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `memory`, `redis` or `postgres`.
    pub kind: StoreKind,
    /// The server's URL; the local default of the kind when absent.
    pub url: Option<String>,
}

/// The kinds of store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process (lost on restart).
    #[default]
    Memory,
    /// Redis: idempotency only.
    Redis,
    /// PostgreSQL: idempotency and sagas.
    Postgres,
}

impl StoreSettings {
    fn url(&self) -> &str {
        match (&self.url, self.kind) {
            (Some(url), _) => url,
            (None, StoreKind::Redis) => "redis://127.0.0.1:6379",
            (None, _) => "postgres://postgres@127.0.0.1:5432/test",
        }
    }

    /// The idempotency store, connected (and for PostgreSQL, migrated). `namespace` separates
    /// services sharing one Redis.
    pub async fn idempotency(&self, namespace: &str) -> chassis::Result<Arc<dyn IdempotencyStore>> {
        Ok(match self.kind {
            StoreKind::Memory => Arc::new(MemoryStore::default()),
            StoreKind::Redis => Arc::new(RedisStore::connect(self.url(), namespace).await?),
            StoreKind::Postgres => {
                let store = PostgresStore::connect(self.url()).await?;
                store.migrate().await?;
                Arc::new(store)
            }
        })
    }

    /// The saga store, connected and migrated.
    pub async fn sagas(&self) -> chassis::Result<Arc<dyn SagaStore>> {
        Ok(match self.kind {
            StoreKind::Memory => Arc::new(MemorySagaStore::default()),
            StoreKind::Redis => {
                return Err(chassis::Error::msg(
                    "store.kind = \"redis\" cannot hold saga state; use \"postgres\" (or \"memory\" for a demo)",
                ));
            }
            StoreKind::Postgres => {
                let store = PostgresSagaStore::connect(self.url()).await?;
                store.migrate().await?;
                Arc::new(store)
            }
        })
    }
}

/// The settings of the back-end services: just their store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// `[store]`.
    pub store: StoreSettings,
}

/// The future of a [`deduplicated`] handler.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Wraps `handler` in an idempotent consumer named `consumer` on `store`: a redelivered message
/// that was handled already is acknowledged without running `handler` again. Handler errors
/// go back to the bus, which retries and finally dead-letters.
pub fn deduplicated<M, F, Fut>(
    store: &Arc<dyn IdempotencyStore>,
    consumer: String,
    handler: F,
) -> impl Fn(Incoming<M>) -> HandlerFuture + Clone + Send + Sync + 'static
where
    M: Message,
    F: Fn(Incoming<M>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let consumer = IdempotentConsumer::new(store.clone(), consumer);
    move |incoming: Incoming<M>| {
        let (consumer, handler) = (consumer.clone(), handler.clone());
        Box::pin(async move {
            let id = incoming.envelope.id.clone();
            match consumer.process(&id, || handler(incoming)).await {
                Ok(Processed::Done(())) | Ok(Processed::Duplicate) => Ok(()),
                Err(error) => Err(error.to_string()),
            }
        })
    }
}

/// Subscribes `group` to `E` with a [`deduplicated`] handler.
pub async fn subscribe_once<T, E, F, Fut>(
    ctx: &Context<T>,
    store: &Arc<dyn IdempotencyStore>,
    group: &str,
    handler: F,
) -> chassis::Result<()>
where
    T: Send + Sync + 'static,
    E: Event,
    F: Fn(Incoming<E>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    ctx.subscribe(group, deduplicated(store, format!("{group}:{}", E::TYPE), handler))
        .await?;
    Ok(())
}

/// Publish options for a message caused by `incoming`: same subject, correlation carried on.
pub fn caused_by<E>(incoming: &Incoming<E>) -> Publish {
    Publish {
        subject: incoming.envelope.subject.clone(),
        caused_by: Some(incoming.envelope.clone()),
    }
}

/// A 404 problem: no `what` with that id.
pub fn not_found(what: &str, id: &str) -> Response {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
        .with_detail(format!("no {what} with id {id}"))
        .into_response()
}
