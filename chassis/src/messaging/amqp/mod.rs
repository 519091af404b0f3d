use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

mod consume;

use self::consume::{AmqpSubscription, ConsumerChannels};
use super::consumer::REPLAY_GROUP;
use super::{DeadLetter, Kind, MessagingConfig, MessagingError, Outgoing, RawMessage, Subscription, Transport};

fn error(e: impl std::fmt::Display) -> MessagingError {
    MessagingError::transport("amqp", e)
}

/// RabbitMQ (AMQP 0.9.1): a durable topic exchange `{ns}.events` with a quorum queue per group
/// and event type (`{ns}.{group}.{type}`), a direct exchange `{ns}.commands` with a quorum
/// queue per command type, a direct exchange `{ns}.dead-letters` with a queue per group,
/// persistent messages, publisher confirms, manual acknowledgements and a prefetch of one per
/// consumer; the consumers of a queue share one channel per connection, so that a lost
/// connection counts once against the delivery limit. Unacknowledged messages of a consumer
/// that goes away are requeued by the broker, which counts the deliveries
/// (`x-delivery-count`): past `messaging.max_deliveries` the
/// chassis dead-letters the message, and the queue's own `x-delivery-limit`, one higher, sends
/// it to the dead letters should even that delivery never be acknowledged.
///
/// A lost connection is opened again by whoever needs it next: a publish waits for it (within
/// `messaging.publish_timeout`) and sends again what was not confirmed; a consumer's
/// subscription ends, and the chassis' supervisor subscribes again with backoff on the new
/// connection. What was delivered but not acknowledged is requeued by the broker and comes
/// again (the inbox drops what was already applied).
///
/// Quorum queues need RabbitMQ 3.8 or later; a classic queue of the same name left by an older
/// version of the chassis must be deleted (or another `messaging.namespace` used).
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::messaging::MessagingError> {
/// let transport = chassis::messaging::AmqpTransport::connect("amqp://guest:guest@127.0.0.1:5672/%2f", &Default::default()).await?;
/// # let _ = transport; Ok(()) }
/// ```
///
/// Needs the cargo feature `amqp`.
pub struct AmqpTransport {
    url: String,
    namespace: String,
    max_deliveries: u32,
    /// How long a publish waits for its confirmation, a lost connection's reopening included.
    publish_timeout: Duration,
    link: Mutex<Arc<Link>>,
    /// Held while the connection is opened again, so callers that find it lost open one.
    reconnecting: tokio::sync::Mutex<()>,
    declared: Mutex<HashSet<String>>,
}

/// A connection, its publishing channel (publisher confirms on) and its consuming channels,
/// replaced together when the connection is lost.
struct Link {
    connection: Connection,
    publisher: Channel,
    consuming: ConsumerChannels,
}

/// The longest wait for the broker to open a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Link {
    /// Connects to `url` and declares the namespace's exchanges.
    async fn open(url: &str, namespace: &str) -> Result<Self, MessagingError> {
        let properties = ConnectionProperties::default()
            // Shown by the management UI and `rabbitmqctl list_connections client_properties`.
            .with_connection_name(LongString::from(format!("chassis {namespace}")));
        let where_to = without_credentials(url);
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties))
            .await
            .map_err(|_| {
                error(format!(
                    "cannot connect to {where_to}: no answer within {CONNECT_TIMEOUT:?}"
                ))
            })?
            .map_err(|e| error(format!("cannot connect to {where_to}: {e}")))?;
        let publisher = connection.create_channel().await.map_err(error)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(error)?;
        for (exchange, kind) in [
            (format!("{namespace}.events"), ExchangeKind::Topic),
            (format!("{namespace}.commands"), ExchangeKind::Direct),
            (format!("{namespace}.dead-letters"), ExchangeKind::Direct),
        ] {
            publisher
                .exchange_declare(
                    exchange.as_str().into(),
                    kind,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| error(format!("cannot declare exchange {exchange}: {e}")))?;
        }
        Ok(Self {
            connection,
            publisher,
            consuming: ConsumerChannels::default(),
        })
    }

    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// `url` without the user and password, for messages.
