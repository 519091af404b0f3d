//! What a broker offers the bus: publish with confirmation, subscriptions per group, dead
//! letters kept, listed and replayed.

use futures_util::future::BoxFuture;

use super::{MessagingError, RawMessage};

/// One delivery of a message to a consumer. Acknowledge it once handled; dropping it unacked
/// makes the transport redeliver it.
pub struct Delivery {
    /// The message.
    pub message: RawMessage,
    /// How many times it has been delivered to the group, this time included, as the broker
    /// counts (a consumer that crashed or lost its connection before acknowledging counts).
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

    /// Tells the broker the message is still being worked on, so it is not redelivered to
    /// another consumer while a long handler runs (NATS' in-progress acknowledgement).
    pub async fn progress(&self) -> Result<(), MessagingError> {
        self.acker.progress().await
    }
}

/// Acknowledges one delivery to its transport.
pub trait Acker: Send + Sync {
    /// Marks the delivery handled.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), MessagingError>>;

    /// Extends the time the broker waits for the acknowledgement. Brokers that wait as long as
    /// the consumer's connection lives (RabbitMQ) need nothing: the default does nothing.
    fn progress(&self) -> BoxFuture<'_, Result<(), MessagingError>> {
        Box::pin(async { Ok(()) })
    }
}

/// A stream of deliveries for one group.
pub trait Subscription: Send {
    /// The next delivery; `None` when the subscription ended.
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery, MessagingError>>>;
}

/// Whether a destination fans out (events) or has one handling group (commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Every group gets every message; a new group starts with the messages published after it
    /// subscribed.
    Event,
    /// One group; messages sent before the handler subscribed wait for it.
    Command,
}

impl Kind {
    /// `event` or `command`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Command => "command",
        }
    }

    /// Parses [`Kind::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "event" => Some(Kind::Event),
            "command" => Some(Kind::Command),
            _ => None,
        }
    }
}

/// A message on its way to a destination: what [`Transport::publish_batch`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Event or command.
    pub kind: Kind,
    /// The message type, which names the destination.
    pub message_type: String,
    /// The message.
    pub message: RawMessage,
}

/// A message a group gave up on, with why, kept by the transport until it is replayed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The transport's id of the dead letter (empty when it is being stored).
    pub id: String,
    /// The group that gave up on it.
    pub group: String,
    /// Event or command: with the type, where a replay sends it.
    pub kind: Kind,
    /// The message type.
    pub message_type: String,
    /// Why: the last handler error, a decoding error, or the delivery limit.
    pub reason: String,
    /// How many times the message had been delivered to the group.
    pub deliveries: u32,
    /// How many times the handler ran in the last delivery.
    pub attempts: u32,
    /// The message as it arrived.
    #[serde(skip)]
    pub message: RawMessage,
}

impl DeadLetter {
    /// A dead letter of `message` for `group`.
    pub fn new(group: &str, kind: Kind, message_type: &str, message: RawMessage, reason: &str) -> Self {
        Self {
            id: String::new(),
            group: group.to_owned(),
            kind,
            message_type: message_type.to_owned(),
            reason: reason.to_owned(),
            deliveries: 1,
            attempts: 0,
            message,
        }
    }

    /// Sets the delivery and attempt counts.
    pub fn with_counts(mut self, deliveries: u32, attempts: u32) -> Self {
        self.deliveries = deliveries;
        self.attempts = attempts;
        self
    }

    /// The message's headers with the dead letter's own (`chassis-dead-letter-*`) added, for
    /// transports that keep dead letters as messages.
    pub fn to_headers(&self) -> Vec<(String, String)> {
        let mut headers = self.message.headers.clone();
        let reason = self.reason.replace(['\r', '\n'], " ");
        for (name, value) in [
            (DEAD_LETTER_REASON, reason),
            (DEAD_LETTER_GROUP, self.group.clone()),
            (DEAD_LETTER_KIND, self.kind.as_str().to_owned()),
            (DEAD_LETTER_TYPE, self.message_type.clone()),
            (DEAD_LETTER_DELIVERIES, self.deliveries.to_string()),
            (DEAD_LETTER_ATTEMPTS, self.attempts.to_string()),
        ] {
            headers.push((name.to_owned(), value));
        }
        headers
    }

