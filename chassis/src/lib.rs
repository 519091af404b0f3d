//! A microservice chassis: tower layers for tracing, metrics, health, resilience, idempotency
//! and messaging, plus a runtime with graceful shutdown.
//!
//! Every concern is a module usable on its own ([`telemetry`], [`metrics`], [`health`],
//! [`resilience`], ...). The [`runtime`] composes them, and `#[chassis::main]` wires the
//! runtime into a service's `main`:
//!
//! ```no_run
//! #[derive(serde::Deserialize)]
//! struct Settings {
//!     greeting: String,
//! }
//!
//! #[chassis::main]
//! async fn main(ctx: chassis::Context<Settings>) -> chassis::Result<axum::Router> {
//!     let greeting = ctx.settings().greeting.clone();
//!     Ok(axum::Router::new().route("/", axum::routing::get(move || async move { greeting })))
//! }
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod client;
pub mod config;
mod error;
mod future;
pub mod health;
pub mod http;
pub mod idempotency;
pub mod identity;
pub mod messaging;
pub mod metrics;
pub mod outbox;
mod problem;
pub mod resilience;
pub mod runtime;
pub mod saga;
pub mod storage;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use error::{BoxError, Error, Result};
pub use runtime::{Context, Options, RunningService, run, start};

#[cfg(feature = "macros")]
pub use chassis_macros::main;

/// The guide's examples compile as doctests, so the guide cannot drift from the API.
#[cfg(doctest)]
mod guide {
    #[doc = include_str!("../../docs/src/config.md")]
    struct Config;
    #[doc = include_str!("../../docs/src/telemetry.md")]
    struct Telemetry;
    #[doc = include_str!("../../docs/src/metrics.md")]
    struct Metrics;
    #[doc = include_str!("../../docs/src/health.md")]
    struct Health;
    #[doc = include_str!("../../docs/src/resilience.md")]
    struct Resilience;
    #[doc = include_str!("../../docs/src/client.md")]
    struct Client;
    #[doc = include_str!("../../docs/src/idempotency.md")]
    struct Idempotency;
    #[doc = include_str!("../../docs/src/errors.md")]
    struct Errors;
    #[doc = include_str!("../../docs/src/saga.md")]
    struct Saga;
    #[doc = include_str!("../../docs/src/security.md")]
    struct Security;
}