fn without_credentials(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl AmqpTransport {
    /// Connects to `url` and declares the exchanges.
    pub async fn connect(url: &str, config: &MessagingConfig) -> Result<Self, MessagingError> {
        let link = Link::open(url, &config.namespace).await?;
        Ok(Self {
            url: url.to_owned(),
            namespace: config.namespace.clone(),
            max_deliveries: config.max_deliveries,
            publish_timeout: config.publish_timeout,
            link: Mutex::new(Arc::new(link)),
            reconnecting: tokio::sync::Mutex::new(()),
            declared: Mutex::new(HashSet::new()),
        })
    }

    fn current(&self) -> Arc<Link> {
        self.link.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The connection, opened again first when it was lost.
    async fn link(&self) -> Result<Arc<Link>, MessagingError> {
        let current = self.current();
        if current.usable() {
            return Ok(current);
        }
        let _turn = self.reconnecting.lock().await;
        let current = self.current();
        if current.usable() {
            return Ok(current);
        }
        let link = Arc::new(Link::open(&self.url, &self.namespace).await?);
        tracing::info!(namespace = %self.namespace, "connected to RabbitMQ again");
        // The broker may have lost its definitions (a reset node): declare queues again.
        self.declared.lock().unwrap_or_else(|e| e.into_inner()).clear();
        *self.link.lock().unwrap_or_else(|e| e.into_inner()) = link.clone();
        Ok(link)
    }

    fn exchange(&self, kind: Kind) -> String {
        match kind {
            Kind::Event => format!("{}.events", self.namespace),
            Kind::Command => format!("{}.commands", self.namespace),
        }
    }

    /// The queue holding the dead letters of `group`.
    pub fn dead_letter_queue(&self, group: &str) -> String {
        format!("{}.dead-letters.{group}", self.namespace)
    }

    /// The queue `group` consumes messages of `kind` and `message_type` from.
    fn queue(&self, kind: Kind, message_type: &str, group: &str) -> String {
        match kind {
            Kind::Event => format!("{}.{group}.{message_type}", self.namespace),
            Kind::Command => format!("{}.command.{message_type}", self.namespace),
        }
    }

    /// The arguments of a consumed queue: a quorum queue counting deliveries, whose delivery
    /// limit (one past the chassis' own) dead-letters into the group's dead letters.
    fn consumed_queue_arguments(&self, group: &str) -> FieldTable {
        let mut arguments = FieldTable::default();
        arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.max_deliveries) + 1),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(format!("{}.dead-letters", self.namespace).into()),
        );
        arguments.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(group.into()));
        arguments
    }

    /// Declares a durable queue bound to `exchange` with `key`, once per process.
    async fn declare_bound(
        &self,
        channel: &Channel,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: FieldTable,
    ) -> Result<(), MessagingError> {
        if self.declared.lock().unwrap_or_else(|e| e.into_inner()).contains(queue) {
            return Ok(());
        }
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .map_err(|e| error(format!("cannot declare queue {queue}: {e}")))?;
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| error(format!("cannot bind queue {queue}: {e}")))?;
        self.declared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_owned());
        Ok(())
    }

    /// Publishes `message` and waits for the broker's confirmation; a publish interrupted by a
    /// lost connection is sent again on a new one, until `messaging.publish_timeout`. The caller
    /// only hears success after a confirmation (at least once, never lost).
    async fn publish_confirmed(
        &self,
        kind: Option<Kind>,
        exchange: &str,
        key: &str,
        message: &RawMessage,
    ) -> Result<(), MessagingError> {
        let properties = properties(&message.headers);
        let deadline = tokio::time::Instant::now() + self.publish_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            let attempt = async {
                let link = self.link().await?;
                if let Some(kind) = kind {
                    self.declare_command_queue(&link, kind, key).await?;
                }
                let confirm = link
                    .publisher
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions::default(),
                        &message.body,
                        properties.clone(),
                    )
                    .await
                    .map_err(error)?
                    .await
                    .map_err(error)?;
                if confirm.is_nack() {
                    return Err(error("the broker refused the message (nack)"));
                }
                Ok(())
            };
            // A broker that stalls without closing the connection must not hold the caller.
            let Ok(result) = tokio::time::timeout_at(deadline, attempt).await else {
                return Err(self.unconfirmed("no confirmation arrived"));
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(error = %e, "publish interrupted; sending it again on a new connection");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(self.unconfirmed(e)),
            }
        }
    }

    fn unconfirmed(&self, why: impl std::fmt::Display) -> MessagingError {
        error(format!(
            "the broker did not confirm the message within {:?} (messaging.publish_timeout): {why}",
            self.publish_timeout
        ))
    }
}