    /// Reads back a dead letter stored with [`DeadLetter::to_headers`]; `None` when the
    /// headers are not a dead letter's.
    pub fn from_headers(id: String, headers: Vec<(String, String)>, body: bytes::Bytes) -> Option<Self> {
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let letter = Self {
            id,
            group: get(DEAD_LETTER_GROUP)?,
            kind: Kind::parse(&get(DEAD_LETTER_KIND)?)?,
            message_type: get(DEAD_LETTER_TYPE)?,
            reason: get(DEAD_LETTER_REASON).unwrap_or_default(),
            deliveries: get(DEAD_LETTER_DELIVERIES).and_then(|v| v.parse().ok()).unwrap_or(1),
            attempts: get(DEAD_LETTER_ATTEMPTS).and_then(|v| v.parse().ok()).unwrap_or(0),
            message: RawMessage {
                headers: headers
                    .iter()
                    .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("chassis-dead-letter-"))
                    .cloned()
                    .collect(),
                body,
            },
        };
        Some(letter)
    }
}

const DEAD_LETTER_REASON: &str = "chassis-dead-letter-reason";
const DEAD_LETTER_GROUP: &str = "chassis-dead-letter-group";
const DEAD_LETTER_KIND: &str = "chassis-dead-letter-kind";
const DEAD_LETTER_TYPE: &str = "chassis-dead-letter-type";
const DEAD_LETTER_DELIVERIES: &str = "chassis-dead-letter-deliveries";
const DEAD_LETTER_ATTEMPTS: &str = "chassis-dead-letter-attempts";

/// A broker: publish with confirmation, subscribe per group, keep dead letters.
pub trait Transport: Send + Sync + 'static {
    /// `memory`, `nats`, `rabbitmq`, ...
    fn name(&self) -> &'static str;

    /// Publishes `message` to the destination of `kind` and `message_type`; returns once the
    /// broker has confirmed it.
    fn publish<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        message: RawMessage,
    ) -> BoxFuture<'a, Result<(), MessagingError>>;

    /// Publishes `messages` in order and waits for the broker's confirmations; returns how many
    /// of them, from the first, were confirmed, and the error that stopped the rest. Brokers
    /// that can keep several publishes in flight on one connection send them all before
    /// waiting (the default publishes one after the other).
    fn publish_batch<'a>(&'a self, messages: &'a [Outgoing]) -> BoxFuture<'a, (usize, Option<MessagingError>)> {
        Box::pin(async move {
            for (sent, outgoing) in messages.iter().enumerate() {
                let result = self
                    .publish(outgoing.kind, &outgoing.message_type, outgoing.message.clone())
                    .await;
                if let Err(error) = result {
                    return (sent, Some(error));
                }
            }
            (messages.len(), None)
        })
    }

    /// A subscription of `group` to the destination. Several subscriptions of one group share
    /// its messages.
    fn subscribe<'a>(
        &'a self,
        kind: Kind,
        message_type: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, MessagingError>>;

    /// Stores `letter` with the dead letters of its group.
    fn dead_letter<'a>(&'a self, letter: &'a DeadLetter) -> BoxFuture<'a, Result<(), MessagingError>>;

    /// Up to `limit` dead letters of `group`, oldest first, with the ids
    /// [`replay_dead_letters`](Transport::replay_dead_letters) takes.
    fn list_dead_letters<'a>(
        &'a self,
        group: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<DeadLetter>, MessagingError>>;

    /// Sends dead letters of `group` back to their destination and removes them: those with
    /// the given ids, or, with no ids, up to `limit` of them, oldest first. Returns how many
    /// were replayed.
    fn replay_dead_letters<'a>(
        &'a self,
        group: &'a str,
        ids: &'a [String],
        limit: usize,
    ) -> BoxFuture<'a, Result<usize, MessagingError>>;

    /// The broker's name for the destination of `kind` and `message_type` (the NATS subject,
    /// the RabbitMQ exchange): `messaging.destination.name` in spans. Default: the type.
    fn destination(&self, kind: Kind, message_type: &str) -> String {
        let _ = kind;
        message_type.to_owned()
    }

    /// `true` while the transport is connected (reported by readiness).
    fn is_connected(&self) -> bool {
        true
    }
}
