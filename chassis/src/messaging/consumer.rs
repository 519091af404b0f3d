//! The consumer's engine: each delivery decoded, handled with retries, acknowledged or
//! dead-lettered.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{
    CONSUMED_TOTAL, DEAD_LETTERED_TOTAL, Delivery, Envelope, HANDLER_DURATION, Incoming, Message, MessageHandler,
    MessagingConfig, Subscription, Transport,
};

/// Takes a subscription's deliveries one at a time: decodes, runs the handler with retries,
/// acknowledges or dead-letters.
pub(super) struct Consumer<M, H> {
    transport: Arc<dyn Transport>,
    config: Arc<MessagingConfig>,
    group: Arc<str>,
    handler: H,
    _message: std::marker::PhantomData<fn() -> M>,
}

impl<M, H> Consumer<M, H>
where
    M: Message,
    H: MessageHandler<M>,
{
    pub(super) fn new(transport: Arc<dyn Transport>, config: Arc<MessagingConfig>, group: &str, handler: H) -> Self {
        Self {
            transport,
            config,
            group: group.into(),
            handler,
            _message: std::marker::PhantomData,
        }
    }

    pub(super) async fn run(self, mut subscription: Box<dyn Subscription>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                next = subscription.next() => next,
            };
            match next {
                None => break,
                Some(Ok(delivery)) => {
                    failures = 0;
                    self.handle(delivery).await;
                }
                Some(Err(error)) => {
                    failures += 1;
                    let wait = backoff(&self.config, failures);
                    tracing::warn!(group = %self.group, %error, retry_in_ms = wait.as_millis() as u64, "subscription failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    async fn handle(&self, delivery: Delivery) {
        let message = delivery.message.clone();
        let decoded = Envelope::from_headers(&message.headers)
            .ok_or_else(|| "missing CloudEvents attributes (ce-id, ce-source, ce-type)".to_owned())
            .and_then(|envelope| {
                serde_json::from_slice::<M>(&message.body)
                    .map(|_| envelope)
                    .map_err(|e| format!("cannot decode {} payload: {e}", M::TYPE))
            });
        let envelope = match decoded {
            Ok(ok) => ok,
            Err(reason) => {
                self.dead_letter(delivery, &reason).await;
                return;
            }
        };
        let span = tracing::info_span!(
            target: "chassis::messaging",
            "process",
            otel.kind = "consumer",
            otel.name = %format!("process {}", M::TYPE),
            messaging.system = self.transport.name(),
            messaging.operation.type = "process",
            messaging.destination.name = M::TYPE,
            messaging.consumer.group.name = %self.group,
            messaging.message.id = %envelope.id,
        );
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("traceparent", &envelope.traceparent),
            ("tracestate", &envelope.tracestate),
        ] {
            if let Some(value) = value.as_deref().and_then(|v| http::HeaderValue::from_str(v).ok()) {
                headers.insert(name, value);
            }
        }
        let _ = span.set_parent(crate::telemetry::extract_context(&headers));
        let outcome = self
            .attempts(&message.body, envelope, delivery.delivered)
            .instrument(span)
            .await;
        match outcome {
            Ok(()) => {
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(group = %self.group, %error, "acknowledgement failed; the message will be redelivered");
                }
            }
            Err(reason) => self.dead_letter(delivery, &reason).await,
        }
    }

    /// Runs the handler until it succeeds or `max_attempts` is reached. Each attempt decodes
    /// the payload afresh, so a handler gets an untouched message every time.
    async fn attempts(&self, body: &Bytes, envelope: Envelope, delivered: u32) -> Result<(), String> {
        let mut attempt = 1;
        loop {
            let message: M = serde_json::from_slice(body).map_err(|e| e.to_string())?;
            let started = std::time::Instant::now();
            let result = self
                .handler
                .handle(Incoming {
                    message,
                    envelope: envelope.clone(),
                    delivered,
                })
                .await;
            metrics::histogram!(HANDLER_DURATION, "type" => M::TYPE, "group" => self.group.to_string())
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => {
                    metrics::counter!(CONSUMED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string(), "outcome" => "success").increment(1);
                    return Ok(());
                }
                Err(error) if attempt >= self.config.max_attempts => {
                    return Err(format!("handler failed {attempt} times; last error: {error}"));
                }
                Err(error) => {
                    metrics::counter!(CONSUMED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string(), "outcome" => "retried").increment(1);
                    let wait = backoff(&self.config, attempt);
                    tracing::warn!(group = %self.group, attempt, %error, retry_in_ms = wait.as_millis() as u64, "handler failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn dead_letter(&self, delivery: Delivery, reason: &str) {
        tracing::error!(group = %self.group, r#type = M::TYPE, reason, "message dead-lettered");
        match self.transport.dead_letter(&self.group, &delivery.message, reason).await {
            Ok(()) => {
                metrics::counter!(DEAD_LETTERED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string())
                    .increment(1);
                metrics::counter!(CONSUMED_TOTAL, "type" => M::TYPE, "group" => self.group.to_string(), "outcome" => "dead_lettered").increment(1);
                if let Err(error) = delivery.ack().await {
                    tracing::warn!(group = %self.group, %error, "acknowledging a dead-lettered message failed; it may be delivered again");
                }
            }
            // Not acknowledged: the broker delivers it again rather than losing it.
            Err(error) => {
                tracing::error!(group = %self.group, %error, "storing the dead letter failed; leaving the message unacknowledged")
            }
        }
    }
}

fn backoff(config: &MessagingConfig, attempt: u32) -> Duration {
    let exponential = config
        .retry_base_delay
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(20)));
    let capped = exponential.min(config.retry_max_delay);
    // Equal jitter: at least half the step, so retries keep spreading out.
    capped / 2 + capped.mul_f64(fastrand::f64() / 2.0)
}