/// Persistent (it survives a broker restart) JSON with the message's headers.
fn properties(headers: &[(String, String)]) -> BasicProperties {
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(
            ShortString::from(name.as_str()),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    BasicProperties::default()
        .with_headers(table)
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
}

fn headers_of(properties: &BasicProperties) -> Vec<(String, String)> {
    properties
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), header_text(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

impl Transport for AmqpTransport {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn destination(&self, kind: Kind, _: &str) -> String {
        self.exchange(kind)
    }

    fn publish<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move {
            self.publish_confirmed(Some(kind), &self.exchange(kind), message_type, &message)
                .await
        })
    }

    fn subscribe<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, MessagingError>> {
        Box::pin(async move {
            let link = self.link().await?;
            let queue = self.queue(kind, message_type, group);
            let channel = link.consuming.channel(&link.connection, &queue).await?;
            let arguments = self.consumed_queue_arguments(group);
            self.declare_bound(&channel, &queue, &self.exchange(kind), message_type, arguments)
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| error(format!("cannot consume {queue}: {e}")))?;
            Ok(Box::new(AmqpSubscription::new(consumer, channel)) as Box<dyn Subscription>)
        })
    }

    fn publish_batch<'a>(&'a self, messages: &'a [Outgoing]) -> BoxFuture<'a, (usize, Option<MessagingError>)> {
        Box::pin(async move {
            // Every publish goes out on the one channel before any confirmation is awaited:
            // they reach their queues in this order.
            let link = match self.link().await {
                Ok(link) => link,
                Err(e) => return (0, Some(e)),
            };
            let mut confirms = Vec::with_capacity(messages.len());
            let mut failure = None;
            for outgoing in messages {
                if let Err(e) = self
                    .declare_command_queue(&link, outgoing.kind, &outgoing.message_type)
                    .await
                {
                    failure = Some(e);
                    break;
                }
                let published = link
                    .publisher
                    .basic_publish(
                        self.exchange(outgoing.kind).as_str().into(),
                        outgoing.message_type.as_str().into(),
                        BasicPublishOptions::default(),
                        &outgoing.message.body,
                        properties(&outgoing.message.headers),
                    )
                    .await;
                match published {
                    Ok(confirm) => confirms.push(confirm),
                    Err(e) => {
                        failure = Some(error(e));
                        break;
                    }
                }
            }
            let deadline = tokio::time::Instant::now() + self.publish_timeout;
            let mut confirmed = 0;
            for confirm in confirms {
                match tokio::time::timeout_at(deadline, confirm).await {
                    Ok(Ok(confirmation)) if !confirmation.is_nack() => confirmed += 1,
                    Ok(Ok(_)) => return (confirmed, Some(error("the broker refused the message (nack)"))),
                    Ok(Err(e)) => return (confirmed, Some(self.unconfirmed(e))),
                    Err(_) => return (confirmed, Some(self.unconfirmed("no confirmation arrived"))),
                }
            }
            (confirmed, failure)
        })
    }

    fn dead_letter<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move {
            self.declare_dead_letters(&*self.link().await?, &letter.group).await?;
            let message = RawMessage {
                headers: letter.to_headers(),
                body: letter.message.body.clone(),
            };
            let exchange = format!("{}.dead-letters", self.namespace);
            self.publish_confirmed(None, &exchange, &letter.group, &message).await
        })
    }

    fn list_dead_letters<'a>(
        &'a self,
        group: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, MessagingError>> {
        Box::pin(async move {
            let link = self.link().await?;
            let channel = link.connection.create_channel().await.map_err(error)?;
            let letters = self.take_dead_letters(&link, &channel, group, limit).await;
            // Nothing was acknowledged: closing the channel puts every one back.
            let _ = channel.close(200, "listed".into()).await;
            Ok(letters?.into_iter().map(|(_, letter)| letter).collect())
        })
    }

    fn replay_dead_letters<'a>(
        &'a self,
        group: &'a str,
        ids: &'a [String],
        limit: usize,
    ) -> BoxFuture<'a, Result<usize, MessagingError>> {
        Box::pin(async move {
            let link = self.link().await?;
            let channel = link.connection.create_channel().await.map_err(error)?;
            let result = async {
                let wanted = if ids.is_empty() { limit } else { usize::MAX };
                let mut replayed = 0;
                for (acker, letter) in self.take_dead_letters(&link, &channel, group, wanted).await? {
                    if replayed == limit || (!ids.is_empty() && !ids.contains(&letter.id)) {
                        continue;
                    }
                    // Straight to the group's own queue: other groups of an event already had it.
                    let queue = self.queue(letter.kind, &letter.message_type, group);
                    let mut message = letter.message.clone();
                    message.headers.push((REPLAY_GROUP.to_owned(), group.to_owned()));
                    self.publish_confirmed(None, "", &queue, &message).await?;
                    acker.ack(BasicAckOptions::default()).await.map_err(error)?;
                    replayed += 1;
                }
                Ok(replayed)
            }
            .await;
            // The ones not replayed go back when the channel closes.
            let _ = channel.close(200, "replayed".into()).await;
            result
        })
    }

    fn is_connected(&self) -> bool {
        self.current().usable()
    }
}

