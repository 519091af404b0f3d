//! Circuit breaker: stop calling a dependency that keeps failing, and find out cheaply when it
//! has recovered. The shared state is a [`Breaker`]; [`CircuitBreakerLayer`] and its service
//! [`CircuitBreaker`] put one in front of a service.
//!
//! - **Closed**: calls pass; outcomes go into a sliding window (the last `window_size` calls, or
//!   the last `window_duration`). Once the window holds `minimum_calls`, the breaker opens when
//!   the failure rate reaches `failure_rate_threshold` or the slow-call rate (calls slower than
//!   `slow_call_duration`) reaches `slow_call_rate_threshold`. With `consecutive_failures > 0`
//!   it also opens after that many failures in a row, whatever the window says.
//! - **Open**: calls fail at once with [`CircuitOpen`] (at the HTTP edge: 503 problem+json with
//!   `Retry-After` set to the time left). After `open_duration` (multiplied by
//!   `open_duration_multiplier` for each trip in a row, up to `max_open_duration`) the next
//!   call moves it to half-open.
//! - **Half-open**: exactly `half_open_calls` probe calls are let through; the others are
//!   rejected. With `half_open_evaluation = "strict"` (the default) a failed or slow probe
//!   re-opens the breaker at once and it closes when every probe succeeded; with `"rate"` the
//!   probes' failure and slow-call rates are judged against the thresholds once all have
//!   reported. Closing starts an empty window.
//! - **Forced open** (isolate a dependency by hand) and **disabled** (always pass, still
//!   record metrics) are set with [`Breaker::force_open`] / [`Breaker::disable`] and left with
//!   [`Breaker::reset`].
//!
//! A call is slow when it takes longer than `slow_call_duration`. What counts as a failure is
//! decided by a [`Classify`]: by default ([`ServerErrors`]) errors (timeouts included) and 5xx
//! responses are failures and everything else a success; [`IgnoreClientErrors`] ignores 4xx
//! answers, so they count neither way ([`Verdict::Ignore`]).
//!
//! Breakers are shared by name through a [`CircuitBreakerRegistry`], so a breaker applied to a
//! router, or created for the same downstream twice, is one breaker.
//!
//! Metrics: `chassis_circuit_breaker_state{breaker,state}` (1 for the current state, 0 for the
//! others), `chassis_circuit_breaker_calls_total{breaker,outcome}` with outcome `success`,
//! `failure`, `slow` or `rejected`, and
//! `chassis_circuit_breaker_transitions_total{breaker,from,to}`. Every transition is logged.
//!
//! ```
//! use chassis::resilience::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerRegistry};
//!
//! let registry = CircuitBreakerRegistry::new();
//! let mut config = CircuitBreakerConfig::default();
//! config.consecutive_failures = 5;
//! let breaker = registry.get_or_create("payments", &config).unwrap();
//! let layer = CircuitBreakerLayer::new(breaker);
//! # let _ = layer;
//! ```

mod breaker;
mod classify;
mod config;
mod layer;
mod registry;
mod state;
mod window;

pub use breaker::{Breaker, Permit};
pub use classify::{Classify, Errors, IgnoreClientErrors, ServerErrors, Verdict};
pub use config::{CircuitBreakerConfig, HalfOpenEvaluation, WindowKind};
pub use layer::{CircuitBreaker, CircuitBreakerLayer, ResponseFuture};
pub use registry::CircuitBreakerRegistry;
pub use state::{CircuitOpen, Outcome, Snapshot, State};

/// Name of the state gauge.
pub const STATE: &str = "chassis_circuit_breaker_state";
/// Name of the call counter.
pub const CALLS_TOTAL: &str = "chassis_circuit_breaker_calls_total";
/// Name of the transition counter.
pub const TRANSITIONS_TOTAL: &str = "chassis_circuit_breaker_transitions_total";
