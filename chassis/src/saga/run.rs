//! Running saga instances: the state machine that drives each to its end, persisting every
//! transition.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::step::Compensation;
use super::{
    FINISHED_TOTAL, STEP_DURATION, SagaBuilder, SagaError, SagaOutcome, SagaRecord, SagaStatus, SagaStore, Step,
    StepContext,
};

/// A saga definition bound to a store, made by [`Saga::builder`]: run instances with
/// [`Saga::start`], pick up the ones a dead runner left with [`Saga::resume_stalled`]. Cheap to
/// clone.
///
/// `S` is the data the steps pass along; it is stored as JSON after every step.
pub struct Saga<S> {
    pub(super) inner: Arc<Definition<S>>,
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

pub(super) struct Definition<S> {
    pub(super) name: Arc<str>,
    pub(super) steps: Vec<Step<S>>,
    pub(super) store: Arc<dyn SagaStore>,
    pub(super) compensation_attempts: u32,
    pub(super) compensation_retry_delay: Duration,
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
    /// Starts defining a saga named `name` that persists to `store`.
    pub fn builder(name: &str, store: Arc<dyn SagaStore>) -> SagaBuilder<S> {
        SagaBuilder::new(name, store)
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
    /// let saga = Saga::builder("checkout", Arc::new(MemorySagaStore::default()))
    ///     .step(Step::new("reserve", |_cx, n: u32| async move { Ok::<_, String>(n) }))
    ///     .build()?;
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
        let span = tracing::info_span!(
            "saga step",
            otel.name = %format!("{} {} {}", self.inner.name, phase, step.name),
            saga.step = %step.name,
            saga.phase = phase,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let started = tokio::time::Instant::now();
        let result = match tokio::time::timeout(step.timeout, run).instrument(span.clone()).await {
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
        if let Err(failure) = &result {
            span.record("otel.status_code", "error");
            span.record("otel.status_description", failure.error.as_str());
            span.record("error.type", if failure.timed_out { "timeout" } else { "step_failed" });
        }
        metrics::histogram!(STEP_DURATION, "saga" => self.inner.name.to_string(), "step" => step.name.to_string(), "phase" => phase, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }
}
