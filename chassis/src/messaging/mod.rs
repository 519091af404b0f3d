//! Events and commands: typed messages in CloudEvents envelopes, fanned out to groups, handled
//! at least once, retried, dead-lettered, traced across the broker.
//!
//! - An **event** ("something happened") is [`Bus::publish`]ed and every group subscribed to its
//!   type gets it (fan-out); consumers within one group share the work (competing consumers).
//! - A **command** ("do this") is [`Bus::send`]t to the one group that handles its type.
//!
//! A handler's message is acknowledged only after it succeeded. A failing handler is retried
//! in place with exponential backoff up to `messaging.max_attempts`, then the message goes to the
//! dead letters with the reason; a message that cannot be decoded goes there at once. Nothing is
//! dropped silently.
//!
//! Transports: [`MemoryTransport`] (the embedded default: same semantics within one process)
//! and `NatsTransport` (feature `nats`, JetStream).
//!
//! ```
//! # async fn demo() -> Result<(), chassis::messaging::MessagingError> {
//! use chassis::messaging::{Bus, Event, Message, MemoryTransport};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//! impl Message for OrderPlaced { const TYPE: &'static str = "shop.order.placed"; }
//! impl Event for OrderPlaced {}
//!
//! let bus = Bus::new(MemoryTransport::new(), "orders", Default::default());
//! let _billing = bus.subscribe("billing", |incoming: chassis::messaging::Incoming<OrderPlaced>| async move {
//!     println!("charge order {}", incoming.message.order_id);
//!     Ok::<_, std::io::Error>(())
//! }, tokio_util::sync::CancellationToken::new()).await?;
//! bus.publish(&OrderPlaced { order_id: 42 }).await?;
//! # Ok(()) }
//! ```

#[cfg(feature = "amqp")]
mod amqp;
mod memory;
#[cfg(feature = "nats")]
mod nats;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[cfg(feature = "amqp")]
pub use amqp::AmqpTransport;
pub use memory::{DeadLetter, MemoryTransport};
#[cfg(feature = "nats")]
pub use nats::NatsTransport;

use crate::config::Problems;
use crate::http::BoxFuture;

/// Name of the publish counter.
pub const PUBLISHED_TOTAL: &str = "chassis_messages_published_total";
/// Name of the consume counter (`outcome`: `success`, `retried`, `dead_lettered`).
pub const CONSUMED_TOTAL: &str = "chassis_messages_consumed_total";
/// Name of the dead-letter counter.
pub const DEAD_LETTERED_TOTAL: &str = "chassis_messages_dead_lettered_total";
/// Name of the handler duration histogram.
pub const HANDLER_DURATION: &str = "chassis_message_handler_duration_seconds";

/// A typed message: its CloudEvents `type` and a JSON payload.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The CloudEvents `type`, e.g. `"shop.order.placed"`. Also names the subject.
    const TYPE: &'static str;
}

/// An event: published to every subscribed group.
pub trait Event: Message {}

/// A command: sent to the one group that handles it.
pub trait Command: Message {}

/// The CloudEvents 1.0 attributes and the tracing context of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope {
    /// `id`: a UUID v7 (time-ordered).
    pub id: String,
    /// `source`: the publishing service.
    pub source: String,
    /// `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `specversion`: `"1.0"`.
    pub specversion: String,
    /// `time`, RFC 3339.
    pub time: String,
    /// `datacontenttype`: `"application/json"`.
    pub datacontenttype: String,
    /// `subject`: what the message is about (an order id), if set.
    pub subject: Option<String>,
    /// The conversation this message belongs to (the first message's id unless given).
    pub correlation_id: String,
    /// The id of the message that caused this one, if any.
    pub causation_id: Option<String>,
    /// W3C `traceparent` of the publisher's span.
    pub traceparent: Option<String>,
    /// W3C `tracestate`.
    pub tracestate: Option<String>,
}

type Attribute = fn(&Envelope) -> Option<&str>;

const HEADERS: [(&str, Attribute); 11] = [
    ("ce-id", |e| Some(&e.id)),
    ("ce-source", |e| Some(&e.source)),
    ("ce-type", |e| Some(&e.kind)),
    ("ce-specversion", |e| Some(&e.specversion)),
    ("ce-time", |e| Some(&e.time)),
    ("content-type", |e| Some(&e.datacontenttype)),
    ("ce-subject", |e| e.subject.as_deref()),
    ("ce-correlationid", |e| Some(&e.correlation_id)),
    ("ce-causationid", |e| e.causation_id.as_deref()),
    ("traceparent", |e| e.traceparent.as_deref()),
    ("tracestate", |e| e.tracestate.as_deref()),
];

