//! What a breaker is in, what a call's outcome was, and a breaker's state as reported.

use std::sync::Arc;
use std::time::Duration;

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Calls pass and are recorded.
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A fixed number of probe calls pass.
    HalfOpen,
    /// Opened by hand; stays open until [`Breaker::reset`](super::Breaker::reset).
    ForcedOpen,
    /// Turned off by hand: every call passes.
    Disabled,
}

impl State {
    pub(super) const ALL: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];

    /// The label used in metrics and logs: `closed`, `open`, `half_open`, `forced_open`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }

    /// Open, half-open or forced open: calls are (mostly) not getting through.
    pub fn is_open(self) -> bool {
        matches!(self, State::Open | State::HalfOpen | State::ForcedOpen)
    }
}

/// The breaker rejected the call without making it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {breaker:?} is {}; not calling it for {}", state.as_str(), crate::config::duration::format(&Duration::from_millis(retry_after.as_millis() as u64)))]
pub struct CircuitOpen {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// The state that rejected the call.
    pub state: State,
    /// How long until the breaker lets a call through again (at least one second when unknown).
    pub retry_after: Duration,
}

/// How a call ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded in time.
    Success,
    /// Failed (per the classifier).
    Failure,
    /// Succeeded, but took longer than `slow_call_duration`.
    SlowSuccess,
    /// Failed and was slow.
    SlowFailure,
}

impl Outcome {
    /// The outcome of a call that succeeded or not, and was slow or not.
    pub fn of(success: bool, slow: bool) -> Self {
        match (success, slow) {
            (true, false) => Outcome::Success,
            (true, true) => Outcome::SlowSuccess,
            (false, false) => Outcome::Failure,
            (false, true) => Outcome::SlowFailure,
        }
    }

    pub(super) fn failed(self) -> bool {
        matches!(self, Outcome::Failure | Outcome::SlowFailure)
    }

    pub(super) fn slow(self) -> bool {
        matches!(self, Outcome::SlowSuccess | Outcome::SlowFailure)
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::SlowSuccess | Outcome::SlowFailure => "slow",
        }
    }
}

/// A snapshot of a breaker, for health reports and admin endpoints.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct Snapshot {
    /// The breaker's name.
    pub name: String,
    /// Its state.
    #[serde(serialize_with = "serialize_state")]
    pub state: State,
    /// Calls in the window.
    pub calls: usize,
    /// Failure rate over the window (0.0 when empty).
    pub failure_rate: f64,
    /// Slow-call rate over the window.
    pub slow_call_rate: f64,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

fn serialize_state<S: serde::Serializer>(state: &State, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(state.as_str())
}
