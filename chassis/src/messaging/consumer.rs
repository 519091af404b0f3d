//! The consumer's engine: each delivery checked against the delivery limit, decoded, handled
//! with retries (a panic is a failed attempt), acknowledged or dead-lettered; and the
//! supervisor that restarts a consumer whose subscription ends.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use opentelemetry::trace::Status;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::consumers::ConsumerStates;
use super::{
    CONSUMED_TOTAL, DEAD_LETTERED_TOTAL, DeadLetter, Delivery, Envelope, HANDLER_DURATION, Incoming, Kind, Message,
    MessageHandler, MessagingConfig, Subscription, Transport,
};

/// The header naming the one group a replayed dead letter is for; the consumers of other
/// groups acknowledge it without handling it.
pub(crate) const REPLAY_GROUP: &str = "chassis-replay-group";

/// Takes a subscription's deliveries one at a time: decodes, runs the handler with retries,
/// acknowledges or dead-letters.
pub(super) struct Consumer<M, H> {
    transport: Arc<dyn Transport>,
    config: Arc<MessagingConfig>,
    kind: Kind,
    group: Arc<str>,
    handler: H,
    _message: std::marker::PhantomData<fn() -> M>,
}

/// How the handling of one delivery ended.
enum Handled {
    /// The handler succeeded.
    Done,
    /// Every attempt failed, or the message cannot be handled: dead-letter it.
    GaveUp { reason: String, attempts: u32 },
    /// Shutdown came during a retry wait: leave it unacknowledged for a redelivery.
    Abandoned,
}

