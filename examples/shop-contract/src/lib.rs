//! What the shop's services share: the messages they exchange ([`events`]), how each keeps its
//! state ([`Persistence`]: PostgreSQL with the outbox and the inbox when `[postgres]` is
//! configured, memory otherwise), and how each applies a message once.

pub mod events;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chassis::Context;
use chassis::http::Problem;
use chassis::idempotency::{
    IdempotencyConfig, IdempotencyLayer, IdempotencyStore, IdempotentConsumer, MemoryStore, PostgresStore, Processed,
    RedisStore,
};
use chassis::messaging::{Bus, Command, Event, Inbox, Incoming, Message, MessageHandler, Publish};
use chassis::outbox::Outbox;
use chassis::saga::{MemorySagaStore, PostgresSagaStore, SagaStore};
use chassis::storage::Transaction;
use serde::Deserialize;
use sqlx::PgPool;

/// `[store]`: where a service keeps what it needs to handle a request or a message once, when
/// it keeps its state in memory. With `[postgres]` configured (the chassis' own section), the
/// service keeps everything in PostgreSQL instead and this is not used.
///
/// ```toml
/// [store]
/// kind = "redis"   # memory (default) | redis: the connection is the chassis' [redis] section
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `memory` or `redis`.
    pub kind: StoreKind,
}

/// The kinds of store for a service that keeps its state in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In this process (lost on restart).
    #[default]
    Memory,
    /// Redis (the chassis' `[redis]` connection): idempotency keys and processed message ids.
    Redis,
}

/// The settings of the back-end services: just their store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceSettings {
    /// `[store]`.
    pub store: StoreSettings,
}

/// How a service of the shop keeps its state, decided by its configuration: in PostgreSQL when
/// the chassis' `[postgres]` section is set, in memory otherwise.
#[derive(Clone)]
pub enum Persistence {
    /// State in memory; requests and messages deduplicated by this store (memory or Redis). An
    /// effect and its record are separate writes here, and an event is published after the
    /// state changed: the demo's trade-off, not one for production.
    Memory(Arc<dyn IdempotencyStore>),
    /// State in PostgreSQL: an idempotent request commits its effect with its stored response,
    /// a message is applied in the inbox's transaction, and events go out through the outbox of
    /// the same transaction.
    Postgres {
        /// The service's pool.
        pool: PgPool,
        /// The transactional outbox.
        outbox: Outbox,
        /// The inbox.
        inbox: Inbox,
    },
}

impl std::fmt::Debug for Persistence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(store) => write!(f, "Persistence::Memory({})", store.name()),
            Self::Postgres { .. } => f.write_str("Persistence::Postgres"),
        }
    }
}

