//! Defining a saga: its steps and its compensation policy, checked when it is built.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::run::Definition;
use super::{Saga, SagaError, SagaStore, Step};

/// The definition of a saga under construction; [`build`](SagaBuilder::build) checks it and
/// returns the runnable [`Saga`].
///
/// Compensation defaults: 5 attempts, 200 ms before the first retry (doubling, at most 30 s
/// between attempts).
///
/// ```
/// use std::sync::Arc;
/// use chassis::saga::{MemorySagaStore, Saga, Step};
///
/// let same_name = || Step::new("reserve", |_cx, n: u32| async move { Ok::<_, String>(n) });
/// let error = Saga::builder("checkout", Arc::new(MemorySagaStore::default()))
///     .step(same_name())
///     .step(same_name())
///     .build()
///     .unwrap_err();
/// assert!(error.to_string().contains("two steps named \"reserve\""));
/// ```
pub struct SagaBuilder<S> {
    definition: Definition<S>,
}

impl<S> std::fmt::Debug for SagaBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaBuilder")
            .field("name", &self.definition.name)
            .field("steps", &self.definition.steps)
            .finish()
    }
}

impl<S> SagaBuilder<S>
where
    S: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    pub(super) fn new(name: &str, store: Arc<dyn SagaStore>) -> Self {
        Self {
            definition: Definition {
                name: name.into(),
                steps: Vec::new(),
                store,
                compensation_attempts: 5,
                compensation_retry_delay: Duration::from_millis(200),
            },
        }
    }

    /// Appends a step. Step names must be unique within the saga: the name identifies the step
    /// in the store and in idempotency keys.
    pub fn step(mut self, step: Step<S>) -> Self {
        self.definition.steps.push(step);
        self
    }

    /// How many times each compensation is tried before the saga is marked `failed`. Default 5.
    pub fn compensation_attempts(mut self, attempts: u32) -> Self {
        self.definition.compensation_attempts = attempts.max(1);
        self
    }

    /// The wait before a compensation's first retry; doubles, at most 30 s. Default 200 ms.
    pub fn compensation_retry_delay(mut self, delay: Duration) -> Self {
        self.definition.compensation_retry_delay = delay;
        self
    }

    /// The runnable saga, or [`SagaError::InvalidDefinition`] when it has no steps or two steps
    /// share a name.
    pub fn build(self) -> Result<Saga<S>, SagaError> {
        let definition = self.definition;
        let invalid = |reason: String| SagaError::InvalidDefinition {
            saga: definition.name.to_string(),
            reason,
        };
        if definition.steps.is_empty() {
            return Err(invalid("it has no steps".into()));
        }
        for (i, step) in definition.steps.iter().enumerate() {
            if definition.steps[..i].iter().any(|s| s.name == step.name) {
                return Err(invalid(format!(
                    "it has two steps named {:?}; step names must be unique",
                    &*step.name
                )));
            }
        }
        Ok(Saga {
            inner: Arc::new(definition),
        })
    }
}