impl AmqpTransport {
    /// Commands wait for their handler: their queue exists before the first send.
    async fn declare_command_queue(&self, link: &Link, kind: Kind, message_type: &str) -> Result<(), MessagingError> {
        if kind != Kind::Command {
            return Ok(());
        }
        let queue = self.queue(kind, message_type, message_type);
        let arguments = self.consumed_queue_arguments(message_type);
        // The delivery limit dead-letters into the group's queue, which must exist.
        self.declare_dead_letters(link, message_type).await?;
        self.declare_bound(&link.publisher, &queue, &self.exchange(kind), message_type, arguments)
            .await
    }

    async fn declare_dead_letters(&self, link: &Link, group: &str) -> Result<(), MessagingError> {
        let exchange = format!("{}.dead-letters", self.namespace);
        let queue = self.dead_letter_queue(group);
        self.declare_bound(&link.publisher, &queue, &exchange, group, FieldTable::default())
            .await
    }

    /// Takes up to `limit` dead letters of `group` off its queue without acknowledging them, so
    /// closing `channel` puts back every one not acknowledged meanwhile. The id of a dead letter
    /// is its message's envelope id.
    async fn take_dead_letters(
        &self,
        link: &Link,
        channel: &Channel,
        group: &str,
        limit: usize,
    ) -> Result<Vec<(lapin::Acker, DeadLetter)>, MessagingError> {
        self.declare_dead_letters(link, group).await?;
        let queue = self.dead_letter_queue(group);
        let mut letters = Vec::new();
        while letters.len() < limit {
            let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(error)?
            else {
                break;
            };
            let headers = headers_of(&message.delivery.properties);
            let id = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("ce-id"))
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let body = message.delivery.data.clone().into();
            // Dead-lettered by the queue's own delivery limit: no reason of the chassis'.
            let letter = DeadLetter::from_headers(id.clone(), headers.clone(), bytes::Bytes::clone(&body))
                .unwrap_or_else(|| {
                    let message_type = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("ce-type"))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let kind = if message_type == group {
                        Kind::Command
                    } else {
                        Kind::Event
                    };
                    let mut letter = DeadLetter::new(
                        group,
                        kind,
                        &message_type,
                        RawMessage { headers, body },
                        "exceeded the queue's delivery limit (x-delivery-limit)",
                    );
                    letter.id = id;
                    letter
                });
            letters.push((message.delivery.acker, letter));
        }
        Ok(letters)
    }
}
