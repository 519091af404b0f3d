//! Adding messages to the outbox in the service's own transaction.

use std::sync::Arc;

use sqlx::PgConnection;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{CHANNEL, OutboxError};
use crate::messaging::{Command, Envelope, Event, Kind, Message, Publish};
use crate::storage::span::Database;

/// Adds messages to the outbox inside the caller's transaction: they are published (by the
/// relay the runtime runs) if and only if the transaction commits. Cheap to clone.
///
/// ```no_run
/// # async fn demo(ctx: chassis::Context<()>) -> chassis::Result<()> {
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { order_id: i64 }
/// impl chassis::messaging::Message for OrderPlaced { const TYPE: &'static str = "shop.order.placed"; }
/// impl chassis::messaging::Event for OrderPlaced {}
///
/// let (pool, outbox) = (ctx.postgres()?, ctx.outbox()?);
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO orders (id) VALUES ($1)").bind(42_i64).execute(&mut *tx).await?;
/// outbox.add(&mut tx, &OrderPlaced { order_id: 42 }).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
///
/// Needs the cargo feature `postgres`.
#[derive(Debug, Clone)]
pub struct Outbox {
    source: Arc<str>,
    origin: Arc<str>,
}

impl Outbox {
    /// An outbox for messages published as `source` (the service's name) into the messaging
    /// namespace `namespace`; the relay of that service and namespace publishes them.
    pub fn new(source: impl Into<Arc<str>>, namespace: &str) -> Self {
        let source = source.into();
        Self {
            origin: super::origin(namespace, &source).into(),
            source,
        }
    }

    /// Adds `event`; it goes to every subscribed group once the transaction commits.
    pub async fn add<E: Event>(&self, connection: &mut PgConnection, event: &E) -> Result<Envelope, OutboxError> {
        self.insert(connection, Kind::Event, event, Publish::default()).await
    }

    /// Adds `event` with a subject or a cause. Messages of one subject are published in the
    /// order their transactions committed.
    pub async fn add_with<E: Event>(
        &self,
        connection: &mut PgConnection,
        event: &E,
        options: Publish,
    ) -> Result<Envelope, OutboxError> {
        self.insert(connection, Kind::Event, event, options).await
    }

    /// Adds `command` for the group that handles it.
    pub async fn add_command<C: Command>(
        &self,
        connection: &mut PgConnection,
        command: &C,
        options: Publish,
    ) -> Result<Envelope, OutboxError> {
        self.insert(connection, Kind::Command, command, options).await
    }

    async fn insert<M: Message>(
        &self,
        connection: &mut PgConnection,
        kind: Kind,
        message: &M,
        options: Publish,
    ) -> Result<Envelope, OutboxError> {
        let span = tracing::info_span!(
            target: "chassis::outbox",
            "create",
            otel.kind = "producer",
            otel.name = %format!("create {}", M::TYPE),
            messaging.operation.type = "create",
            messaging.operation.name = "outbox",
            messaging.destination.name = M::TYPE,
        );
        let subject = options.subject.clone().unwrap_or_default();
        let (envelope, raw) = crate::messaging::encode(&self.source, message, options, &span.context())?;
        let write = async {
            // Rows of one subject get their sequence numbers in commit order: the lock is held
            // until this transaction ends, so the next writer of the subject numbers after it.
            sqlx::query(
                "SELECT pg_advisory_xact_lock(hashtext('chassis_outbox'), hashtext($1::text || '/' || $2::text))",
            )
            .bind(&*self.origin)
            .bind(&subject)
            .execute(&mut *connection)
            .await?;
            let headers = serde_json::to_string(&raw.headers).expect("string pairs serialize");
            sqlx::query(
                "INSERT INTO chassis_outbox (origin, id, kind, message_type, headers, body) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&*self.origin)
            .bind(&envelope.id)
            .bind(kind.as_str())
            .bind(M::TYPE)
            .bind(headers)
            .bind(raw.body.as_ref())
            .execute(&mut *connection)
            .await?;
            // Delivered at commit, and not at all on rollback: the relay wakes for rows that exist.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(&*self.origin)
                .execute(&mut *connection)
                .await
        };
        Database::postgres_unknown()
            .call("INSERT", Some("chassis_outbox"), write)
            .instrument(span)
            .await?;
        Ok(envelope)
    }
}
