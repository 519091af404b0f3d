use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;

use super::consumer::REPLAY_GROUP;
use super::{
    Acker, DeadLetter, Delivery, Kind, MessagingConfig, MessagingError, Outgoing, RawMessage, Subscription, Transport,
};

fn error(e: impl std::fmt::Display) -> MessagingError {
    MessagingError::transport("nats", e)
}

/// NATS JetStream: one stream per family (`{NS}_EVENTS` on `{ns}.event.>`, `{NS}_COMMANDS` on
/// `{ns}.command.>` as a work queue, `{NS}_DEAD_LETTERS` on `{ns}.deadletter.>`), a durable pull
/// consumer per group (events) or per command type, explicit acknowledgements, publisher acks.
/// A message not acknowledged within `messaging.ack_wait` is redelivered (a handler that runs
/// longer sends in-progress acknowledgements); a consumer delivers a message at most
/// `messaging.max_deliveries + 1` times, the last one being dead-lettered by the chassis. Every
/// message carries `Nats-Msg-Id` (its envelope id), so the stream drops a message published
/// twice within its duplicate window (two minutes). The client reconnects by itself; readiness
/// reports the connection state.
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::messaging::MessagingError> {
/// let transport = chassis::messaging::NatsTransport::connect("nats://127.0.0.1:4222", &Default::default()).await?;
/// # let _ = transport; Ok(()) }
/// ```
///
/// Needs the cargo feature `nats`.
#[derive(Clone)]
pub struct NatsTransport {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    namespace: String,
    ack_wait: Duration,
    max_deliveries: u32,
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
        let mut jetstream = jetstream::new(client.clone());
        // Bounds the wait for a publish's acknowledgement (and the stream API calls).
        jetstream.set_timeout(config.publish_timeout);
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
            max_deliveries: config.max_deliveries,
        })
    }

    fn subject(&self, kind: Kind, message_type: &str) -> String {
        format!("{}.{}.{message_type}", self.namespace, kind.as_str())
    }

    fn stream_name(&self, family: &str) -> String {
        format!("{}_{family}", self.namespace.to_uppercase())
    }

    /// The names of the namespace's streams, as `connect` creates them.
    #[cfg(feature = "testing")]
    pub(crate) fn stream_names(&self) -> [String; 3] {
        ["EVENTS", "COMMANDS", "DEAD_LETTERS"].map(|family| self.stream_name(family))
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

    fn progress(&self) -> BoxFuture<'_, Result<(), MessagingError>> {
        Box::pin(async move { self.message.ack_with(AckKind::Progress).await.map_err(error) })
    }
}

impl Subscription for NatsSubscription {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery, MessagingError>>> {
        Box::pin(async move {
            let message = match self.messages.next().await? {
                Ok(message) => message,
                Err(e) => return Some(Err(error(e))),
            };
            let headers = headers_of(message.headers.as_ref());
            let delivered = message.info().map(|info| info.delivered).unwrap_or(1).max(1) as u32;
            let raw = RawMessage {
                headers,
                body: message.payload.clone(),
            };
            Some(Ok(Delivery::new(raw, delivered, Box::new(NatsAcker { message }))))
        })
    }
}

fn nats_headers(headers: &[(String, String)]) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.append(name.as_str(), value.as_str());
    }
    map
}

/// The message's headers with `Nats-Msg-Id` set to its envelope id (suffixed for a replay), so
/// JetStream drops a second publish of it within the duplicate window.
fn with_message_id(message: &RawMessage, suffix: &str) -> async_nats::HeaderMap {
    let mut headers = nats_headers(&message.headers);
    if let Some((_, id)) = message.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("ce-id")) {
        headers.insert("Nats-Msg-Id", format!("{id}{suffix}").as_str());
    }
    headers
}

fn headers_of(map: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    map.map(|headers| {
        headers
            .iter()
            .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.to_string())))
            .collect()
    })
    .unwrap_or_default()
}

impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn destination(&self, kind: Kind, message_type: &str) -> String {
        self.subject(kind, message_type)
    }

    fn publish<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move {
            let headers = with_message_id(&message, "");
            let ack = self
                .jetstream
                .publish_with_headers(self.subject(kind, message_type), headers, message.body)
                .await
                .map_err(error)?;
            ack.await
                .map_err(|e| error(format!("the broker did not confirm the message: {e}")))?;
            Ok(())
        })
    }

    fn publish_batch<'a>(&'a self, messages: &'a [Outgoing]) -> BoxFuture<'a, (usize, Option<MessagingError>)> {
        Box::pin(async move {
            // Every publish goes out on the one connection before any acknowledgement is
            // awaited: they reach the stream in this order.
            let mut acks = Vec::with_capacity(messages.len());
            for outgoing in messages {
                let headers = with_message_id(&outgoing.message, "");
                let subject = self.subject(outgoing.kind, &outgoing.message_type);
                match self
                    .jetstream
                    .publish_with_headers(subject, headers, outgoing.message.body.clone())
                    .await
                {
                    Ok(ack) => acks.push(ack),
                    Err(e) => {
                        let confirmed = confirm_in_order(acks).await;
                        return (confirmed.0, Some(confirmed.1.unwrap_or_else(|| error(e))));
                    }
                }
            }
            confirm_in_order(acks).await
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
                    self.stream_name("EVENTS"),
                    format!("{}-{}", token(group), token(message_type)),
                    consumer::DeliverPolicy::New,
                ),
                Kind::Command => (
                    self.stream_name("COMMANDS"),
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
                        // One delivery past the limit, which the chassis dead-letters.
                        max_deliver: i64::from(self.max_deliveries) + 1,
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

    fn dead_letter<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move {
            let headers = nats_headers(&letter.to_headers());
            let ack = self
                .jetstream
                .publish_with_headers(
                    self.dead_letter_subject(&letter.group),
                    headers,
                    letter.message.body.clone(),
                )
                .await
                .map_err(error)?;
            ack.await.map_err(error)?;
            Ok(())
        })
    }

    fn list_dead_letters<'a>(
        &'a self,
        group: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, MessagingError>> {
        Box::pin(async move {
            Ok(self
                .read_dead_letters(group, limit)
                .await?
                .into_iter()
                .map(|(_, letter)| letter)
                .collect())
        })
    }

    fn replay_dead_letters<'a>(
        &'a self,
        group: &'a str,
        ids: &'a [String],
        limit: usize,
    ) -> BoxFuture<'a, Result<usize, MessagingError>> {
        Box::pin(async move {
            let wanted = if ids.is_empty() { limit } else { usize::MAX };
            let stream = self
                .jetstream
                .get_stream(self.stream_name("DEAD_LETTERS"))
                .await
                .map_err(error)?;
            let mut replayed = 0;
            for (sequence, letter) in self.read_dead_letters(group, wanted).await? {
                if !ids.is_empty() && !ids.contains(&letter.id) {
                    continue;
                }
                if replayed == limit {
                    break;
                }
                let mut message = letter.message.clone();
                if letter.kind == Kind::Event {
                    message.headers.push((REPLAY_GROUP.to_owned(), group.to_owned()));
                }
                let headers = with_message_id(&message, &format!("-replay-{sequence}"));
                let ack = self
                    .jetstream
                    .publish_with_headers(self.subject(letter.kind, &letter.message_type), headers, message.body)
                    .await
                    .map_err(error)?;
                ack.await.map_err(error)?;
                stream.delete_message(sequence).await.map_err(error)?;
                replayed += 1;
            }
            Ok(replayed)
        })
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

impl NatsTransport {
    /// Up to `limit` dead letters of `group`, oldest first, with their stream sequences, read
    /// by a short-lived consumer of the dead letters' subject.
    async fn read_dead_letters(&self, group: &str, limit: usize) -> Result<Vec<(u64, DeadLetter)>, MessagingError> {
        let subject = self.dead_letter_subject(group);
        let stream = self
            .jetstream
            .get_stream(self.stream_name("DEAD_LETTERS"))
            .await
            .map_err(error)?;
        let stored = stream
            .info_with_subjects(&subject)
            .await
            .map_err(error)?
            .next()
            .await
            .transpose()
            .map_err(error)?
            .map_or(0, |(_, count)| count);
        let wanted = limit.min(stored);
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let reader: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: subject,
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::All,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(error)?;
        let mut batch = reader
            .fetch()
            .max_messages(wanted)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .map_err(error)?;
        let mut letters = Vec::with_capacity(wanted);
        while let Some(message) = batch.next().await {
            let message = message.map_err(error)?;
            let sequence = message.info().map_err(error)?.stream_sequence;
            let headers = headers_of(message.headers.as_ref());
            if let Some(letter) = DeadLetter::from_headers(sequence.to_string(), headers, message.payload.clone()) {
                letters.push((sequence, letter));
            }
        }
        Ok(letters)
    }
}

/// Waits for the acknowledgements of publishes made in order: how many, from the first, were
/// confirmed, and the error that stopped the rest.
async fn confirm_in_order(acks: Vec<jetstream::context::PublishAckFuture>) -> (usize, Option<MessagingError>) {
    let mut confirmed = 0;
    for ack in acks {
        match ack.await {
            Ok(_) => confirmed += 1,
            Err(e) => {
                return (
                    confirmed,
                    Some(error(format!("the broker did not confirm the message: {e}"))),
                );
            }
        }
    }
    (confirmed, None)
}
