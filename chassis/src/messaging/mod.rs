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
mod bus;
mod config;
mod consumer;
mod consumers;
mod envelope;
mod error;
mod handler;
#[cfg(feature = "postgres")]
mod inbox;
mod memory;
mod message;
#[cfg(feature = "nats")]
mod nats;
mod transport;

use std::sync::Arc;

#[cfg(feature = "amqp")]
pub use amqp::AmqpTransport;
pub use bus::Bus;
#[cfg(feature = "postgres")]
pub(crate) use bus::{publish_failed, publish_span};
pub use config::MessagingConfig;
#[cfg(feature = "postgres")]
pub(crate) use envelope::encode;
pub use envelope::{Envelope, Publish, RawMessage};
pub use error::MessagingError;
pub use handler::{Incoming, MessageHandler};
#[cfg(feature = "postgres")]
pub(crate) use inbox::delete_processed;
#[cfg(feature = "postgres")]
pub use inbox::{INBOX_TOTAL, Inbox, InboxError, InboxHandler};
pub use memory::MemoryTransport;
pub use message::{Command, Event, Message};
#[cfg(feature = "nats")]
pub use nats::NatsTransport;
pub use transport::{Acker, DeadLetter, Delivery, Kind, Outgoing, Subscription, Transport};

/// Name of the publish counter.
pub const PUBLISHED_TOTAL: &str = "chassis_messages_published_total";
/// Name of the consume counter (`outcome`: `success`, `retried`, `dead_lettered`).
pub const CONSUMED_TOTAL: &str = "chassis_messages_consumed_total";
/// Name of the dead-letter counter.
pub const DEAD_LETTERED_TOTAL: &str = "chassis_messages_dead_lettered_total";
/// Name of the handler duration histogram.
pub const HANDLER_DURATION: &str = "chassis_message_handler_duration_seconds";
/// Name of the counter of consumers subscribed again after their subscription ended.
pub const CONSUMER_RESTARTS_TOTAL: &str = "chassis_message_consumer_restarts_total";

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

/// HELP and units for the metrics of this module.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(PUBLISHED_TOTAL, "Messages published, by type and kind.");
    metrics::describe_counter!(
        CONSUMED_TOTAL,
        "Messages consumed, by type, group and outcome (success, retried, dead_lettered)."
    );
    metrics::describe_counter!(
        DEAD_LETTERED_TOTAL,
        "Messages moved to the dead letters, by type and group."
    );
    metrics::describe_histogram!(
        HANDLER_DURATION,
        metrics::Unit::Seconds,
        "Duration of message handlers, by type and group."
    );
    metrics::describe_counter!(
        CONSUMER_RESTARTS_TOTAL,
        "Consumers subscribed again after their subscription ended, by group and type."
    );
    #[cfg(feature = "postgres")]
    metrics::describe_counter!(INBOX_TOTAL, "Messages seen by the inbox, by consumer and outcome.");
}
