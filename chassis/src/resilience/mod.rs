//! Resilience layers: each a tower [`Layer`](tower::Layer) usable on its own, inbound or
//! outbound.
//!
//! The layers fail with typed errors (boxed as [`BoxError`], like tower's own layers). At the
//! HTTP edge, [`ProblemLayer`](crate::http::ProblemLayer) turns them into problem+json
//! responses with the right status and `Retry-After`.

pub mod bulkhead;
pub mod circuit_breaker;
pub mod rate_limit;
pub mod retry;
pub mod timeout;

/// The error type of the resilience layers: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
