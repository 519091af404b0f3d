//! `[outbox]`: how the relay publishes and when readiness warns.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{Problems, Validate};

/// `[outbox]`: the relay that publishes the outbox.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OutboxConfig {
    /// `outbox.batch_size`: rows read per round. Default `128`.
    pub batch_size: u32,
    /// `outbox.max_in_flight`: publishes sent before their confirmations are awaited. Default
    /// `128`. `1` keeps the order strict even when a publish fails partway (see the outbox
    /// guide), at one broker round trip per message.
    pub max_in_flight: u32,
    /// `outbox.poll_interval`: how often the relay looks for rows when no notification came
    /// (it is woken by `LISTEN/NOTIFY` at every commit that adds rows). Default `"1s"`.
    #[serde(with = "crate::config::duration")]
    pub poll_interval: Duration,
    /// `outbox.retry_base_delay`: the first wait after a failed publish. Default `"200ms"`.
    #[serde(with = "crate::config::duration")]
    pub retry_base_delay: Duration,
    /// `outbox.retry_max_delay`: the longest wait between publish attempts. Default `"10s"`.
    #[serde(with = "crate::config::duration")]
    pub retry_max_delay: Duration,
    /// `outbox.lag_warning`: readiness reports `warn` while the oldest unpublished row is older.
    /// Default `"30s"`.
    #[serde(with = "crate::config::duration")]
    pub lag_warning: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            batch_size: 128,
            max_in_flight: 128,
            poll_interval: Duration::from_secs(1),
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(10),
            lag_warning: Duration::from_secs(30),
        }
    }
}

impl Validate for OutboxConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(self.batch_size > 0, "batch_size", "must be at least 1");
        problems.check(self.max_in_flight > 0, "max_in_flight", "must be at least 1");
        problems.check(
            self.poll_interval >= Duration::from_millis(10),
            "poll_interval",
            "must be at least 10ms",
        );
        problems.check(
            self.retry_max_delay >= self.retry_base_delay && !self.retry_base_delay.is_zero(),
            "retry_max_delay",
            "must be at least retry_base_delay, which must be greater than zero",
        );
        problems.check(!self.lag_warning.is_zero(), "lag_warning", "must be greater than zero");
    }
}