impl Envelope {
    /// The attributes as CloudEvents binary-mode headers (`ce-id`, `ce-type`, ...).
    pub fn to_headers(&self) -> Vec<(String, String)> {
        HEADERS
            .iter()
            .filter_map(|(name, get)| get(self).map(|v| ((*name).to_owned(), v.to_owned())))
            .collect()
    }

    /// Reads binary-mode headers back; `None` when a required attribute is missing.
    pub fn from_headers(headers: &[(String, String)]) -> Option<Self> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        Some(Self {
            id: get("ce-id")?,
            source: get("ce-source")?,
            kind: get("ce-type")?,
            specversion: get("ce-specversion").unwrap_or_else(|| "1.0".into()),
            time: get("ce-time").unwrap_or_default(),
            datacontenttype: get("content-type").unwrap_or_else(|| "application/json".into()),
            subject: get("ce-subject"),
            correlation_id: get("ce-correlationid").or_else(|| get("ce-id"))?,
            causation_id: get("ce-causationid"),
            traceparent: get("traceparent"),
            tracestate: get("tracestate"),
        })
    }
}

/// A message as the transports carry it: binary-mode headers and the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub body: Bytes,
}

/// Publishing or subscribing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessagingError {
    /// The payload could not be encoded.
    #[error("cannot encode {kind}: {reason}")]
    Encode {
        /// The message type.
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// The broker did not accept or confirm the message, or a subscription failed.
    #[error("{transport} transport: {reason}")]
    Transport {
        /// `memory` or `nats`.
        transport: &'static str,
        /// What went wrong.
        reason: String,
    },
}

impl MessagingError {
    pub(crate) fn transport(transport: &'static str, reason: impl std::fmt::Display) -> Self {
        Self::Transport {
            transport,
            reason: reason.to_string(),
        }
    }
}

/// One delivery of a message to a consumer. Acknowledge it once handled; dropping it unacked
/// makes the transport redeliver it.
pub struct Delivery {
    /// The message.
    pub message: RawMessage,
    /// How many times it has been delivered, this time included.
    pub delivered: u32,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery acknowledged through `acker`.
    pub fn new(message: RawMessage, delivered: u32, acker: Box<dyn Acker>) -> Self {
        Self {
            message,
            delivered,
            acker,
        }
    }

    /// Acknowledges the message: it will not be delivered again.
    pub async fn ack(self) -> Result<(), MessagingError> {
        self.acker.ack().await
    }
}

/// Acknowledges one delivery to its transport.
pub trait Acker: Send {
    /// Marks the delivery handled.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), MessagingError>>;
}

/// A stream of deliveries for one group.
pub trait Subscription: Send {
    /// The next delivery; `None` when the subscription ended.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery, MessagingError>>>;
}

/// Whether a destination fans out (events) or has one handling group (commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Every group gets every message; a new group starts with the messages published after it
    /// subscribed.
    Event,
    /// One group; messages sent before the handler subscribed wait for it.
    Command,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Command => "command",
        }
    }
}

/// A broker: publish with confirmation, subscribe per group, keep dead letters.
pub trait Transport: Send + Sync + 'static {
    /// `memory`, `nats`, ...
    fn name(&self) -> &'static str;

    /// Publishes `message` to the destination of `kind` and `message_type`; returns once the
    /// broker has confirmed it.
    fn publish<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), MessagingError>>;

    /// A subscription of `group` to the destination. Several subscriptions of one group share
    /// its messages.
    fn subscribe<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, MessagingError>>;

    /// Stores `message` as a dead letter of `group`, with `reason`.
    fn dead_letter<'a>(
        &'a self,
        group: &'a str,
        message: &'a RawMessage,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), MessagingError>>;

    /// `true` while the transport is connected (reported by readiness).
    fn is_connected(&self) -> bool {
        true
    }
}