impl Persistence {
    /// The persistence `ctx`'s configuration asks for; `namespace` separates the keys of
    /// services sharing one Redis. With PostgreSQL, `schema` (the service's own tables, empty
    /// for none) is created.
    pub async fn of<T: Send + Sync + 'static>(
        ctx: &Context<T>,
        store: &StoreSettings,
        namespace: &str,
        schema: &'static str,
    ) -> chassis::Result<Self> {
        if let Ok(pool) = ctx.postgres() {
            if !schema.is_empty() {
                chassis::storage::migrate(pool, &[schema]).await?;
            }
            return Ok(Self::Postgres {
                pool: pool.clone(),
                outbox: ctx.outbox()?,
                inbox: ctx.inbox()?,
            });
        }
        Ok(Self::Memory(match store.kind {
            StoreKind::Memory => Arc::new(MemoryStore::default()),
            StoreKind::Redis => Arc::new(RedisStore::from_connection(ctx.redis()?, namespace)),
        }))
    }

    /// The `Idempotency-Key` layer for the service's state-changing routes, with `config`
    /// (its namespace: the service's name; whether it needs an identity).
    pub fn idempotency(&self, config: IdempotencyConfig) -> Result<IdempotencyLayer, chassis::config::ConfigError> {
        match self {
            Self::Memory(store) => IdempotencyLayer::new(store.clone(), config),
            Self::Postgres { pool, .. } => {
                IdempotencyLayer::transactional(PostgresStore::from_pool(pool.clone()), config)
            }
        }
    }

    /// Subscribes `group` to `E`, applying each event once: `handler` gets the event and the
    /// [`Work`] its effect goes into (the inbox's transaction with PostgreSQL).
    pub async fn subscribe<T, E, F, Fut>(&self, ctx: &Context<T>, group: &str, handler: F) -> chassis::Result<()>
    where
        T: Send + Sync + 'static,
        E: Event,
        F: Fn(Incoming<E>, Work) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let once = self.once(ctx.bus(), format!("{group}:{}", E::TYPE), handler);
        ctx.subscribe(group, move |incoming: Incoming<E>| once(incoming))
            .await?;
        Ok(())
    }

    /// Handles the command `C`, applying each once, like [`Persistence::subscribe`].
    pub async fn handle<T, C, F, Fut>(&self, ctx: &Context<T>, handler: F) -> chassis::Result<()>
    where
        T: Send + Sync + 'static,
        C: Command,
        F: Fn(Incoming<C>, Work) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let once = self.once(ctx.bus(), C::TYPE.to_owned(), handler);
        ctx.handle(move |incoming: Incoming<C>| once(incoming)).await?;
        Ok(())
    }

    /// `handler` behind the consumer named `consumer`: a redelivered message that was applied
    /// already is acknowledged without running it again.
    fn once<M, F, Fut>(&self, bus: &Bus, consumer: String, handler: F) -> OnceHandler<M>
    where
        M: Message,
        F: Fn(Incoming<M>, Work) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        match self {
            Self::Memory(store) => {
                let bus = bus.clone();
                let consumer = IdempotentConsumer::new(store.clone(), consumer);
                Arc::new(move |incoming: Incoming<M>| {
                    let (consumer, handler, bus) = (consumer.clone(), handler.clone(), bus.clone());
                    Box::pin(async move {
                        let id = incoming.envelope.id.clone();
                        match consumer.process(&id, || handler(incoming, Work::Memory(bus))).await {
                            Ok(Processed::Done(())) | Ok(Processed::Duplicate) => Ok(()),
                            Err(error) => Err(error.to_string()),
                        }
                    }) as HandlerFuture
                })
            }
            Self::Postgres { outbox, inbox, .. } => {
                let outbox = outbox.clone();
                let inboxed = inbox.handler(&consumer, move |incoming: Incoming<M>, tx: Transaction| {
                    handler(
                        incoming,
                        Work::Postgres {
                            tx,
                            outbox: outbox.clone(),
                        },
                    )
                });
                Arc::new(move |incoming: Incoming<M>| {
                    let attempt = inboxed.handle(incoming);
                    Box::pin(async move { attempt.await.map_err(|error| error.to_string()) }) as HandlerFuture
                })
            }
        }
    }

    /// The work of a request behind [`Persistence::idempotency`]: its transaction with
    /// PostgreSQL (the layer hands it to the handler), the bus in memory.
    pub fn work(&self, bus: &Bus, tx: Option<Transaction>) -> Result<Work, String> {
        match (self, tx) {
            (Self::Memory(_), _) => Ok(Work::Memory(bus.clone())),
            (Self::Postgres { outbox, .. }, Some(tx)) => Ok(Work::Postgres {
                tx,
                outbox: outbox.clone(),
            }),
            (Self::Postgres { .. }, None) => Err("the route has no transaction".into()),
        }
    }

    /// The pool, with PostgreSQL.
    pub fn pool(&self) -> Option<&PgPool> {
        match self {
            Self::Memory(_) => None,
            Self::Postgres { pool, .. } => Some(pool),
        }
    }
}

/// Where a handler's effect goes: nowhere durable in memory (the state is the service's own
/// maps, events go straight to the bus), or a PostgreSQL transaction whose events go to the
/// outbox in it.
#[derive(Debug)]
pub enum Work {
    /// State in memory; events published at once.
    Memory(Bus),
    /// The unit of work's transaction and the outbox.
    Postgres {
        /// The transaction the effect is written in.
        tx: Transaction,
        /// The outbox its events go to.
        outbox: Outbox,
    },
}

impl Work {
    /// Publishes `event`, caused by what this work handles: at once in memory, with the
    /// transaction's commit with PostgreSQL.
    pub async fn publish<E: Event>(&self, event: &E, options: Publish) -> Result<(), String> {
        match self {
            Self::Memory(bus) => bus
                .publish_with(event, options)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Self::Postgres { tx, outbox } => {
                let mut connection = tx.lock().await.map_err(|e| e.to_string())?;
                outbox
                    .add_with(&mut connection, event, options)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// The transaction, with PostgreSQL.
    pub fn transaction(&self) -> Option<&Transaction> {
        match self {
            Self::Memory(_) => None,
            Self::Postgres { tx, .. } => Some(tx),
        }
    }
}

/// The orchestrator's saga store: PostgreSQL when `[postgres]` is configured, memory otherwise.
pub fn saga_store<T: Send + Sync + 'static>(ctx: &Context<T>) -> Arc<dyn SagaStore> {
    match ctx.postgres() {
        Ok(pool) => Arc::new(PostgresSagaStore::from_pool(pool.clone())),
        Err(_) => Arc::new(MemorySagaStore::default()),
    }
}

/// The future of one attempt of a shop handler.
type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A handler that applies each message once.
type OnceHandler<M> = Arc<dyn Fn(Incoming<M>) -> HandlerFuture + Send + Sync>;

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
