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
pub use retry::{Retry, RetryConfig, RetryLayer};
pub use timeout::{Elapsed, Timeout, TimeoutLayer};