/// `[messaging]`: the transport and the consumers' retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MessagingConfig {
    /// `transport`: `"memory"` (default), `"nats"` (feature `nats`) or `"amqp"` (feature `amqp`,
    /// RabbitMQ).
    pub transport: String,
    /// `url`: the broker, e.g. `"nats://127.0.0.1:4222"`. Default: none (memory needs none).
    pub url: Option<String>,
    /// `namespace`: prefix of subjects, streams and consumers. Default `"chassis"`.
    pub namespace: String,
    /// `max_attempts`: handler attempts per delivery before the message is dead-lettered.
    /// Default `5`.
    pub max_attempts: u32,
    /// `retry_base_delay`: first backoff between attempts. Default `"100ms"`.
    #[serde(with = "crate::config::duration")]
    pub retry_base_delay: Duration,
    /// `retry_max_delay`: longest backoff. Default `"10s"`.
    #[serde(with = "crate::config::duration")]
    pub retry_max_delay: Duration,
    /// `concurrency`: messages a subscription handles at once. Default `8`.
    pub concurrency: usize,
    /// `ack_wait`: how long the broker waits for an acknowledgement before redelivering
    /// (NATS). Default `"30s"`.
    #[serde(with = "crate::config::duration")]
    pub ack_wait: Duration,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        Self {
            transport: "memory".into(),
            url: None,
            namespace: "chassis".into(),
            max_attempts: 5,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(10),
            concurrency: 8,
            ack_wait: Duration::from_secs(30),
        }
    }
}

impl MessagingConfig {
    pub(crate) fn validate(&self, problems: &mut Problems) {
        let known = ["memory", "nats", "amqp"];
        problems.check(
            known.contains(&self.transport.as_str()),
            "messaging.transport",
            format!("must be one of {known:?}"),
        );
        problems.check(
            self.transport == "memory" || self.url.is_some(),
            "messaging.url",
            "is required for the nats and amqp transports, e.g. \"nats://127.0.0.1:4222\"",
        );
        problems.check(self.max_attempts > 0, "messaging.max_attempts", "must be at least 1");
        problems.check(self.concurrency > 0, "messaging.concurrency", "must be at least 1");
        problems.check(
            !self.namespace.is_empty()
                && self
                    .namespace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "messaging.namespace",
            "must be letters, digits, '-' or '_'",
        );
    }
}

