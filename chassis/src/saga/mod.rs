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
//! let saga = Saga::new("checkout", Arc::new(MemorySagaStore::default()))
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
//!     }));
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

#[cfg(feature = "postgres")]
mod postgres;
mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::http::BoxFuture;

#[cfg(feature = "postgres")]
pub use postgres::{PostgresSagaStore, SAGA_MIGRATION};
pub use store::{MemorySagaStore, SagaRecord, SagaStatus, SagaStore};

/// Histogram of step and compensation durations.
pub const STEP_DURATION: &str = "chassis_saga_step_duration_seconds";
/// Counter of sagas that reached a final state.
pub const FINISHED_TOTAL: &str = "chassis_saga_finished_total";

/// What went wrong running a saga (a failing step is not an error: it is compensated and
/// reported as [`SagaOutcome::Compensated`]).
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The store could not be read or written.
    #[error("saga store: {0}")]
    Store(String),
    /// [`Saga::start`] with an id that was started before.
    #[error("saga {saga:?} with id {id:?} already exists (status {status}); look it up with Saga::status", status = .status.as_str())]
    AlreadyStarted {
        /// The saga.
        saga: String,
        /// The instance id.
        id: String,
        /// Its status now.
        status: SagaStatus,
    },
    /// Another runner wrote the instance meanwhile (it resumed it); this runner stopped.
    #[error("saga {saga:?} with id {id:?} was taken over by another runner")]
    TakenOver {
        /// The saga.
        saga: String,
        /// The instance id.
        id: String,
    },
    /// The stored instance does not fit this saga's definition: its data does not decode, or it
    /// points past the last step.
    #[error("saga {saga:?} with id {id:?} does not fit this definition: {reason}")]
    Incompatible {
        /// The saga.
        saga: String,
        /// The instance id.
        id: String,
        /// What does not fit.
        reason: String,
    },
}

/// How a saga instance ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaOutcome<S> {
    /// Every step succeeded; the final data.
    Completed(S),
    /// `failed_step` failed with `error`, and every completed step was compensated.
    Compensated {
        /// The data as of the last completed step.
        data: S,
        /// The step that failed.
        failed_step: String,
        /// Why.
        error: String,
    },
    /// A compensation kept failing; the instance stays `failed` in the store for an operator.
    Failed {
        /// The data as of the last completed step.
        data: S,
        /// The step whose failure started compensation.
        failed_step: String,
        /// Why the step failed and why its compensation gave up.
        error: String,
    },
}

/// What a step or compensation knows about the run it belongs to.
#[derive(Debug, Clone)]
pub struct StepContext {
    saga: Arc<str>,
    id: Arc<str>,
    step: Arc<str>,
    attempt: u32,
}

impl StepContext {
    /// The saga's name.
    pub fn saga(&self) -> &str {
        &self.saga
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// 1 for the first attempt; counts retries within this run.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// `{saga}:{id}:{step}`, the same on every retry and after a resume: send it as the
    /// `Idempotency-Key` of the call the step makes, and a re-run is replayed, not repeated.
    /// Compensations get `{saga}:{id}:{step}:compensate`.
    pub fn idempotency_key(&self) -> String {
        format!("{}:{}:{}", self.saga, self.id, self.step)
    }
}

type Action<S> = Arc<dyn Fn(StepContext, S) -> BoxFuture<'static, Result<S, String>> + Send + Sync>;
type Compensation<S> = Arc<dyn Fn(StepContext, S) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// One step: an action, optionally its compensation, a timeout per attempt and a number of
/// attempts.
///
/// Defaults: timeout 30 s, 1 attempt, 100 ms before the first retry (doubling).
pub struct Step<S> {
    name: Arc<str>,
    action: Action<S>,
    compensation: Option<Compensation<S>>,
    timeout: Duration,
    attempts: u32,
    retry_delay: Duration,
}

impl<S> std::fmt::Debug for Step<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensated", &self.compensation.is_some())
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish()
    }
}

impl<S: Send + 'static> Step<S> {
    /// A step named `name` (unique within its saga) running `action`, which gets the saga's
    /// data and returns it, changed as needed, or an error.
    pub fn new<F, Fut, E>(name: &str, action: F) -> Self
    where
        F: Fn(StepContext, S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let action = Arc::new(move |cx, data| {
            let run = action(cx, data);
            Box::pin(async move { run.await.map_err(|e| e.to_string()) }) as BoxFuture<'static, _>
        });
        Self {
            name: name.into(),
            action,
            compensation: None,
            timeout: Duration::from_secs(30),
            attempts: 1,
            retry_delay: Duration::from_millis(100),
        }
    }

    /// What undoes the step. It runs when a later step fails, and also when this step itself
    /// timed out (its effect is unknown then), so it must tolerate "nothing to undo".
    /// Compensations are retried with the saga's compensation policy
    /// ([`Saga::compensation_attempts`]).
    pub fn compensate<F, Fut, E>(mut self, compensation: F) -> Self
    where
        F: Fn(StepContext, S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.compensation = Some(Arc::new(move |cx, data| {
            let run = compensation(cx, data);
            Box::pin(async move { run.await.map_err(|e| e.to_string()) }) as BoxFuture<'static, _>
        }));
        self
    }

    /// The limit of one attempt of the action (and of its compensation). Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times the action is tried before the step fails. Default 1.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The wait before the first retry; it doubles for each further one. Default 100 ms.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }
}

