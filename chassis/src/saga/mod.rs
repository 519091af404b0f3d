//! Orchestrated sagas: steps run in order, each with a timeout and retries; when one fails, the
//! completed steps are compensated in reverse order. The state of every instance is persisted
//! after each transition, so an orchestrator that restarts resumes where it stopped.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use chassis::saga::{MemorySagaStore, Saga, SagaOutcome, Step};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Checkout { amount: u64, reservation: Option<String> }
//!
//! # async fn demo() -> Result<(), chassis::saga::SagaError> {
//! let saga = Saga::builder("checkout", Arc::new(MemorySagaStore::default()))
//!     .step(
//!         Step::new("reserve", |_cx, mut data: Checkout| async move {
//!             data.reservation = Some("r-1".into());
//!             Ok::<_, String>(data)
//!         })
//!         .compensate(|_cx, _data: Checkout| async { Ok::<_, String>(()) })
//!         .timeout(Duration::from_secs(2)),
//!     )
//!     .step(Step::new("charge", |_cx, data: Checkout| async move {
//!         if data.amount > 100 { Err("card declined".to_owned()) } else { Ok(data) }
//!     }))
//!     .build()?;
//!
//! match saga.start("order-1", Checkout { amount: 500, reservation: None }).await? {
//!     SagaOutcome::Completed(_) => println!("done"),
//!     SagaOutcome::Compensated { failed_step, error, .. } => println!("{failed_step} failed: {error}; undone"),
//!     SagaOutcome::Failed { error, .. } => println!("needs an operator: {error}"),
//! }
//! # Ok(()) }
//! ```
//!
//! Steps and compensations run at least once: after a crash, the step that was running runs
//! again on resume. Make them idempotent; [`StepContext::idempotency_key`] is stable across
//! retries and resumes, ready to be sent as an `Idempotency-Key`.
//!
//! Metrics: `chassis_saga_step_duration_seconds{saga,step,phase,outcome}` (phase `action` or
//! `compensation`, outcome `ok`, `error` or `timeout`) and
//! `chassis_saga_finished_total{saga,outcome}` (`completed`, `compensated`, `failed`).

mod builder;
mod error;
#[cfg(feature = "postgres")]
mod postgres;
mod run;
mod step;
mod store;

pub use builder::SagaBuilder;
pub use error::{SagaError, SagaOutcome};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresSagaStore, SAGA_MIGRATION};
pub use run::{CreatedSaga, Saga};
pub use step::{Step, StepContext};
pub use store::{MemorySagaStore, SagaRecord, SagaStatus, SagaStore};

/// Histogram of step and compensation durations.
pub const STEP_DURATION: &str = "chassis_saga_step_duration_seconds";
/// Counter of sagas that reached a final state.
pub const FINISHED_TOTAL: &str = "chassis_saga_finished_total";

/// HELP and units for the metrics of this module.
pub(crate) fn describe_metrics() {
    metrics::describe_histogram!(
        STEP_DURATION,
        metrics::Unit::Seconds,
        "Duration of saga steps and compensations, by saga, step, phase and outcome."
    );
    metrics::describe_counter!(FINISHED_TOTAL, "Sagas that reached a final state, by saga and outcome.");
}
