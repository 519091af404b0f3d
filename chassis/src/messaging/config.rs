//! `[messaging]`: the transport and the consumers' retry policy.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{Problems, Validate};

/// `[messaging]`: the transport and the consumers' retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MessagingConfig {
    /// `transport`: `"memory"` (default), `"nats"` (feature `nats`) or `"amqp"` (feature `amqp`,
    /// RabbitMQ).
    pub transport: String,
    /// `url`: the broker, e.g. `"nats://127.0.0.1:4222"`. Default: none (memory needs none).
    pub url: Option<String>,
    /// `namespace`: prefix of subjects, streams and consumers. Default `"chassis"`.
    pub namespace: String,
    /// `max_attempts`: handler attempts per delivery before the message is dead-lettered.
    /// Default `5`.
    pub max_attempts: u32,
    /// `max_deliveries`: deliveries of one message to a group before it is dead-lettered
    /// without running the handler again: the poison-message limit for a message whose
    /// handling crashes the consumer or loses its connection. Default `5`.
    pub max_deliveries: u32,
    /// `retry_base_delay`: first backoff between attempts. Default `"100ms"`.
    #[serde(with = "crate::config::duration")]
    pub retry_base_delay: Duration,
    /// `retry_max_delay`: longest backoff. Default `"10s"`.
    #[serde(with = "crate::config::duration")]
    pub retry_max_delay: Duration,
    /// `concurrency`: messages a subscription handles at once. Default `8`.
    pub concurrency: usize,
    /// `ack_wait`: how long the broker waits for an acknowledgement before redelivering
    /// (NATS). Default `"30s"`. A handler running longer tells the broker every half
    /// `ack_wait` that it is still working.
    #[serde(with = "crate::config::duration")]
    pub ack_wait: Duration,
    /// `publish_timeout`: how long a publish waits for the broker's confirmation, including the
    /// time a dropped connection takes to come back, before it fails. Default `"15s"`.
    #[serde(with = "crate::config::duration")]
    pub publish_timeout: Duration,
}

impl Default for MessagingConfig {
    fn default() -> Self {
        Self {
            transport: "memory".into(),
            url: None,
            namespace: "chassis".into(),
            max_attempts: 5,
            max_deliveries: 5,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(10),
            concurrency: 8,
            ack_wait: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(15),
        }
    }
}

impl Validate for MessagingConfig {
    fn validate(&self, problems: &mut Problems) {
        let known = ["memory", "nats", "amqp"];
        problems.check(
            known.contains(&self.transport.as_str()),
            "transport",
            format!("must be one of {known:?}"),
        );
        problems.check(
            self.transport == "memory" || self.url.is_some(),
            "url",
            "is required for the nats and amqp transports, e.g. \"nats://127.0.0.1:4222\"",
        );
        problems.check(self.max_attempts > 0, "max_attempts", "must be at least 1");
        problems.check(self.max_deliveries > 0, "max_deliveries", "must be at least 1");
        problems.check(
            self.ack_wait >= Duration::from_secs(1),
            "ack_wait",
            "must be at least 1s",
        );
        problems.check(
            self.publish_timeout >= Duration::from_millis(100),
            "publish_timeout",
            "must be at least 100ms",
        );
        problems.check(self.concurrency > 0, "concurrency", "must be at least 1");
        problems.check(
            !self.namespace.is_empty()
                && self
                    .namespace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
            "namespace",
            "must be letters, digits, '-' or '_'",
        );
    }
}