/// A saga definition bound to a store: run instances with [`Saga::start`], pick up the ones a
/// dead runner left with [`Saga::resume_stalled`]. Cheap to clone.
///
/// `S` is the data the steps pass along; it is stored as JSON after every step.
pub struct Saga<S> {
    inner: Arc<Definition<S>>,
}

impl<S> Clone for Saga<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Saga<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.inner.name)
            .field("steps", &self.inner.steps)
            .finish()
    }
}

struct Definition<S> {
    name: Arc<str>,
    steps: Vec<Step<S>>,
    store: Arc<dyn SagaStore>,
    compensation_attempts: u32,
    compensation_retry_delay: Duration,
}

/// An instance persisted by [`Saga::create`], ready to [`run`](CreatedSaga::run).
#[must_use = "the saga does not run until run() is awaited"]
pub struct CreatedSaga<S> {
    saga: Saga<S>,
    record: SagaRecord,
    data: S,
}

impl<S> std::fmt::Debug for CreatedSaga<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedSaga")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl<S> CreatedSaga<S>
where
    S: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Runs the instance to its end, like [`Saga::start`].
    pub async fn run(self) -> Result<SagaOutcome<S>, SagaError> {
        self.saga.drive(self.record, self.data).await
    }
}

/// Why a step's action gave up.
struct StepFailure {
    error: String,
    timed_out: bool,
}