impl<M, H> Consumer<M, H>
where
    M: Message,
    H: MessageHandler<M>,
{
    pub(super) fn new(
        transport: Arc<dyn Transport>,
        config: Arc<MessagingConfig>,
        kind: Kind,
        group: &str,
        handler: H,
    ) -> Self {
        Self {
            transport,
            config,
            kind,
            group: group.into(),
            handler,
            _message: std::marker::PhantomData,
        }
    }

    /// Runs `subscription` until `shutdown` or until the subscription ends; the message in
    /// hand is finished first.
    async fn run(&self, subscription: &mut dyn Subscription, shutdown: &CancellationToken) {
        let mut failures = 0u32;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                next = subscription.next() => next,
            };
            match next {
                None => return,
                Some(Ok(delivery)) => {
                    failures = 0;
                    self.handle(delivery, shutdown).await;
                }
                Some(Err(error)) => {
                    failures += 1;
                    let wait = backoff(&self.config, failures);
                    tracing::warn!(group = %self.group, %error, retry_in_ms = wait.as_millis() as u64, "subscription failed; retrying");
                    if !sleep_unless(shutdown, wait).await {
                        return;
                    }
                }
            }
        }
    }

    async fn handle(&self, delivery: Delivery, shutdown: &CancellationToken) {
        let header = |name: &str| {
            delivery
                .message
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if header(REPLAY_GROUP).is_some_and(|group| group != &*self.group) {
            // Replayed for another group that shares the destination.
            self.count("skipped");
            if let Err(error) = delivery.ack().await {
                tracing::warn!(group = %self.group, %error, "acknowledging another group's replay failed");
            }
            return;
        }
        let destination = self.transport.destination(self.kind, M::TYPE);
        let span = tracing::info_span!(
            target: "chassis::messaging",
            "process",
            otel.kind = "consumer",
            otel.name = %format!("process {destination}"),
            messaging.system = self.transport.name(),
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = %destination,
            messaging.consumer.group.name = %self.group,
            messaging.message.id = tracing::field::Empty,
            message.type = M::TYPE,
            error.type = tracing::field::Empty,
        );
        // An integer through the OpenTelemetry API (a `tracing` field would be a string).
        span.set_attribute("messaging.message.delivery_count", i64::from(delivery.delivered));
        let decoded = Envelope::from_headers(&delivery.message.headers)
            .ok_or_else(|| "missing CloudEvents attributes (ce-id, ce-source, ce-type)".to_owned())
            .and_then(|envelope| {
                serde_json::from_slice::<M>(&delivery.message.body)
                    .map(|_| envelope)
                    .map_err(|e| format!("cannot decode {} payload: {e}", M::TYPE))
            });
        if let Ok(envelope) = &decoded {
            span.record("messaging.message.id", envelope.id.as_str());
            let _ = span.set_parent(crate::telemetry::extract_context(&envelope.trace_headers()));
        }
        let handled = match decoded {
            _ if delivery.delivered > self.config.max_deliveries => Handled::GaveUp {
                reason: format!(
                    "delivered {} times without being acknowledged (messaging.max_deliveries = {}): the consumer crashed or lost its connection while handling it",
                    delivery.delivered, self.config.max_deliveries
                ),
                attempts: 0,
            },
            Err(reason) => Handled::GaveUp { reason, attempts: 0 },
            Ok(envelope) => {
                self.attempts(&delivery, envelope, shutdown)
                    .instrument(span.clone())
                    .await
            }
        };
        match handled {
            Handled::Done => {
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(parent: &span, group = %self.group, %error, "acknowledgement failed; the message will be redelivered");
                }
            }
            Handled::GaveUp { reason, attempts } => self.dead_letter(delivery, &span, &reason, attempts).await,
            Handled::Abandoned => {
                self.count("abandoned");
                tracing::info!(parent: &span, group = %self.group, "shutting down during a retry wait; the message will be redelivered");
            }
        }
    }

    /// Runs the handler until it succeeds or `max_attempts` is reached. Each attempt decodes
    /// the payload afresh, so a handler gets an untouched message every time; a panicking
    /// attempt is a failed one.
    async fn attempts(&self, delivery: &Delivery, envelope: Envelope, shutdown: &CancellationToken) -> Handled {
        let mut attempt = 1;
        loop {
            let message: M = match serde_json::from_slice(&delivery.message.body) {
                Ok(message) => message,
                Err(error) => {
                    return Handled::GaveUp {
                        reason: error.to_string(),
                        attempts: attempt - 1,
                    };
                }
            };
            let started = std::time::Instant::now();
            let run = AssertUnwindSafe(self.handler.handle(Incoming {
                message,
                envelope: envelope.clone(),
                delivered: delivery.delivered,
            }))
            .catch_unwind();
            let result = match self.in_progress(delivery, run).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(panic) => Err(format!("the handler panicked: {}", panic_message(&*panic))),
            };
            metrics::histogram!(HANDLER_DURATION, "type" => M::TYPE, "group" => self.group.to_string())
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    self.count("success");
                    return Handled::Done;
                }
                Err(error) if attempt >= self.config.max_attempts => {
                    return Handled::GaveUp {
                        reason: format!("handler failed {attempt} times; last error: {error}"),
                        attempts: attempt,
                    };
                }
                Err(error) => {
                    self.count("retried");
                    let wait = backoff(&self.config, attempt);
                    tracing::warn!(group = %self.group, attempt, %error, retry_in_ms = wait.as_millis() as u64, "handler failed; retrying");
                    if !sleep_unless(shutdown, wait).await {
                        return Handled::Abandoned;
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Drives `run`, telling the broker the message is in progress every half `ack_wait`, so a
    /// long handler is not redelivered to another consumer meanwhile.
    async fn in_progress<F: std::future::Future>(&self, delivery: &Delivery, run: F) -> F::Output {
        let every = (self.config.ack_wait / 2).max(Duration::from_millis(500));
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tokio::pin!(run);
        loop {
            tokio::select! {
                output = &mut run => return output,
                _ = ticks.tick() => {
                    if let Err(error) = delivery.progress().await {
                        tracing::warn!(group = %self.group, %error, "telling the broker the message is in progress failed");
                    }
                }
            }
        }
    }

    async fn dead_letter(&self, delivery: Delivery, span: &tracing::Span, reason: &str, attempts: u32) {
        span.record("error.type", "dead_lettered");
        span.set_status(Status::error(reason.to_owned()));
        let letter = DeadLetter::new(&self.group, self.kind, M::TYPE, delivery.message.clone(), reason)
            .with_counts(delivery.delivered, attempts);
        tracing::error!(parent: span, group = %self.group, r#type = M::TYPE, deliveries = delivery.delivered, attempts, reason, "message dead-lettered");
        match self.transport.dead_letter(&letter).await {
            Ok(()) => {
                metrics::counter!(DEAD_LETTERED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string())
                    .increment(1);
                self.count("dead_lettered");
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(parent: span, group = %self.group, %error, "acknowledging a dead-lettered message failed; it may be delivered again");
                }
            }
            // Not acknowledged: the broker delivers it again rather than losing it.
            Err(error) => {
                tracing::error!(parent: span, group = %self.group, %error, "storing the dead letter failed; leaving the message unacknowledged")
            }
        }
    }

    fn count(&self, outcome: &'static str) {
        metrics::counter!(CONSUMED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string(), "outcome" => outcome)
            .increment(1);
    }
}

/// Keeps one consumer running: subscribes again, with backoff, when its subscription ends or
/// its task panics outside a handler, and reports it down meanwhile; stops at `shutdown`.
pub(super) async fn supervise<M, H>(
    consumer: Consumer<M, H>,
    mut subscription: Box<dyn Subscription>,
    shutdown: CancellationToken,
    states: ConsumerStates,
    name: String,
) where
    M: Message,
    H: MessageHandler<M>,
{
    let mut restarts = 0u32;
    loop {
        states.set(&name, true);
        let ended = AssertUnwindSafe(consumer.run(&mut *subscription, &shutdown))
            .catch_unwind()
            .await;
        if shutdown.is_cancelled() {
            break;
        }
        states.set(&name, false);
        match ended {
            Ok(()) => tracing::error!(consumer = %name, "the subscription ended; subscribing again"),
            Err(panic) => {
                tracing::error!(consumer = %name, panic = panic_message(&*panic), "the consumer panicked; subscribing again")
            }
        }
        loop {
            restarts += 1;
            metrics::counter!(super::CONSUMER_RESTARTS_TOTAL, "group" => consumer.group.to_string(), "type" => M::TYPE)
                .increment(1);
            if !sleep_unless(&shutdown, backoff(&consumer.config, restarts.min(10))).await {
                states.remove(&name);
                return;
            }
            match consumer
                .transport
                .subscribe(consumer.kind, M::TYPE, &consumer.group)
                .await
            {
                Ok(again) => {
                    subscription = again;
                    // The next interruption starts from the shortest wait again.
                    restarts = 0;
                    break;
                }
                Err(error) => tracing::error!(consumer = %name, %error, "subscribing again failed; retrying"),
            }
        }
    }
    states.remove(&name);
}

/// Sleeps `wait`; `false` when `shutdown` fired first.
async fn sleep_unless(shutdown: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

fn backoff(config: &MessagingConfig, attempt: u32) -> Duration {
    let exponential = config
        .retry_base_delay
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    let capped = exponential.min(config.retry_max_delay);
    // Equal jitter: at least half the step, so retries keep spreading out.
    capped / 2 + capped.mul_f64(fastrand::f64() / 2.0)
}
