//! A saga's steps and what each knows about its run.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

/// What a step or compensation knows about the run it belongs to.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub(super) saga: Arc<str>,
    pub(super) id: Arc<str>,
    pub(super) step: Arc<str>,
    pub(super) attempt: u32,
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

pub(super) type Action<S> = Arc<dyn Fn(StepContext, S) -> BoxFuture<'static, Result<S, String>> + Send + Sync>;
pub(super) type Compensation<S> = Arc<dyn Fn(StepContext, S) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// One step: an action, optionally its compensation, a timeout per attempt and a number of
/// attempts.
///
/// Defaults: timeout 30 s, 1 attempt, 100 ms before the first retry (doubling).
pub struct Step<S> {
    pub(super) name: Arc<str>,
    pub(super) action: Action<S>,
    pub(super) compensation: Option<Compensation<S>>,
    pub(super) timeout: Duration,
    pub(super) attempts: u32,
    pub(super) retry_delay: Duration,
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
    /// ([`SagaBuilder::compensation_attempts`](super::SagaBuilder::compensation_attempts)).
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
