//! How a saga instance ended, and what can go wrong running one.

use super::SagaStatus;

/// What went wrong running a saga (a failing step is not an error: it is compensated and
/// reported as [`SagaOutcome::Compensated`]).
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// The store could not be read or written.
    #[error("saga store: {0}")]
    Store(String),
    /// [`Saga::start`](super::Saga::start) with an id that was started before.
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
    /// The definition is not valid: no steps, or two steps of one name.
    #[error("saga {saga:?} is not a valid definition: {reason}")]
    InvalidDefinition {
        /// The saga.
        saga: String,
        /// What is wrong.
        reason: String,
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
