use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;

use super::{Acker, Delivery, Kind, MessagingConfig, MessagingError, RawMessage, Subscription, Transport};
use futures_util::future::BoxFuture;

fn error(e: impl std::fmt::Display) -> MessagingError {
    MessagingError::transport("nats", e)
}

/// NATS JetStream: one stream per family (`{NS}_EVENTS` on `{ns}.event.>`, `{NS}_COMMANDS` on
/// `{ns}.command.>` as a work queue, `{NS}_DEAD_LETTERS` on `{ns}.deadletter.>`), a durable pull
/// consumer per group (events) or per command type, explicit acknowledgements, publisher acks.
/// A message not acknowledged within `messaging.ack_wait` is redelivered. The client
/// reconnects by itself; readiness reports the connection state.
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::messaging::MessagingError> {
/// let transport = chassis::messaging::NatsTransport::connect("nats://127.0.0.1:4222", &Default::default()).await?;
/// # let _ = transport; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsTransport {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    namespace: String,
    ack_wait: Duration,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl NatsTransport {
    /// Connects to `url` and makes sure the streams exist.
    pub async fn connect(url: &str, config: &MessagingConfig) -> Result<Self, MessagingError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(3))
            .connect(url)
            .await
            .map_err(|e| error(format!("cannot connect to {url}: {e}")))?;
        let jetstream = jetstream::new(client.clone());
        let namespace = token(&config.namespace);
        let upper = namespace.to_uppercase();
        let streams = [
            (
                format!("{upper}_EVENTS"),
                format!("{namespace}.event.>"),
                stream::RetentionPolicy::Limits,
            ),
            (
                format!("{upper}_COMMANDS"),
                format!("{namespace}.command.>"),
                stream::RetentionPolicy::WorkQueue,
            ),
            (
                format!("{upper}_DEAD_LETTERS"),
                format!("{namespace}.deadletter.>"),
                stream::RetentionPolicy::Limits,
            ),
        ];
        for (name, subject, retention) in streams {
            jetstream
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![subject],
                    retention,
                    max_age: Duration::from_secs(7 * 24 * 3600),
                    ..Default::default()
                })
                .await
                .map_err(|e| error(format!("cannot create stream {name}: {e}")))?;
        }
        Ok(Self {
            client,
            jetstream,
            namespace,
            ack_wait: config.ack_wait,
        })
    }

    fn subject(&self, kind: Kind, message_type: &str) -> String {
        format!("{}.{}.{message_type}", self.namespace, kind.as_str())
    }

    /// The dead letters' subject of `group`: `{ns}.deadletter.{group}`.
    pub fn dead_letter_subject(&self, group: &str) -> String {
        format!("{}.deadletter.{}", self.namespace, token(group))
    }

    /// The NATS client (connection state, statistics, forcing a reconnect).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The underlying JetStream context (to read dead letters, inspect streams).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }
}

struct NatsSubscription {
    messages: consumer::pull::Stream,
}

struct NatsAcker {
    message: jetstream::Message,
}

impl Acker for NatsAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), MessagingError>> {
        Box::pin(async move { self.message.double_ack().await.map_err(error) })
    }
}

impl Subscription for NatsSubscription {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery, MessagingError>>> {
        Box::pin(async move {
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(e) => return Some(Err(error(e))),
            };
            let headers = message
                .headers
                .as_ref()
                .map(|headers| {
                    headers
                        .iter()
                        .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let delivered = message.info().map(|info| info.delivered).unwrap_or(1).max(1) as u32;
            let raw = RawMessage {
                headers,
                body: message.payload.clone(),
            };
            Some(Ok(Delivery::new(raw, delivered, Box::new(NatsAcker { message }))))
        })
    }
}

fn nats_headers(message: &RawMessage) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in &message.headers {
        headers.append(name.as_str(), value.as_str());
    }
    headers
}

impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn publish<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move {
            let ack = self
                .jetstream
                .publish_with_headers(self.subject(kind, message_type), nats_headers(&message), message.body)
                .await
                .map_err(error)?;
            ack.await
                .map_err(|e| error(format!("the broker did not confirm the message: {e}")))?;
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, MessagingError>> {
        Box::pin(async move {
            let (stream_name, durable, deliver_policy) = match kind {
                Kind::Event => (
                    format!("{}_EVENTS", self.namespace.to_uppercase()),
                    format!("{}-{}", token(group), token(message_type)),
                    consumer::DeliverPolicy::New,
                ),
                Kind::Command => (
                    format!("{}_COMMANDS", self.namespace.to_uppercase()),
                    format!("command-{}", token(message_type)),
                    consumer::DeliverPolicy::All,
                ),
            };
            let stream = self.jetstream.get_stream(&stream_name).await.map_err(error)?;
            let consumer: consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &durable,
                    consumer::pull::Config {
                        durable_name: Some(durable.clone()),
                        filter_subject: self.subject(kind, message_type),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: self.ack_wait,
                        deliver_policy,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| error(format!("cannot create consumer {durable}: {e}")))?;
            let messages = consumer.messages().await.map_err(error)?;
            Ok(Box::new(NatsSubscription { messages }) as Box<dyn Subscription>)
        })
    }

    fn dead_letter<'a>(
        &'a self,
        group: &'a str,
        message: &'a RawMessage,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move {
            let mut headers = nats_headers(message);
            headers.insert("chassis-dead-letter-reason", reason.replace(['\r', '\n'], " ").as_str());
            headers.insert("chassis-dead-letter-group", group);
            let ack = self
                .jetstream
                .publish_with_headers(self.dead_letter_subject(group), headers, message.body.clone())
                .await
                .map_err(error)?;
            ack.await.map_err(error)?;
            Ok(())
        })
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}
