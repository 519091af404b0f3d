//! Resilience layers: each a tower [`Layer`](tower::Layer) usable on its own, inbound or
//! outbound.
//!
//! | layer | service | fails with |
//! |---|---|---|
//! | [`TimeoutLayer`] | [`Timeout`] | [`Elapsed`] |
//! | [`BulkheadLayer`] | [`Bulkhead`] | [`BulkheadFull`] |
//! | [`CircuitBreakerLayer`] | [`CircuitBreaker`] | [`CircuitOpen`] |
//! | [`RetryLayer`] | [`Retry`] | the last attempt's error |
//! | [`RateLimitLayer`] | [`RateLimit`] | answers `429` itself |
//!
//! The layers fail with typed errors, boxed as [`BoxError`](crate::BoxError) like tower's own
//! layers. At the HTTP edge, [`ProblemResponseLayer`](crate::http::ProblemResponseLayer) turns
//! them into problem+json responses with the right status and `Retry-After`. Each module holds
//! its layer's response future (`timeout::ResponseFuture`, ...) and the less common types.
//!
//! Constructors that take a settings struct validate it and return every problem in a
//! [`ConfigError`](crate::config::ConfigError); constructors that take plain values cannot
//! fail.

pub mod bulkhead;
pub mod circuit_breaker;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

pub use bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull, BulkheadLayer};
pub use circuit_breaker::{
    Breaker, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerRegistry, CircuitOpen,
};
pub use rate_limit::{RateLimit, RateLimitConfig, RateLimitKey, RateLimitLayer};
pub use retry::{ResendCount, Retry, RetryConfig, RetryLayer};
pub use timeout::{Elapsed, Timeout, TimeoutLayer};

/// HELP and units for the metrics of this module.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        bulkhead::REJECTED_TOTAL,
        "Calls refused by a full bulkhead, by bulkhead."
    );
    metrics::describe_gauge!(
        circuit_breaker::STATE,
        "Circuit breaker state, by breaker and state: 1 for the current one, 0 for the others."
    );
    metrics::describe_counter!(
        circuit_breaker::CALLS_TOTAL,
        "Calls through a circuit breaker, by breaker and outcome."
    );
    metrics::describe_counter!(
        circuit_breaker::TRANSITIONS_TOTAL,
        "Circuit breaker state changes, by breaker, from and to."
    );
    metrics::describe_counter!(retry::ATTEMPTS_TOTAL, "Retry attempts, by client and outcome.");
    metrics::describe_counter!(
        rate_limit::REJECTED_TOTAL,
        "Requests refused by a rate limiter, by limiter."
    );
}
