//! Health checks and the liveness, readiness and startup probes.
//!
//! A [`HealthRegistry`] holds named async checks. Each check says which probes it belongs to
//! (readiness only, by default: a dead database must not make Kubernetes restart every pod, so
//! liveness should depend on nothing outside the process). Checks run concurrently, each under its
//! own timeout, and results are cached for `health.cache_ttl` so a storm of probes does not
//! hammer the dependencies.
//!
//! Responses follow draft-inadarei-api-health-check: `application/health+json`, `status`
//! `pass` / `warn` / `fail`, per-check entries keyed `"component:measurement"`, HTTP 200 for pass
//! or warn and 503 for fail.
//!
//! Readiness also reflects the service's lifecycle: it fails until start-up has completed and
//! again as soon as shutdown begins, so load balancers stop sending traffic before the listener
//! closes.
//!
//! ```
//! use chassis::health::{Check, CheckResult, HealthRegistry, Probe};
//!
//! # async fn demo() {
//! let registry = HealthRegistry::new(Default::default());
//! registry.register(
//!     Check::new("queue:depth", || async {
//!         let depth = 12; // ask the queue
//!         if depth > 1000 {
//!             CheckResult::warn(format!("{depth} messages waiting"))
//!         } else {
//!             CheckResult::pass()
//!         }
//!         .with_observed_value(depth, "messages")
//!     })
//!     .component_type("component"),
//! );
//! registry.mark_ready();
//! let report = registry.report(Probe::Readiness).await;
//! assert!(report.status().is_healthy());
//! # }
//! ```

mod check;
pub mod checks;
mod config;
mod endpoint;
mod registry;
mod report;

pub use check::{Check, CheckResult};
pub use config::HealthConfig;
pub use endpoint::{HEALTH_JSON, router};
pub use registry::HealthRegistry;
pub use report::{CheckEntry, HealthReport, Lifecycle, Probe, Status};
