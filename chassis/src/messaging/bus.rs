//! The service's handle on the message bus: publish events, send commands, subscribe handlers.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::consumer::Consumer;
use super::{
    Command, Envelope, Event, Kind, Message, MessageHandler, MessagingConfig, MessagingError, PUBLISHED_TOTAL,
    RawMessage, Transport,
};

/// Optional attributes of a message being published.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    /// `subject`: what it is about.
    pub subject: Option<String>,
    /// The message that caused this one: sets the correlation and causation ids.
    pub caused_by: Option<Envelope>,
}

/// The service's handle on the message bus. Cheap to clone.
#[derive(Clone)]
pub struct Bus {
    transport: Arc<dyn Transport>,
    source: Arc<str>,
    config: Arc<MessagingConfig>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("transport", &self.transport.name())
            .field("source", &self.source)
            .finish()
    }
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
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
        }
    }

    /// The transport.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
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
        let body = serde_json::to_vec(message).map_err(|e| MessagingError::Encode {
            kind: M::TYPE,
            reason: e.to_string(),
        })?;
        let span = tracing::info_span!(
            target: "chassis::messaging",
            "publish",
            otel.kind = "producer",
            otel.name = %format!("publish {}", M::TYPE),
            messaging.system = self.transport.name(),
            messaging.operation.type = "publish",
            messaging.destination.name = M::TYPE,
        );
        let mut trace_headers = http::HeaderMap::new();
        crate::telemetry::inject_context(&span.context(), &mut trace_headers);
        let header = |name: &str| trace_headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let id = uuid::Uuid::now_v7().to_string();
        let envelope = Envelope {
            correlation_id: options
                .caused_by
                .as_ref()
                .map(|c| c.correlation_id.clone())
                .unwrap_or_else(|| id.clone()),
            causation_id: options.caused_by.as_ref().map(|c| c.id.clone()),
            id,
            source: self.source.to_string(),
            kind: M::TYPE.to_owned(),
            specversion: "1.0".into(),
            time: rfc3339_now(),
            datacontenttype: "application/json".into(),
            subject: options.subject,
            traceparent: header("traceparent"),
            tracestate: header("tracestate"),
        };
        let raw = RawMessage {
            headers: envelope.to_headers(),
            body: Bytes::from(body),
        };
        self.transport.publish(kind, M::TYPE, raw).instrument(span).await?;
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
        for _ in 0..self.config.concurrency {
            let subscription = self.transport.subscribe(kind, M::TYPE, group).await?;
            let consumer = Consumer::new(self.transport.clone(), self.config.clone(), group, handler.clone());
            tasks.push(tokio::spawn(consumer.run(subscription, shutdown.clone())));
        }
        Ok(tasks)
    }
}