/// A received message with its envelope.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Incoming<M> {
    /// The decoded message.
    pub message: M,
    /// Its CloudEvents attributes.
    pub envelope: Envelope,
    /// Which delivery this is (1 the first time).
    pub delivered: u32,
}

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
    pub async fn subscribe<M, H, Fut, E>(
        &self,
        group: &str,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, MessagingError>
    where
        M: Message,
        H: Fn(Incoming<M>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.subscribe_kind(Kind::Event, group, handler, shutdown).await
    }

    /// Registers the handler of command `M` (one group, named after the command type).
    pub async fn handle<C, H, Fut, E>(
        &self,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, MessagingError>
    where
        C: Command,
        H: Fn(Incoming<C>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.subscribe_kind(Kind::Command, C::TYPE, handler, shutdown).await
    }

    async fn subscribe_kind<M, H, Fut, E>(
        &self,
        kind: Kind,
        group: &str,
        handler: H,
        shutdown: CancellationToken,
    ) -> Result<Vec<JoinHandle<()>>, MessagingError>
    where
        M: Message,
        H: Fn(Incoming<M>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let mut tasks = Vec::new();
        for _ in 0..self.config.concurrency {
            let subscription = self.transport.subscribe(kind, M::TYPE, group).await?;
            let consumer = Consumer {
                transport: self.transport.clone(),
                config: self.config.clone(),
                group: group.into(),
                handler: handler.clone(),
                _message: std::marker::PhantomData::<fn() -> M>,
            };
            tasks.push(tokio::spawn(consumer.run(subscription, shutdown.clone())));
        }
        Ok(tasks)
    }
}

struct Consumer<M, H> {
    transport: Arc<dyn Transport>,
    config: Arc<MessagingConfig>,
    group: Arc<str>,
    handler: H,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<M, H, Fut, E> Consumer<M, H>
where
    M: Message,
    H: Fn(Incoming<M>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    async fn run(self, mut subscription: Box<dyn Subscription>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = subscription.next() => next,
            };
            match next {
                None => break,
                Some(Ok(delivery)) => {
                    failures = 0;
                    self.handle(delivery).await;
                }
                Some(Err(error)) => {
                    failures += 1;
                    let wait = backoff(&self.config, failures);
                    tracing::warn!(group = %self.group, %error, retry_in_ms = wait.as_millis() as u64, "subscription failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn handle(&self, delivery: Delivery) {
        let message = delivery.message.clone();
        let decoded = Envelope::from_headers(&message.headers)
            .ok_or_else(|| "missing CloudEvents attributes (ce-id, ce-source, ce-type)".to_owned())
            .and_then(|envelope| {
                serde_json::from_slice::<M>(&message.body)
                    .map(|_| envelope)
                    .map_err(|e| format!("cannot decode {} payload: {e}", M::TYPE))
            });
        let envelope = match decoded {
            Ok(ok) => ok,
            Err(reason) => {
                self.dead_letter(delivery, &reason).await;
                return;
            }
        };
        let span = tracing::info_span!(
            target: "chassis::messaging",
            "process",
            otel.kind = "consumer",
            otel.name = %format!("process {}", M::TYPE),
            messaging.system = self.transport.name(),
            messaging.operation.type = "process",
            messaging.destination.name = M::TYPE,
            messaging.consumer.group.name = %self.group,
            messaging.message.id = %envelope.id,
        );
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("traceparent", &envelope.traceparent),
            ("tracestate", &envelope.tracestate),
        ] {
            if let Some(value) = value.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
        let _ = span.set_parent(crate::telemetry::extract_context(&headers));
        let outcome = self
            .attempts(&message.body, envelope, delivery.delivered)
            .instrument(span)
            .await;
        match outcome {
            Ok(()) => {
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(group = %self.group, %error, "acknowledgement failed; the message will be redelivered");
                }
            }
            Err(reason) => self.dead_letter(delivery, &reason).await,
        }
    }

    /// Runs the handler until it succeeds or `max_attempts` is reached. Each attempt decodes
    /// the payload afresh, so a handler gets an untouched message every time.
    async fn attempts(&self, body: &Bytes, envelope: Envelope, delivered: u32) -> Result<(), String> {
        let mut attempt = 1;
        loop {
            let message: M = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let started = std::time::Instant::now();
            let result = (self.handler)(Incoming {
                message,
                envelope: envelope.clone(),
                delivered,
            })
            .await;
            metrics::histogram!(HANDLER_DURATION, "type" => M::TYPE, "group" => self.group.to_string())
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    metrics::counter!(CONSUMED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string(), "outcome" => "success").increment(1);
                    return Ok(());
                }
                Err(error) if attempt >= self.config.max_attempts => {
                    return Err(format!("handler failed {attempt} times; last error: {error}"));
                }
                Err(error) => {
                    metrics::counter!(CONSUMED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string(), "outcome" => "retried").increment(1);
                    let wait = backoff(&self.config, attempt);
                    tracing::warn!(group = %self.group, attempt, %error, retry_in_ms = wait.as_millis() as u64, "handler failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn dead_letter(&self, delivery: Delivery, reason: &str) {
        tracing::error!(group = %self.group, r#type = M::TYPE, reason, "message dead-lettered");
        match self.transport.dead_letter(&self.group, &delivery.message, reason).await {
            Ok(()) => {
                metrics::counter!(DEAD_LETTERED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string())
                    .increment(1);
                metrics::counter!(CONSUMED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string(), "outcome" => "dead_lettered").increment(1);
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(group = %self.group, %error, "acknowledging a dead-lettered message failed; it may be delivered again");
                }
            }
            // Not acknowledged: the broker delivers it again rather than losing it.
            Err(error) => {
                tracing::error!(group = %self.group, %error, "storing the dead letter failed; leaving the message unacknowledged")
            }
        }
    }
}

fn backoff(config: &MessagingConfig, attempt: u32) -> Duration {
    let exponential = config
        .retry_base_delay
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    let capped = exponential.min(config.retry_max_delay);
    // Equal jitter: at least half the step, so retries keep spreading out.
    capped / 2 + capped.mul_f64(fastrand::f64() / 2.0)
}

/// Connects the transport named by `config`.
pub async fn connect(config: &MessagingConfig) -> Result<Arc<dyn Transport>, MessagingError> {
    match config.transport.as_str() {
        "memory" => Ok(Arc::new(MemoryTransport::new())),
        #[cfg(feature = "nats")]
        "nats" => Ok(Arc::new(
            NatsTransport::connect(config.url.as_deref().unwrap_or("nats://127.0.0.1:4222"), config).await?,
        )),
        #[cfg(feature = "amqp")]
        "amqp" => Ok(Arc::new(
            AmqpTransport::connect(
                config.url.as_deref().unwrap_or("amqp://guest:guest@127.0.0.1:5672/%2f"),
                config,
            )
            .await?,
        )),
        other => Err(MessagingError::transport(
            "config",
            format!("transport {other:?} is not available; enable the chassis cargo feature of that name"),
        )),
    }
}
