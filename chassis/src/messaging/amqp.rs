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
use crate::http::BoxFuture;

fn error(e: impl std::fmt::Display) -> MessagingError {
    MessagingError::transport("amqp", e)
}

/// RabbitMQ (AMQP 0.9.1): a durable topic exchange `{ns}.events` with a durable queue per group
/// and event type (`{ns}.{group}.{type}`), a direct exchange `{ns}.commands` with a durable queue
/// per command type, a direct exchange `{ns}.dead-letters` with a queue per group, persistent
/// messages, publisher confirms, manual acknowledgements and a prefetch of one per consumer.
/// Unacknowledged messages of a consumer that goes away are requeued by the broker.
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
        let connection = Connection::connect(url, ConnectionProperties::default())
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
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                &message.body,
                properties,
            )
            .await
            .map_err(error)?
            .await
            .map_err(|e| error(format!("the broker did not confirm the message: {e}")))?;
        if confirm.is_nack() {
            return Err(error("the broker refused the message (nack)"));
        }
        Ok(())
    }
}

struct AmqpSubscription {
    consumer: lapin::Consumer,
    // Kept so the channel lives as long as the subscription; closing it requeues what is unacked.
    _channel: Channel,
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
            let delivery = match self.consumer.next().await? {
                Ok(delivery) => delivery,
                Err(e) => return Some(Err(error(e))),
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
            Ok(Box::new(AmqpSubscription {
                consumer,
                _channel: channel,
            }) as Box<dyn Subscription>)
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
