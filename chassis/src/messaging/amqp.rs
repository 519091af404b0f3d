use std::collections::HashSet;
use std::sync::Mutex;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use super::{Acker, Delivery, Kind, MessagingConfig, MessagingError, RawMessage, Subscription, Transport};
use futures_util::future::BoxFuture;

/// How long a publish waits for a dropped connection to come back before failing.
const RECOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

fn error(e: impl std::fmt::Display) -> MessagingError {
    MessagingError::transport("amqp", e)
}

/// RabbitMQ (AMQP 0.9.1): a durable topic exchange `{ns}.events` with a durable queue per group
/// and event type (`{ns}.{group}.{type}`), a direct exchange `{ns}.commands` with a durable queue
/// per command type, a direct exchange `{ns}.dead-letters` with a queue per group, persistent
/// messages, publisher confirms, manual acknowledgements and a prefetch of one per consumer.
/// Unacknowledged messages of a consumer that goes away are requeued by the broker. After the
/// broker drops the connection, lapin's auto-recovery reopens it with its channels and
/// consumers; an interrupted publish is sent again once it is back.
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::messaging::MessagingError> {
/// let transport = chassis::messaging::AmqpTransport::connect("amqp://guest:guest@127.0.0.1:5672/%2f", &Default::default()).await?;
/// # let _ = transport; Ok(()) }
/// ```
pub struct AmqpTransport {
    connection: Connection,
    publisher: Channel,
    namespace: String,
    declared: Mutex<HashSet<String>>,
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
        // Auto-recovery reopens the connection, channels, queues and consumers after the broker
        // drops them; publishing and consuming wait for it (see `wait_for_recovery` below).
        let properties = ConnectionProperties::default()
            // Shown by the management UI and `rabbitmqctl list_connections client_properties`.
            .with_connection_name(LongString::from(format!("chassis {}", config.namespace)))
            .enable_auto_recover();
        let connection = Connection::connect(url, properties)
            .await
            .map_err(|e| error(format!("cannot connect to {url}: {e}")))?;
        let publisher = connection.create_channel().await.map_err(error)?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(error)?;
        let namespace = config.namespace.clone();
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
            namespace,
            declared: Mutex::new(HashSet::new()),
        })
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

    /// Declares a durable queue bound to `exchange` with `key`, once per process.
    async fn declare_bound(
        &self,
        channel: &Channel,
        queue: &str,
        exchange: &str,
        key: &str,
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
                FieldTable::default(),
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

    async fn publish_confirmed(
        &self,
        exchange: &str,
        key: &str,
        message: &RawMessage,
        extra: &[(&str, &str)],
    ) -> Result<(), MessagingError> {
        let mut headers = FieldTable::default();
        for (name, value) in message
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra.iter().copied())
        {
            headers.insert(ShortString::from(name), AMQPValue::LongString(LongString::from(value)));
        }
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_content_type("application/json".into())
            // Persistent: survives a broker restart.
            .with_delivery_mode(2);
        // A publish interrupted by a dropped connection is sent again once the connection is
        // back: the caller only hears success after a confirmation (at least once, never lost).
        let deadline = tokio::time::Instant::now() + RECOVERY_WAIT;
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            let result = async {
                self.publisher
                    .basic_publish(
                        exchange.into(),
                        key.into(),
                        BasicPublishOptions::default(),
                        &message.body,
                        properties.clone(),
                    )
                    .await?
                    .await
            }
            .await;
            match result {
                Ok(confirm) if confirm.is_nack() => return Err(error("the broker refused the message (nack)")),
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "publish interrupted; waiting for the connection to recover");
                    // Waits for the recovery when lapin knows one is under way; the pause covers
                    // the moments it is still reconnecting.
                    let _ = self.publisher.wait_for_recovery(e).await;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => {
                    return Err(error(format!(
                        "the broker did not confirm the message and the connection did not recover within {}s: {e}",
                        RECOVERY_WAIT.as_secs()
                    )));
                }
            }
        }
    }
}

struct AmqpSubscription {
    consumer: lapin::Consumer,
    // Kept so the channel lives as long as the subscription (closing it requeues what is
    // unacknowledged), and to wait for its recovery after a dropped connection.
    channel: Channel,
}

struct AmqpAcker {
    acker: lapin::Acker,
}

impl Acker for AmqpAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), MessagingError>> {
        Box::pin(async move {
            self.acker.ack(BasicAckOptions::default()).await.map_err(error)?;
            Ok(())
        })
    }
}

fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

impl Subscription for AmqpSubscription {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery, MessagingError>>> {
        Box::pin(async move {
            let delivery = loop {
                match self.consumer.next().await? {
                    Ok(delivery) => break delivery,
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer interrupted; waiting for the connection to recover");
                        // Deliveries not yet acknowledged are requeued by the broker and come again.
                        if let Err(e) = self.channel.wait_for_recovery(e).await {
                            return Some(Err(error(format!("the connection did not recover: {e}"))));
                        }
                    }
                }
            };
            let headers = delivery
                .properties
                .headers()
                .as_ref()
                .map(|table| {
                    table
                        .inner()
                        .iter()
                        .filter_map(|(k, v)| Some((k.to_string(), header_text(v)?)))
                        .collect()
                })
                .unwrap_or_default();
            let raw = RawMessage {
                headers,
                body: delivery.data.clone().into(),
            };
            // AMQP 0.9.1 only says whether a message was delivered before.
            let delivered = if delivery.redelivered { 2 } else { 1 };
            Some(Ok(Delivery::new(
                raw,
                delivered,
                Box::new(AmqpAcker { acker: delivery.acker }),
            )))
        })
    }
}

impl Transport for AmqpTransport {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn publish<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move {
            if kind == Kind::Command {
                // Commands wait for their handler: the queue exists before the first send.
                let queue = format!("{}.command.{message_type}", self.namespace);
                self.declare_bound(&self.publisher, &queue, &self.exchange(kind), message_type)
                    .await?;
            }
            self.publish_confirmed(&self.exchange(kind), message_type, &message, &[])
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
            let channel = self.connection.create_channel().await.map_err(error)?;
            channel.basic_qos(1, BasicQosOptions::default()).await.map_err(error)?;
            let queue = match kind {
                Kind::Event => format!("{}.{group}.{message_type}", self.namespace),
                Kind::Command => format!("{}.command.{message_type}", self.namespace),
            };
            self.declare_bound(&channel, &queue, &self.exchange(kind), message_type)
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
            Ok(Box::new(AmqpSubscription { consumer, channel }) as Box<dyn Subscription>)
        })
    }

    fn dead_letter<'a>(
        &'a self,
        group: &'a str,
        message: &'a RawMessage,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), MessagingError>> {
        Box::pin(async move {
            let exchange = format!("{}.dead-letters", self.namespace);
            let queue = self.dead_letter_queue(group);
            self.declare_bound(&self.publisher, &queue, &exchange, group).await?;
            self.publish_confirmed(
                &exchange,
                group,
                message,
                &[
                    ("chassis-dead-letter-reason", reason),
                    ("chassis-dead-letter-group", group),
                ],
            )
            .await
        })
    }

    fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }
}
