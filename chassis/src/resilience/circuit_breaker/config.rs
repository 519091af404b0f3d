//! The breaker's settings.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{Problems, Validate};

crate::config::choices! {
    /// How the window of recent calls is kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum WindowKind {
        /// The last `window_size` calls.
        Count = "count",
        /// The calls of the last `window_duration`, in one-second buckets.
        Time = "time",
    }
}

crate::config::choices! {
    /// How half-open probes decide between closing and opening again.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum HalfOpenEvaluation {
        /// The first failed or slow probe opens the breaker again; it closes when every probe
        /// succeeded in time.
        Strict = "strict",
        /// Once every probe has reported, the breaker opens again when the probes' failure rate or
        /// slow-call rate reaches its threshold, and closes otherwise (Resilience4j's way).
        Rate = "rate",
    }
}

/// Circuit breaker settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// `window`: `"count"` (default) or `"time"`.
    pub window: WindowKind,
    /// `window_size`: calls kept by a count window. Default `100` (Resilience4j's).
    pub window_size: usize,
    /// `window_duration`: span of a time window. Default `"60s"`.
    #[serde(with = "crate::config::duration")]
    pub window_duration: Duration,
    /// `minimum_calls`: calls the window must hold before rates are judged. Default `20`.
    pub minimum_calls: usize,
    /// `failure_rate_threshold`: open at this share of failures, 0.0 to 1.0. Default `0.5`.
    pub failure_rate_threshold: f64,
    /// `slow_call_rate_threshold`: open at this share of slow calls. Default `1.0`.
    pub slow_call_rate_threshold: f64,
    /// `slow_call_duration`: a call taking longer than this is slow. Default `"60s"`.
    #[serde(with = "crate::config::duration")]
    pub slow_call_duration: Duration,
    /// `consecutive_failures`: open after this many failures in a row; `0` (default) turns the
    /// rule off.
    pub consecutive_failures: u32,
    /// `open_duration`: how long the breaker stays open before probing. Default `"30s"`.
    #[serde(with = "crate::config::duration")]
    pub open_duration: Duration,
    /// `open_duration_multiplier`: growth of the open duration for each trip in a row (a probe
    /// failing re-opens it for longer). Default `1.0`: no growth.
    pub open_duration_multiplier: f64,
    /// `max_open_duration`: cap on the grown open duration. Default `"5m"`.
    #[serde(with = "crate::config::duration")]
    pub max_open_duration: Duration,
    /// `half_open_calls`: probe calls let through in half-open. Default `3`.
    pub half_open_calls: u32,
    /// `half_open_evaluation`: `"strict"` (default: the first failed or slow probe re-opens)
    /// or `"rate"` (the probes' rates against the thresholds, once all have reported).
    pub half_open_evaluation: HalfOpenEvaluation,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowKind::Count,
            window_size: 100,
            window_duration: Duration::from_secs(60),
            minimum_calls: 20,
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 1.0,
            slow_call_duration: Duration::from_secs(60),
            consecutive_failures: 0,
            open_duration: Duration::from_secs(30),
            open_duration_multiplier: 1.0,
            max_open_duration: Duration::from_secs(300),
            half_open_calls: 3,
            half_open_evaluation: HalfOpenEvaluation::Strict,
        }
    }
}

impl Validate for CircuitBreakerConfig {
    fn validate(&self, problems: &mut Problems) {
        let ratio = |v: f64| (0.0..=1.0).contains(&v) && v > 0.0;
        problems.check(self.window_size > 0, "window_size", "must be at least 1");
        problems.check(
            self.window_duration >= Duration::from_secs(1),
            "window_duration",
            "must be at least 1s",
        );
        problems.check(
            ratio(self.failure_rate_threshold),
            "failure_rate_threshold",
            "must be greater than 0.0 and at most 1.0",
        );
        problems.check(
            ratio(self.slow_call_rate_threshold),
            "slow_call_rate_threshold",
            "must be greater than 0.0 and at most 1.0",
        );
        problems.check(self.half_open_calls > 0, "half_open_calls", "must be at least 1");
        problems.check(
            !self.open_duration.is_zero(),
            "open_duration",
            "must be greater than zero",
        );
        problems.check(
            self.open_duration_multiplier >= 1.0,
            "open_duration_multiplier",
            "must be at least 1.0",
        );
        problems.check(
            self.max_open_duration >= self.open_duration,
            "max_open_duration",
            "must be at least open_duration",
        );
        if self.window == WindowKind::Count {
            problems.check(
                self.minimum_calls <= self.window_size,
                "minimum_calls",
                format!(
                    "must be at most window_size ({}), or the rates are never judged",
                    self.window_size
                ),
            );
        }
    }
}
