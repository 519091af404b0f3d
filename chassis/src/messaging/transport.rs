//! What a broker offers the bus: publish with confirmation, subscriptions per group, dead
//! letters.

use futures_util::future::BoxFuture;

use super::{MessagingError, RawMessage};

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
    pub(super) fn as_str(self) -> &'static str {
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
