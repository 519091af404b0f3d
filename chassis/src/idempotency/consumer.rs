use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::store::{Begin, IdempotencyStore, StoreError, StoredResponse};

/// Name of the consumer's counter.
pub const CONSUMED_TOTAL: &str = "chassis_idempotent_consumer_messages_total";

/// What [`IdempotentConsumer::process`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// The handler ran (for the first time) and returned this.
    Done(T),
    /// The message id was processed before: the handler was not run. Acknowledge it.
    Duplicate,
}

/// Why a message was not processed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError<E> {
    /// Another delivery of the same message is being processed right now; redeliver later.
    #[error("message {0:?} is being processed by another delivery")]
    InFlight(String),
    /// The store could not be reached: the handler was not run. Redeliver later.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The handler failed; the id was released so a redelivery runs it again.
    #[error("the handler failed: {0}")]
    Handler(E),
}

/// Runs a message handler at most once per message id, recording processed ids in an
/// [`IdempotencyStore`] for `ttl` (default 7 days, as NServiceBus keeps its records).
///
/// A delivery that finds its message claimed by another delivery still running waits for
/// that claim to end (completed: a duplicate; released or expired: it runs) rather than
/// failing, so the bus does not dead-letter a message because a slower copy of it holds the
/// claim; the wait is bounded by the claim's lease (default 60 s).
///
/// The record and the handler's effect are separate writes: a process that dies after the
/// effect and before the record runs the handler again on redelivery. With PostgreSQL, use
/// the [`Inbox`](crate::messaging::Inbox) instead, which commits both in one transaction.
///
/// ```
/// # async fn demo() {
/// use std::sync::Arc;
/// use chassis::idempotency::{IdempotentConsumer, MemoryStore, Processed};
///
/// let consumer = IdempotentConsumer::new(Arc::new(MemoryStore::default()), "billing");
/// let first = consumer.process("msg-1", || async { Ok::<_, std::io::Error>("charged") }).await.unwrap();
/// let again = consumer.process("msg-1", || async { Ok::<_, std::io::Error>("charged") }).await.unwrap();
/// assert_eq!(first, Processed::Done("charged"));
/// assert_eq!(again, Processed::Duplicate);
/// # }
/// ```
#[derive(Clone)]
pub struct IdempotentConsumer {
    store: Arc<dyn IdempotencyStore>,
    consumer: Arc<str>,
    lease: Duration,
    ttl: Duration,
}

impl std::fmt::Debug for IdempotentConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotentConsumer")
            .field("consumer", &self.consumer)
            .field("store", &self.store.name())
            .finish()
    }
}

impl IdempotentConsumer {
    /// A consumer named `consumer` (ids are scoped by it, so two consumers of one message both
    /// process it).
    pub fn new(store: Arc<dyn IdempotencyStore>, consumer: impl Into<Arc<str>>) -> Self {
        Self {
            store,
            consumer: consumer.into(),
            lease: Duration::from_secs(60),
            ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }

    /// How long a delivery may hold the id while its handler runs. Default 60 s: a delivery
    /// whose claim outlives it (its process died) stops blocking the message after that.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long processed ids are remembered. Default 7 days.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!(CONSUMED_TOTAL, "consumer" => self.consumer.to_string(), "outcome" => outcome).increment(1);
    }

    /// Runs `handler` unless `message_id` was processed already.
    pub async fn process<F, Fut, T, E>(&self, message_id: &str, handler: F) -> Result<Processed<T>, ConsumeError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = format!("message:{}:{message_id}", self.consumer);
        // Another delivery holds the claim: wait for it to end, at most until its lease does.
        let give_up = tokio::time::Instant::now() + self.lease + Duration::from_secs(1);
        let mut pause = Duration::from_millis(50);
        let token = loop {
            match self.store.begin(&key, "message", self.lease).await? {
                Begin::Claimed { token } => break token,
                Begin::Completed(_) | Begin::Mismatch => {
                    self.count("duplicate");
                    tracing::info!(consumer = %self.consumer, message_id, "duplicate message skipped");
                    return Ok(Processed::Duplicate);
                }
                Begin::InFlight { lease_left } => {
                    let now = tokio::time::Instant::now();
                    if now >= give_up {
                        self.count("in_flight");
                        return Err(ConsumeError::InFlight(message_id.to_owned()));
                    }
                    tokio::time::sleep(pause.min(lease_left.max(Duration::from_millis(10))).min(give_up - now)).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        };
        match handler().await {
            Ok(value) => {
                self.store
                    .complete(&key, &token, &StoredResponse::empty(), self.ttl)
                    .await?;
                self.count("processed");
                Ok(Processed::Done(value))
            }
            Err(error) => {
                self.count("failed");
                self.store.release(&key, &token).await?;
                Err(ConsumeError::Handler(error))
            }
        }
    }
}
