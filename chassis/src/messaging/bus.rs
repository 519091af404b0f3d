//! The service's handle on the message bus: publish events, send commands, subscribe handlers.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::consumer::{Consumer, supervise};
use super::consumers::ConsumerStates;
use super::envelope::encode;
use super::{
    Command, Envelope, Event, Kind, Message, MessageHandler, MessagingConfig, MessagingError, PUBLISHED_TOTAL, Publish,
    Transport,
};

/// The service's handle on the message bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    transport: Arc<dyn Transport>,
    source: Arc<str>,
    config: Arc<MessagingConfig>,
    consumers: ConsumerStates,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("transport", &self.transport.name())
            .field("source", &self.source)
            .finish()
    }
}

impl Bus {
    /// A bus publishing as `source` (the service name) over `transport`.
    pub fn new(transport: impl Transport, source: impl Into<Arc<str>>, config: MessagingConfig) -> Self {
        Self::from_arc(Arc::new(transport), source, config)
    }

    /// As [`Bus::new`], with a shared transport.
    pub fn from_arc(transport: Arc<dyn Transport>, source: impl Into<Arc<str>>, config: MessagingConfig) -> Self {
        Self {
            transport,
            source: source.into(),
            config: Arc::new(config),
            consumers: ConsumerStates::default(),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    /// The service name messages are published as (their CloudEvents `source`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether any consumer was started on this bus.
    pub(crate) fn has_consumers(&self) -> bool {
        !self.consumers.is_empty()
    }

    /// `messaging:consumers`: fails while any consumer of this bus is down (its subscription
    /// ended and is being made again). The runtime registers it.
    pub fn consumers_check(&self) -> crate::health::Check {
        self.consumers.health_check()
    }

    /// Publishes an event to every subscribed group; returns its envelope once the broker
    /// confirmed it.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Envelope, MessagingError> {
        self.emit(Kind::Event, event, Publish::default()).await
    }

    /// Sends a command to the group that handles it.
    pub async fn send<C: Command>(&self, command: &C) -> Result<Envelope, MessagingError> {
        self.emit(Kind::Command, command, Publish::default()).await
    }

    /// Publishes an event with a subject or a cause.
    pub async fn publish_with<E: Event>(&self, event: &E, options: Publish) -> Result<Envelope, MessagingError> {
        self.emit(Kind::Event, event, options).await
    }

    /// Sends a command with a subject or a cause.
    pub async fn send_with<C: Command>(&self, command: &C, options: Publish) -> Result<Envelope, MessagingError> {
        self.emit(Kind::Command, command, options).await
    }

    async fn emit<M: Message>(&self, kind: Kind, message: &M, options: Publish) -> Result<Envelope, MessagingError> {
        let span = publish_span(&*self.transport, kind, M::TYPE);
        let (envelope, raw) = encode(&self.source, message, options, &span.context())?;
        span.record("messaging.message.id", envelope.id.as_str());
        if let Err(error) = self
            .transport
            .publish(kind, M::TYPE, raw)
            .instrument(span.clone())
            .await
        {
            publish_failed(&span);
            return Err(error);
        }
        metrics::counter!(PUBLISHED_TOTAL, "type" => M::TYPE, "kind" => kind.as_str()).increment(1);
        Ok(envelope)
    }

    /// Subscribes `group` to events of type `M` (or, for a [`Command`], registers the handler
    /// of `M`) and runs `messaging.concurrency` consumers until `shutdown` fires; they finish
    /// the message in hand before stopping. Returns the consumers' tasks.
    pub async fn subscribe<M, H>(
        &self,
        group: &str,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, MessagingError>
    where
        M: Message,
        H: MessageHandler<M>,
    {
        self.subscribe_kind(Kind::Event, group, handler, shutdown).await
    }

    /// Registers the handler of command `M` (one group, named after the command type).
    pub async fn handle<C, H>(
        &self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, MessagingError>
    where
        C: Command,
        H: MessageHandler<C>,
    {
        self.subscribe_kind(Kind::Command, C::TYPE, handler, shutdown).await
    }

    async fn subscribe_kind<M, H>(
        &self,
        kind: Kind,
        group: &str,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, MessagingError>
    where
        M: Message,
        H: MessageHandler<M>,
    {
        let mut tasks = Vec::new();
        for n in 0..self.config.concurrency {
            let subscription = self.transport.subscribe(kind, M::TYPE, group).await?;
            let consumer = Consumer::new(
                self.transport.clone(),
                self.config.clone(),
                kind,
                group,
                handler.clone(),
            );
            let name = format!("{group}/{}#{n}", M::TYPE);
            // Subscribed: up from here, before its task first runs.
            self.consumers.set(&name, true);
            tasks.push(tokio::spawn(supervise(
                consumer,
                subscription,
                shutdown.clone(),
                self.consumers.clone(),
                name,
            )));
        }
        Ok(tasks)
    }
}

/// The PRODUCER span of one message published or sent over `transport`, by the bus or by the
/// outbox relay.
pub(crate) fn publish_span(transport: &dyn Transport, kind: Kind, message_type: &str) -> tracing::Span {
    let destination = transport.destination(kind, message_type);
    let operation = match kind {
        Kind::Event => "publish",
        Kind::Command => "send",
    };
    tracing::info_span!(
        target: "chassis::messaging",
        "publish",
        otel.kind = "producer",
        otel.name = %format!("{operation} {destination}"),
        messaging.system = transport.name(),
        messaging.operation.type = "send",
        messaging.operation.name = operation,
        messaging.destination.name = %destination,
        messaging.message.id = tracing::field::Empty,
        message.type = message_type,
        otel.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// Marks a [`publish_span`] failed: the broker refused the message or could not be reached.
pub(crate) fn publish_failed(span: &tracing::Span) {
    span.record("otel.status_code", "error");
    span.record("error.type", "publish_failed");
}