impl<S> Saga<S>
where
    S: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// A saga named `name` with no steps yet, persisting to `store`.
    ///
    /// Compensation defaults: 5 attempts, 200 ms before the first retry (doubling, at most
    /// 30 s between attempts).
    pub fn new(name: &str, store: Arc<dyn SagaStore>) -> Self {
        Self {
            inner: Arc::new(Definition {
                name: name.into(),
                steps: Vec::new(),
                store,
                compensation_attempts: 5,
                compensation_retry_delay: Duration::from_millis(200),
            }),
        }
    }

    fn definition(&mut self) -> &mut Definition<S> {
        Arc::get_mut(&mut self.inner).expect("a saga is defined before it is cloned")
    }

    /// Appends a step.
    ///
    /// # Panics
    ///
    /// If a step of that name exists already (the name identifies the step in the store and
    /// in idempotency keys), or if the saga was cloned before being fully defined.
    pub fn step(mut self, step: Step<S>) -> Self {
        let definition = self.definition();
        assert!(
            definition.steps.iter().all(|s| s.name != step.name),
            "saga {:?} has two steps named {:?}; step names must be unique",
            definition.name,
            step.name
        );
        definition.steps.push(step);
        self
    }

    /// How many times each compensation is tried before the saga is marked `failed`. Default 5.
    pub fn compensation_attempts(mut self, attempts: u32) -> Self {
        self.definition().compensation_attempts = attempts.max(1);
        self
    }

    /// The wait before a compensation's first retry; doubles, at most 30 s. Default 200 ms.
    pub fn compensation_retry_delay(mut self, delay: Duration) -> Self {
        self.definition().compensation_retry_delay = delay;
        self
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Runs a new instance `id` to its end: every step, or the compensations after a failure.
    /// The instance is persisted before the first step runs, so a crash at any point leaves it
    /// for [`Saga::resume_stalled`]. An id that exists already is refused
    /// ([`SagaError::AlreadyStarted`]).
    pub async fn start(&self, id: &str, data: S) -> Result<SagaOutcome<S>, SagaError> {
        self.create(id, data).await?.run().await
    }

    /// Persists a new instance `id` without running it yet: answer the client once this
    /// returns (the instance can be looked up from then on), then [`CreatedSaga::run`] it, for
    /// example in a background task.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use chassis::saga::{MemorySagaStore, Saga, Step};
    /// # async fn demo() -> Result<(), chassis::saga::SagaError> {
    /// let saga = Saga::new("checkout", Arc::new(MemorySagaStore::default()))
    ///     .step(Step::new("reserve", |_cx, n: u32| async move { Ok::<_, String>(n) }));
    /// let created = saga.create("order-1", 3).await?;
    /// assert!(saga.status("order-1").await?.is_some());
    /// tokio::spawn(created.run());
    /// # Ok(()) }
    /// ```
    pub async fn create(&self, id: &str, data: S) -> Result<CreatedSaga<S>, SagaError> {
        let record = SagaRecord {
            saga: self.inner.name.to_string(),
            id: id.to_owned(),
            status: SagaStatus::Running,
            step: 0,
            data: self.encode(id, &data)?,
            failed_step: None,
            error: None,
            version: 1,
        };
        if !self.inner.store.create(&record).await? {
            let status = self
                .inner
                .store
                .load(&self.inner.name, id)
                .await?
                .map_or(SagaStatus::Running, |r| r.status);
            return Err(SagaError::AlreadyStarted {
                saga: record.saga,
                id: record.id,
                status,
            });
        }
        Ok(CreatedSaga {
            saga: self.clone(),
            record,
            data,
        })
    }

    /// The stored state of instance `id`.
    pub async fn status(&self, id: &str) -> Result<Option<SagaRecord>, SagaError> {
        self.inner.store.load(&self.inner.name, id).await
    }

    /// Finds the instances not written for `idle` (their runner died: a crash, a restart, a
    /// lost node) and drives each to its end, concurrently. Returns each id with its outcome;
    /// instances another runner took over meanwhile report [`SagaError::TakenOver`].
    ///
    /// Call it at start-up and then periodically; `idle` must exceed the longest step timeout
    /// times its attempts, or a slow but live runner has its instance taken over (the live
    /// runner then stops at its next write, so nothing runs twice concurrently for long).
    pub async fn resume_stalled(
        &self,
        idle: Duration,
    ) -> Result<Vec<(String, Result<SagaOutcome<S>, SagaError>)>, SagaError> {
        let stalled = self.inner.store.stalled(&self.inner.name, idle).await?;
        let runs = stalled.into_iter().map(|record| async move {
            let id = record.id.clone();
            tracing::info!(saga = %self.inner.name, saga.id = %id, status = record.status.as_str(), step = record.step, "resuming stalled saga");
            let outcome = async {
                let data = self.decode(&record)?;
                // Claim it first: of two resumers, only one wins this write.
                let mut record = record;
                self.save(&mut record).await?;
                self.drive(record, data).await
            }
            .await;
            (id, outcome)
        });
        Ok(futures_util::future::join_all(runs).await)
    }

    fn encode(&self, id: &str, data: &S) -> Result<serde_json::Value, SagaError> {
        serde_json::to_value(data).map_err(|e| SagaError::Incompatible {
            saga: self.inner.name.to_string(),
            id: id.to_owned(),
            reason: format!("the data does not serialize to JSON: {e}"),
        })
    }

    fn decode(&self, record: &SagaRecord) -> Result<S, SagaError> {
        let incompatible = |reason: String| SagaError::Incompatible {
            saga: record.saga.clone(),
            id: record.id.clone(),
            reason,
        };
        if record.step as usize > self.inner.steps.len() {
            return Err(incompatible(format!(
                "it is at step {} of a saga that now has {} steps",
                record.step,
                self.inner.steps.len()
            )));
        }
        serde_json::from_value(record.data.clone())
            .map_err(|e| incompatible(format!("the stored data does not decode: {e}")))
    }

    async fn save(&self, record: &mut SagaRecord) -> Result<(), SagaError> {
        record.version += 1;
        if self.inner.store.update(record).await? {
            Ok(())
        } else {
            Err(SagaError::TakenOver {
                saga: record.saga.clone(),
                id: record.id.clone(),
            })
        }
    }

    fn context(&self, record: &SagaRecord, step: &Step<S>) -> StepContext {
        StepContext {
            saga: self.inner.name.clone(),
            id: record.id.as_str().into(),
            step: step.name.clone(),
            attempt: 1,
        }
    }

    /// The state machine: runs from wherever `record` stands to a final state, persisting each
    /// transition.
    async fn drive(&self, mut record: SagaRecord, mut data: S) -> Result<SagaOutcome<S>, SagaError> {
        let span = tracing::info_span!("saga", otel.name = %format!("saga {}", self.inner.name), saga.name = %self.inner.name, saga.id = %record.id);
        async move {
            let steps = &self.inner.steps;
            loop {
                match record.status {
                    SagaStatus::Running if record.step as usize == steps.len() => {
                        record.status = SagaStatus::Completed;
                        self.save(&mut record).await?;
                        self.finished("completed");
                        return Ok(SagaOutcome::Completed(data));
                    }
                    SagaStatus::Running => {
                        let step = &steps[record.step as usize];
                        match self.act(step, self.context(&record, step), data.clone()).await {
                            Ok(next) => {
                                record.data = self.encode(&record.id, &next)?;
                                data = next;
                                record.step += 1;
                            }
                            Err(failure) => {
                                tracing::warn!(step = %step.name, error = %failure.error, timed_out = failure.timed_out, "saga step failed; compensating");
                                record.status = SagaStatus::Compensating;
                                record.failed_step = Some(step.name.to_string());
                                record.error = Some(failure.error);
                                // A timed-out step may have had its effect: undo it too.
                                if failure.timed_out && step.compensation.is_some() {
                                    record.step += 1;
                                }
                            }
                        }
                        self.save(&mut record).await?;
                    }
                    SagaStatus::Compensating if record.step == 0 => {
                        record.status = SagaStatus::Compensated;
                        self.save(&mut record).await?;
                        self.finished("compensated");
                        return Ok(SagaOutcome::Compensated {
                            data,
                            failed_step: record.failed_step.unwrap_or_default(),
                            error: record.error.unwrap_or_default(),
                        });
                    }
                    SagaStatus::Compensating => {
                        let step = &steps[record.step as usize - 1];
                        if let Some(compensation) = &step.compensation {
                            let cx = self.context(&record, step);
                            if let Err(error) = self.undo(step, compensation, cx, data.clone()).await {
                                tracing::error!(step = %step.name, %error, "saga compensation gave up; the saga needs an operator");
                                record.status = SagaStatus::Failed;
                                let cause = record.error.take().unwrap_or_default();
                                record.error = Some(format!("{cause}; then compensating step {:?} failed: {error}", &*step.name));
                                self.save(&mut record).await?;
                                self.finished("failed");
                                return Ok(SagaOutcome::Failed {
                                    data,
                                    failed_step: record.failed_step.unwrap_or_default(),
                                    error: record.error.unwrap_or_default(),
                                });
                            }
                        }
                        record.step -= 1;
                        self.save(&mut record).await?;
                    }
                    SagaStatus::Completed => return Ok(SagaOutcome::Completed(data)),
                    SagaStatus::Compensated | SagaStatus::Failed => {
                        let (failed_step, error) = (record.failed_step.unwrap_or_default(), record.error.unwrap_or_default());
                        return Ok(match record.status {
                            SagaStatus::Compensated => SagaOutcome::Compensated { data, failed_step, error },
                            _ => SagaOutcome::Failed { data, failed_step, error },
                        });
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    fn finished(&self, outcome: &'static str) {
        metrics::counter!(FINISHED_TOTAL, "saga" => self.inner.name.to_string(), "outcome" => outcome).increment(1);
    }

    async fn act(&self, step: &Step<S>, mut cx: StepContext, data: S) -> Result<S, StepFailure> {
        let mut delay = step.retry_delay;
        loop {
            let result = self
                .timed(step, "action", (step.action)(cx.clone(), data.clone()))
                .await;
            match result {
                Ok(next) => return Ok(next),
                Err(failure) if cx.attempt >= step.attempts => return Err(failure),
                Err(failure) => {
                    tracing::warn!(step = %step.name, attempt = cx.attempt, error = %failure.error, "saga step failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    cx.attempt += 1;
                }
            }
        }
    }

    async fn undo(
        &self,
        step: &Step<S>,
        compensation: &Compensation<S>,
        mut cx: StepContext,
        data: S,
    ) -> Result<(), String> {
        cx.step = format!("{}:compensate", step.name).into();
        let mut delay = self.inner.compensation_retry_delay;
        loop {
            match self
                .timed(step, "compensation", compensation(cx.clone(), data.clone()))
                .await
            {
                Ok(()) => return Ok(()),
                Err(failure) if cx.attempt >= self.inner.compensation_attempts => return Err(failure.error),
                Err(failure) => {
                    tracing::warn!(step = %step.name, attempt = cx.attempt, error = %failure.error, "saga compensation failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2).min(Duration::from_secs(30));
                    cx.attempt += 1;
                }
            }
        }
    }

    /// One attempt under the step's timeout, measured.
    async fn timed<T>(
        &self,
        step: &Step<S>,
        phase: &'static str,
        run: BoxFuture<'static, Result<T, String>>,
    ) -> Result<T, StepFailure> {
        let span = tracing::info_span!("saga step", otel.name = %format!("{} {} {}", self.inner.name, phase, step.name), saga.step = %step.name, saga.phase = phase);
        let started = tokio::time::Instant::now();
        let result = match tokio::time::timeout(step.timeout, run).instrument(span).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StepFailure {
                error,
                timed_out: false,
            }),
            Err(_) => Err(StepFailure {
                error: format!("timed out after {}", crate::config::duration::format(&step.timeout)),
                timed_out: true,
            }),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StepFailure { timed_out: true, .. }) => "timeout",
            Err(_) => "error",
        };
        metrics::histogram!(STEP_DURATION, "saga" => self.inner.name.to_string(), "step" => step.name.to_string(), "phase" => phase, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }
}
