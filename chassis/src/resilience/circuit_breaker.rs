//! Circuit breaker: stop calling a dependency that keeps failing, and find out cheaply when it
//! has recovered.
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
//!   rejected. A failed or slow probe re-opens the breaker at once; when every probe succeeds it
//!   closes and the window starts empty.
//! - **Forced open** (isolate a dependency by hand) and **disabled** (always pass, still
//!   record metrics) are set with [`CircuitBreaker::force_open`] / [`CircuitBreaker::disable`]
//!   and left with [`CircuitBreaker::reset`].
//!
//! What counts as a failure is decided by a [`Classify`]: by default errors (timeouts included)
//! and 5xx responses are failures, 4xx are not.
//!
//! Breakers are shared by name through a [`CircuitBreakerRegistry`], so a breaker applied to a
//! router, or created for the same host twice, is one breaker.
//!
//! Metrics: `chassis_circuit_breaker_state{breaker,state}` (1 for the current state, 0 for the
//! others), `chassis_circuit_breaker_calls_total{breaker,outcome}` with outcome `success`,
//! `failure`, `slow` or `rejected`, and
//! `chassis_circuit_breaker_transitions_total{breaker,from,to}`. Every transition is logged.
//!
//! ```
//! use chassis::resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerRegistry};
//!
//! let registry = CircuitBreakerRegistry::new();
//! let mut config = CircuitBreakerConfig::default();
//! config.consecutive_failures = 5;
//! let breaker = registry.get_or_create("payments", &config);
//! let layer = CircuitBreakerLayer::new(breaker);
//! # let _ = layer;
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::BoxError;
use crate::config::Problems;

/// Name of the state gauge.
pub const STATE: &str = "chassis_circuit_breaker_state";
/// Name of the call counter.
pub const CALLS_TOTAL: &str = "chassis_circuit_breaker_calls_total";
/// Name of the transition counter.
pub const TRANSITIONS_TOTAL: &str = "chassis_circuit_breaker_transitions_total";

/// How the window of recent calls is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// The last `window_size` calls.
    Count,
    /// The calls of the last `window_duration`, in one-second buckets.
    Time,
}

/// Circuit breaker settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// `window`: `"count"` (default) or `"time"`.
    pub window: WindowKind,
    /// `window_size`: calls kept by a count window. Default `100` (Resilience4j's).
    pub window_size: usize,
    /// `window_duration`: span of a time window. Default `"60s"`.
    #[serde(with = "crate::config::duration")]
    pub window_duration: Duration,
    /// `minimum_calls`: calls the window must hold before rates are judged. Default `20`.
    pub minimum_calls: usize,
    /// `failure_rate_threshold`: open at this share of failures, 0.0 to 1.0. Default `0.5`.
    pub failure_rate_threshold: f64,
    /// `slow_call_rate_threshold`: open at this share of slow calls. Default `1.0`.
    pub slow_call_rate_threshold: f64,
    /// `slow_call_duration`: a call taking at least this long is slow. Default `"60s"`.
    #[serde(with = "crate::config::duration")]
    pub slow_call_duration: Duration,
    /// `consecutive_failures`: open after this many failures in a row; `0` (default) turns the
    /// rule off.
    pub consecutive_failures: u32,
    /// `open_duration`: how long the breaker stays open before probing. Default `"30s"`.
    #[serde(with = "crate::config::duration")]
    pub open_duration: Duration,
    /// `open_duration_multiplier`: growth of the open duration for each trip in a row (a probe
    /// failing re-opens it for longer). Default `1.0`: no growth.
    pub open_duration_multiplier: f64,
    /// `max_open_duration`: cap on the grown open duration. Default `"5m"`.
    #[serde(with = "crate::config::duration")]
    pub max_open_duration: Duration,
    /// `half_open_calls`: probe calls let through in half-open. Default `3`.
    pub half_open_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            window: WindowKind::Count,
            window_size: 100,
            window_duration: Duration::from_secs(60),
            minimum_calls: 20,
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: 1.0,
            slow_call_duration: Duration::from_secs(60),
            consecutive_failures: 0,
            open_duration: Duration::from_secs(30),
            open_duration_multiplier: 1.0,
            max_open_duration: Duration::from_secs(300),
            half_open_calls: 3,
        }
    }
}

impl CircuitBreakerConfig {
    /// Checks the settings, reporting problems under `prefix` (e.g. `clients.payments.circuit_breaker`).
    pub(crate) fn validate(&self, prefix: &str, problems: &mut Problems) {
        let key = |name: &str| format!("{prefix}.{name}");
        let ratio = |v: f64| (0.0..=1.0).contains(&v);
        problems.check(self.window_size > 0, &key("window_size"), "must be at least 1");
        problems.check(
            self.window_duration >= Duration::from_secs(1),
            &key("window_duration"),
            "must be at least 1s",
        );
        problems.check(
            ratio(self.failure_rate_threshold) && self.failure_rate_threshold > 0.0,
            &key("failure_rate_threshold"),
            "must be greater than 0.0 and at most 1.0",
        );
        problems.check(
            ratio(self.slow_call_rate_threshold) && self.slow_call_rate_threshold > 0.0,
            &key("slow_call_rate_threshold"),
            "must be greater than 0.0 and at most 1.0",
        );
        problems.check(self.half_open_calls > 0, &key("half_open_calls"), "must be at least 1");
        problems.check(
            !self.open_duration.is_zero(),
            &key("open_duration"),
            "must be greater than zero",
        );
        problems.check(
            self.open_duration_multiplier >= 1.0,
            &key("open_duration_multiplier"),
            "must be at least 1.0",
        );
        problems.check(
            self.max_open_duration >= self.open_duration,
            &key("max_open_duration"),
            "must be at least open_duration",
        );
        if self.window == WindowKind::Count {
            problems.check(
                self.minimum_calls <= self.window_size,
                &key("minimum_calls"),
                format!(
                    "must be at most window_size ({}), or the rates are never judged",
                    self.window_size
                ),
            );
        }
    }

    /// The settings, or every problem with them.
    pub fn validated(self) -> Result<Self, crate::config::ConfigError> {
        let mut problems = Problems::default();
        self.validate("circuit_breaker", &mut problems);
        problems.into_result().map(|()| self)
    }
}

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Calls pass and are recorded.
    Closed,
    /// Calls are rejected until the open duration has passed.
    Open,
    /// A fixed number of probe calls pass.
    HalfOpen,
    /// Opened by hand; stays open until [`CircuitBreaker::reset`].
    ForcedOpen,
    /// Turned off by hand: every call passes.
    Disabled,
}

impl State {
    const ALL: [State; 5] = [
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
}

/// The breaker rejected the call without making it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {breaker:?} is {}; not calling it for {}", state.as_str(), crate::config::duration::format(&std::time::Duration::from_millis(retry_after.as_millis() as u64)))]
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
    /// Succeeded, but took at least `slow_call_duration`.
    SlowSuccess,
    /// Failed and was slow.
    SlowFailure,
}

impl Outcome {
    fn failed(self) -> bool {
        matches!(self, Outcome::Failure | Outcome::SlowFailure)
    }

    fn slow(self) -> bool {
        matches!(self, Outcome::SlowSuccess | Outcome::SlowFailure)
    }

    fn label(self) -> &'static str {
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

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    calls: usize,
    failures: usize,
    slow: usize,
}

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        self.calls += 1;
        self.failures += usize::from(outcome.failed());
        self.slow += usize::from(outcome.slow());
    }

    fn remove(&mut self, outcome: Outcome) {
        self.calls -= 1;
        self.failures -= usize::from(outcome.failed());
        self.slow -= usize::from(outcome.slow());
    }

    fn rate(part: usize, calls: usize) -> f64 {
        if calls == 0 { 0.0 } else { part as f64 / calls as f64 }
    }
}

/// The sliding window of recent outcomes, with running totals so judging it is O(1).
#[derive(Debug)]
enum Window {
    Count {
        size: usize,
        outcomes: VecDeque<Outcome>,
        totals: Counts,
    },
    // (second since the breaker was created, counts of that second)
    Time {
        seconds: u64,
        buckets: VecDeque<(u64, Counts)>,
        origin: Instant,
    },
}

impl Window {
    fn new(config: &CircuitBreakerConfig) -> Self {
        match config.window {
            WindowKind::Count => Window::Count {
                size: config.window_size,
                outcomes: VecDeque::with_capacity(config.window_size),
                totals: Counts::default(),
            },
            WindowKind::Time => Window::Time {
                seconds: config.window_duration.as_secs().max(1),
                buckets: VecDeque::new(),
                origin: Instant::now(),
            },
        }
    }

    fn record(&mut self, outcome: Outcome, now: Instant) {
        match self {
            Window::Count { size, outcomes, totals } => {
                if outcomes.len() == *size
                    && let Some(oldest) = outcomes.pop_front()
                {
                    totals.remove(oldest);
                }
                outcomes.push_back(outcome);
                totals.add(outcome);
            }
            Window::Time { buckets, origin, .. } => {
                let second = now.duration_since(*origin).as_secs();
                match buckets.back_mut() {
                    Some((s, counts)) if *s == second => counts.add(outcome),
                    _ => {
                        let mut counts = Counts::default();
                        counts.add(outcome);
                        buckets.push_back((second, counts));
                    }
                }
            }
        }
    }

    fn totals(&mut self, now: Instant) -> Counts {
        match self {
            Window::Count { totals, .. } => *totals,
            Window::Time {
                seconds,
                buckets,
                origin,
            } => {
                let current = now.duration_since(*origin).as_secs();
                while buckets.front().is_some_and(|(s, _)| s + *seconds <= current) {
                    buckets.pop_front();
                }
                buckets.iter().fold(Counts::default(), |mut sum, (_, c)| {
                    sum.calls += c.calls;
                    sum.failures += c.failures;
                    sum.slow += c.slow;
                    sum
                })
            }
        }
    }

    fn clear(&mut self) {
        match self {
            Window::Count { outcomes, totals, .. } => {
                outcomes.clear();
                *totals = Counts::default();
            }
            Window::Time { buckets, .. } => buckets.clear(),
        }
    }
}

#[derive(Debug)]
struct Machine {
    state: State,
    // Bumped on every transition: outcomes of calls admitted under an earlier state are not
    // allowed to move the new one.
    generation: u64,
    window: Window,
    consecutive_failures: u32,
    open_until: Instant,
    trips_in_a_row: u32,
    probes_admitted: u32,
    probes_succeeded: u32,
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    config: CircuitBreakerConfig,
    machine: Mutex<Machine>,
}

/// A named circuit breaker. Cheap to clone; clones share state.
///
/// Use it through [`CircuitBreakerLayer`], or directly around any async call:
///
/// ```
/// # async fn demo() {
/// use chassis::resilience::circuit_breaker::{CircuitBreaker, CircuitBreakerConfig};
///
/// let breaker = CircuitBreaker::new("ledger", CircuitBreakerConfig::default());
/// match breaker.try_acquire() {
///     Ok(permit) => {
///         let ok = true; // make the call
///         permit.record_result(ok);
///     }
///     Err(open) => eprintln!("{open}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl CircuitBreaker {
    /// A stand-alone breaker. Prefer [`CircuitBreakerRegistry::get_or_create`] so breakers of the
    /// same name are shared.
    pub fn new(name: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Self {
        let name = name.into();
        let breaker = Self {
            shared: Arc::new(Shared {
                machine: Mutex::new(Machine {
                    state: State::Closed,
                    generation: 0,
                    window: Window::new(&config),
                    consecutive_failures: 0,
                    open_until: Instant::now(),
                    trips_in_a_row: 0,
                    probes_admitted: 0,
                    probes_succeeded: 0,
                }),
                name,
                config,
            }),
        };
        breaker.publish_state(State::Closed);
        breaker
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The breaker's settings.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.shared.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.shared.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state. An open breaker whose wait is over still reads `Open` until the next
    /// call moves it to half-open.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// State, window and rates, for health and admin endpoints.
    pub fn snapshot(&self) -> Snapshot {
        let mut machine = self.lock();
        let totals = machine.window.totals(Instant::now());
        Snapshot {
            name: self.shared.name.to_string(),
            state: machine.state,
            calls: totals.calls,
            failure_rate: Counts::rate(totals.failures, totals.calls),
            slow_call_rate: Counts::rate(totals.slow, totals.calls),
            consecutive_failures: machine.consecutive_failures,
        }
    }

    /// Asks to make a call. On `Ok`, make it and report how it went on the permit; dropping the
    /// permit unreported (the call was cancelled) leaves the breaker as it was.
    pub fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        let now = Instant::now();
        let mut machine = self.lock();
        let probe = match machine.state {
            State::Closed | State::Disabled => false,
            State::Open if now >= machine.open_until => {
                self.transition(&mut machine, State::HalfOpen, now);
                machine.probes_admitted = 1;
                true
            }
            State::Open => return Err(self.reject(machine.state, machine.open_until - now)),
            State::HalfOpen if machine.probes_admitted < self.shared.config.half_open_calls => {
                machine.probes_admitted += 1;
                true
            }
            // The probes are out; their outcome decides within about one call's time.
            State::HalfOpen => return Err(self.reject(State::HalfOpen, Duration::from_secs(1))),
            State::ForcedOpen => return Err(self.reject(State::ForcedOpen, self.shared.config.open_duration)),
        };
        Ok(Permit {
            breaker: self.clone(),
            generation: machine.generation,
            probe,
            started: now,
            recorded: false,
        })
    }

    fn reject(&self, state: State, retry_after: Duration) -> CircuitOpen {
        metrics::counter!(CALLS_TOTAL, "breaker" => self.shared.name.to_string(), "outcome" => "rejected").increment(1);
        CircuitOpen {
            breaker: self.shared.name.clone(),
            state,
            retry_after: retry_after.max(Duration::from_secs(1)),
        }
    }

    fn record(&self, generation: u64, probe: bool, outcome: Outcome) {
        metrics::counter!(CALLS_TOTAL, "breaker" => self.shared.name.to_string(), "outcome" => outcome.label())
            .increment(1);
        let now = Instant::now();
        let config = &self.shared.config;
        let mut machine = self.lock();
        if machine.generation != generation {
            return;
        }
        match machine.state {
            State::Closed => {
                machine.window.record(outcome, now);
                machine.consecutive_failures = if outcome.failed() {
                    machine.consecutive_failures.saturating_add(1)
                } else {
                    0
                };
                let totals = machine.window.totals(now);
                let by_consecutive =
                    config.consecutive_failures > 0 && machine.consecutive_failures >= config.consecutive_failures;
                let by_rate = totals.calls >= config.minimum_calls.max(1)
                    && (Counts::rate(totals.failures, totals.calls) >= config.failure_rate_threshold
                        || Counts::rate(totals.slow, totals.calls) >= config.slow_call_rate_threshold);
                if by_consecutive || by_rate {
                    self.open(&mut machine, now);
                }
            }
            State::HalfOpen if probe => {
                if outcome.failed() || outcome.slow() {
                    self.open(&mut machine, now);
                } else {
                    machine.probes_succeeded += 1;
                    if machine.probes_succeeded >= config.half_open_calls {
                        machine.trips_in_a_row = 0;
                        self.transition(&mut machine, State::Closed, now);
                    }
                }
            }
            _ => {}
        }
    }

    fn release_probe(&self, generation: u64) {
        let mut machine = self.lock();
        if machine.generation == generation && machine.state == State::HalfOpen {
            machine.probes_admitted = machine.probes_admitted.saturating_sub(1);
        }
    }

    fn open(&self, machine: &mut Machine, now: Instant) {
        let config = &self.shared.config;
        let growth = config
            .open_duration_multiplier
            .powi(machine.trips_in_a_row.min(64) as i32);
        let wait = config
            .open_duration
            .mul_f64(growth.min(1e6))
            .min(config.max_open_duration);
        machine.trips_in_a_row = machine.trips_in_a_row.saturating_add(1);
        machine.open_until = now + wait;
        self.transition(machine, State::Open, now);
    }

    fn transition(&self, machine: &mut Machine, to: State, _now: Instant) {
        let from = machine.state;
        machine.state = to;
        machine.generation += 1;
        machine.probes_admitted = 0;
        machine.probes_succeeded = 0;
        if to == State::Closed || to == State::HalfOpen {
            machine.window.clear();
            machine.consecutive_failures = 0;
        }
        if from == to {
            return;
        }
        metrics::counter!(
            TRANSITIONS_TOTAL,
            "breaker" => self.shared.name.to_string(),
            "from" => from.as_str(),
            "to" => to.as_str(),
        )
        .increment(1);
        self.publish_state(to);
        match to {
            State::Open | State::ForcedOpen => tracing::warn!(
                breaker = %self.shared.name,
                from = from.as_str(),
                to = to.as_str(),
                "circuit breaker opened"
            ),
            _ => tracing::info!(
                breaker = %self.shared.name,
                from = from.as_str(),
                to = to.as_str(),
                "circuit breaker changed state"
            ),
        }
    }

    fn publish_state(&self, current: State) {
        // Every state's gauge is written, so the old state never stays at 1.
        for state in State::ALL {
            metrics::gauge!(STATE, "breaker" => self.shared.name.to_string(), "state" => state.as_str())
                .set(if state == current { 1.0 } else { 0.0 });
        }
    }

    /// Opens the breaker by hand until [`CircuitBreaker::reset`]: isolates the dependency.
    pub fn force_open(&self) {
        let mut machine = self.lock();
        self.transition(&mut machine, State::ForcedOpen, Instant::now());
    }

    /// Lets every call through until [`CircuitBreaker::reset`] (outcomes are still counted).
    pub fn disable(&self) {
        let mut machine = self.lock();
        self.transition(&mut machine, State::Disabled, Instant::now());
    }

    /// Back to closed with an empty window.
    pub fn reset(&self) {
        let mut machine = self.lock();
        machine.trips_in_a_row = 0;
        self.transition(&mut machine, State::Closed, Instant::now());
    }
}

/// Permission to make one call. Report its outcome with [`Permit::record`] (or
/// [`Permit::record_result`]); dropping it unreported means the call was cancelled and counts
/// for nothing.
#[derive(Debug)]
#[must_use = "report the call's outcome, or the breaker learns nothing"]
pub struct Permit {
    breaker: CircuitBreaker,
    generation: u64,
    probe: bool,
    started: Instant,
    recorded: bool,
}

impl Permit {
    /// Reports whether the call succeeded; slowness is measured from the permit's creation.
    pub fn record_result(self, success: bool) {
        let slow = self.started.elapsed() >= self.breaker.shared.config.slow_call_duration;
        let outcome = match (success, slow) {
            (true, false) => Outcome::Success,
            (true, true) => Outcome::SlowSuccess,
            (false, false) => Outcome::Failure,
            (false, true) => Outcome::SlowFailure,
        };
        self.record(outcome);
    }

    /// Reports the call's outcome.
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.record(self.generation, self.probe, outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded && self.probe {
            // A cancelled probe gives its slot back, so half-open cannot get stuck.
            self.breaker.release_probe(self.generation);
        }
    }
}

/// Named breakers, shared: asking twice for a name gives the same breaker.
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakerRegistry {
    breakers: Arc<Mutex<BTreeMap<String, CircuitBreaker>>>,
}

impl CircuitBreakerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The breaker called `name`, created with `config` if it does not exist yet.
    pub fn get_or_create(&self, name: &str, config: &CircuitBreakerConfig) -> CircuitBreaker {
        let mut breakers = self.breakers.lock().unwrap_or_else(|e| e.into_inner());
        breakers
            .entry(name.to_owned())
            .or_insert_with(|| CircuitBreaker::new(name, config.clone()))
            .clone()
    }

    /// The breaker called `name`, if any.
    pub fn get(&self, name: &str) -> Option<CircuitBreaker> {
        self.breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every breaker's snapshot, by name.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let breakers: Vec<_> = self
            .breakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        breakers.iter().map(CircuitBreaker::snapshot).collect()
    }

    /// A readiness check that reports `warn` (not `fail`: the service still serves, degraded)
    /// while any breaker is open, naming them.
    pub fn health_check(&self) -> crate::health::Check {
        let registry = self.clone();
        crate::health::Check::new("circuit_breakers:open", move || {
            let open: Vec<String> = registry
                .snapshots()
                .into_iter()
                .filter(|s| matches!(s.state, State::Open | State::HalfOpen | State::ForcedOpen))
                .map(|s| s.name)
                .collect();
            async move {
                if open.is_empty() {
                    crate::health::CheckResult::pass().with_observed_value(0, "breakers")
                } else {
                    crate::health::CheckResult::warn(format!("open: {}", open.join(", ")))
                        .with_observed_value(open.len(), "breakers")
                }
            }
        })
        .component_type("component")
    }
}

/// Decides whether a call's result counts as a failure for the breaker.
pub trait Classify<T, E> {
    /// `true` when the result is a failure.
    fn is_failure(&self, result: &Result<T, E>) -> bool;
}

/// The default classifier: every error is a failure (timeouts included), and so is an HTTP
/// response with a 5xx status; 4xx is the caller's fault and is not.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrors;

impl<B, E> Classify<http::Response<B>, E> for ServerErrors {
    fn is_failure(&self, result: &Result<http::Response<B>, E>) -> bool {
        match result {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        }
    }
}

/// A classifier for services that are not HTTP: every error is a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct Errors;

impl<T, E> Classify<T, E> for Errors {
    fn is_failure(&self, result: &Result<T, E>) -> bool {
        result.is_err()
    }
}

impl<T, E, F> Classify<T, E> for F
where
    F: Fn(&Result<T, E>) -> bool,
{
    fn is_failure(&self, result: &Result<T, E>) -> bool {
        self(result)
    }
}

/// Guards a service with a [`CircuitBreaker`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ServerErrors> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// Guards with `breaker`, classifying errors and 5xx responses as failures.
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classifier: ServerErrors,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses another classifier: [`Errors`] for non-HTTP services, or a closure
    /// `|result: &Result<T, E>| -> bool`.
    pub fn classify<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C = ServerErrors> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C, R> Service<R> for CircuitBreakerService<S, C>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = CircuitBreakerFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        match self.breaker.try_acquire() {
            Ok(permit) => CircuitBreakerFuture {
                state: CallState::Running {
                    inner: self.inner.call(request),
                    permit: Some(permit),
                    classifier: self.classifier.clone(),
                },
            },
            Err(open) => CircuitBreakerFuture {
                state: CallState::Rejected { error: Some(open) },
            },
        }
    }
}

pin_project! {
    /// Response future of [`CircuitBreakerService`].
    pub struct CircuitBreakerFuture<F, C> {
        #[pin]
        state: CallState<F, C>,
    }
}

pin_project! {
    #[project = CallStateProj]
    enum CallState<F, C> {
        Running { #[pin] inner: F, permit: Option<Permit>, classifier: C },
        Rejected { error: Option<CircuitOpen> },
    }
}

impl<F, C, T, E> Future for CircuitBreakerFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            CallStateProj::Running {
                inner,
                permit,
                classifier,
            } => {
                let result = ready!(inner.poll(cx));
                if let Some(permit) = permit.take() {
                    permit.record_result(!classifier.is_failure(&result));
                }
                Poll::Ready(result.map_err(Into::into))
            }
            CallStateProj::Rejected { error } => {
                Poll::Ready(Err(Box::new(error.take().expect("polled after completion"))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::Strategy as _;

    use super::*;

    fn config() -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            window_size: 10,
            minimum_calls: 4,
            failure_rate_threshold: 0.5,
            open_duration: Duration::from_secs(10),
            half_open_calls: 2,
            ..Default::default()
        }
    }

    fn call(breaker: &CircuitBreaker, success: bool) -> Result<(), CircuitOpen> {
        breaker.try_acquire().map(|permit| permit.record_result(success))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_failure_rate_once_minimum_calls_are_in() {
        let breaker = CircuitBreaker::new("t", config());
        call(&breaker, false).unwrap();
        call(&breaker, false).unwrap();
        call(&breaker, false).unwrap();
        assert_eq!(breaker.state(), State::Closed, "3 calls are below minimum_calls");
        call(&breaker, true).unwrap();
        // 4 calls, 3 failures: 75% >= 50%.
        assert_eq!(breaker.state(), State::Open);
        let open = call(&breaker, true).unwrap_err();
        assert_eq!(open.state, State::Open);
        assert_eq!(open.retry_after, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_below_the_threshold() {
        let breaker = CircuitBreaker::new("t", config());
        // One failure in three: never 50% in any window of 10.
        for i in 0..40 {
            call(&breaker, i % 3 != 2).unwrap();
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_exactly_the_configured_consecutive_failures() {
        let breaker = CircuitBreaker::new(
            "t",
            CircuitBreakerConfig {
                consecutive_failures: 3,
                minimum_calls: 100,
                ..config()
            },
        );
        call(&breaker, false).unwrap();
        call(&breaker, false).unwrap();
        call(&breaker, true).unwrap();
        call(&breaker, false).unwrap();
        call(&breaker, false).unwrap();
        assert_eq!(breaker.state(), State::Closed);
        call(&breaker, false).unwrap();
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn lets_exactly_the_probes_through_after_the_wait_and_closes_when_they_succeed() {
        let breaker = CircuitBreaker::new(
            "t",
            CircuitBreakerConfig {
                consecutive_failures: 1,
                ..config()
            },
        );
        call(&breaker, false).unwrap();
        assert_eq!(breaker.state(), State::Open);
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(breaker.try_acquire().is_err(), "still open just before the wait ends");
        tokio::time::advance(Duration::from_millis(1)).await;
        let first = breaker.try_acquire().expect("first probe");
        assert_eq!(breaker.state(), State::HalfOpen);
        let second = breaker.try_acquire().expect("second probe");
        let third = breaker.try_acquire().unwrap_err();
        assert_eq!(third.state, State::HalfOpen, "only half_open_calls probes");
        first.record(Outcome::Success);
        assert_eq!(breaker.state(), State::HalfOpen);
        second.record(Outcome::Success);
        assert_eq!(breaker.state(), State::Closed);
        assert_eq!(breaker.snapshot().calls, 0, "closed again with an empty window");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_a_growing_wait() {
        let breaker = CircuitBreaker::new(
            "t",
            CircuitBreakerConfig {
                consecutive_failures: 1,
                open_duration_multiplier: 2.0,
                max_open_duration: Duration::from_secs(30),
                ..config()
            },
        );
        call(&breaker, false).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        call(&breaker, false).unwrap();
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(breaker.try_acquire().unwrap_err().retry_after, Duration::from_secs(20));
        tokio::time::advance(Duration::from_secs(20)).await;
        call(&breaker, false).unwrap();
        assert_eq!(
            breaker.try_acquire().unwrap_err().retry_after,
            Duration::from_secs(30),
            "capped at max_open_duration"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_gives_its_slot_back() {
        let breaker = CircuitBreaker::new(
            "t",
            CircuitBreakerConfig {
                consecutive_failures: 1,
                ..config()
            },
        );
        call(&breaker, false).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        let a = breaker.try_acquire().unwrap();
        let b = breaker.try_acquire().unwrap();
        drop(a);
        let c = breaker.try_acquire().expect("the dropped probe's slot is free again");
        b.record(Outcome::Success);
        c.record(Outcome::Success);
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn late_outcomes_from_an_earlier_state_do_not_move_the_new_one() {
        let breaker = CircuitBreaker::new(
            "t",
            CircuitBreakerConfig {
                consecutive_failures: 1,
                ..config()
            },
        );
        let slow_call = breaker.try_acquire().unwrap();
        call(&breaker, false).unwrap();
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = breaker.try_acquire().unwrap();
        slow_call.record(Outcome::Failure);
        assert_eq!(
            breaker.state(),
            State::HalfOpen,
            "a call admitted while closed does not re-open it"
        );
        probe.record(Outcome::Success);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_open_it_at_the_slow_call_rate() {
        let breaker = CircuitBreaker::new(
            "t",
            CircuitBreakerConfig {
                slow_call_rate_threshold: 0.5,
                slow_call_duration: Duration::from_secs(2),
                ..config()
            },
        );
        for _ in 0..4 {
            let permit = breaker.try_acquire().unwrap();
            tokio::time::advance(Duration::from_secs(3)).await;
            permit.record_result(true);
        }
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_window_forgets_old_calls() {
        let breaker = CircuitBreaker::new(
            "t",
            CircuitBreakerConfig {
                window: WindowKind::Time,
                window_duration: Duration::from_secs(10),
                ..config()
            },
        );
        for _ in 0..3 {
            call(&breaker, false).unwrap();
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        call(&breaker, false).unwrap();
        assert_eq!(breaker.state(), State::Closed, "the first three fell out of the window");
        assert_eq!(breaker.snapshot().calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_open_and_disabled_are_manual_until_reset() {
        let breaker = CircuitBreaker::new("t", config());
        breaker.force_open();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(call(&breaker, true).unwrap_err().state, State::ForcedOpen);
        breaker.disable();
        for _ in 0..20 {
            call(&breaker, false).unwrap();
        }
        assert_eq!(breaker.state(), State::Disabled);
        breaker.reset();
        assert_eq!(breaker.state(), State::Closed);
    }

    /// Operations of the property test.
    #[derive(Debug, Clone)]
    enum Op {
        Call(bool),
        Advance(u64),
    }

    /// The specification, written as plainly as possible: closed with a count window and the
    /// consecutive rule, open for a fixed time, then `half_open_calls` probes.
    struct Model {
        open: bool,
        open_until: u64,
        half_open: bool,
        probes: u32,
        window: VecDeque<bool>,
        consecutive: u32,
    }

    fn model_call(m: &mut Model, config: &CircuitBreakerConfig, now: u64, success: bool) -> bool {
        if m.open {
            if now < m.open_until {
                return false;
            }
            m.open = false;
            m.half_open = true;
            m.probes = 0;
        }
        if m.half_open {
            if !success {
                m.half_open = false;
                m.open = true;
                m.open_until = now + config.open_duration.as_secs();
                return true;
            }
            m.probes += 1;
            if m.probes == config.half_open_calls {
                m.half_open = false;
                m.window.clear();
                m.consecutive = 0;
            }
            return true;
        }
        m.window.push_back(success);
        if m.window.len() > config.window_size {
            m.window.pop_front();
        }
        m.consecutive = if success { 0 } else { m.consecutive + 1 };
        let failures = m.window.iter().filter(|ok| !**ok).count();
        let rate = failures as f64 / m.window.len() as f64;
        if (config.consecutive_failures > 0 && m.consecutive >= config.consecutive_failures)
            || (m.window.len() >= config.minimum_calls && rate >= config.failure_rate_threshold)
        {
            m.open = true;
            m.open_until = now + config.open_duration.as_secs();
            m.window.clear();
            m.consecutive = 0;
        }
        true
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        #[test]
        fn behaves_like_the_model(ops in proptest::collection::vec(
            proptest::prop_oneof![
                8 => proptest::prelude::any::<bool>().prop_map(Op::Call),
                1 => (1u64..15).prop_map(Op::Advance),
            ],
            1..200,
        ), consecutive in 0u32..5) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
            runtime.block_on(async {
                let config = CircuitBreakerConfig { consecutive_failures: consecutive, ..config() };
                let breaker = CircuitBreaker::new("model", config.clone());
                let mut model = Model { open: false, open_until: 0, half_open: false, probes: 0, window: VecDeque::new(), consecutive: 0 };
                let mut now = 0;
                for (step, op) in ops.iter().enumerate() {
                    match op.clone() {
                        Op::Advance(secs) => {
                            now += secs;
                            tokio::time::advance(Duration::from_secs(secs)).await;
                        }
                        Op::Call(success) => {
                            let expected = model_call(&mut model, &config, now, success);
                            let admitted = call(&breaker, success).is_ok();
                            assert_eq!(admitted, expected, "step {step} of {ops:?}");
                        }
                    }
                }
            });
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_never_get_more_probes_and_never_leave_it_stuck() {
        use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
        use tower::ServiceExt as _;
        let breaker = CircuitBreaker::new(
            "concurrent",
            CircuitBreakerConfig {
                consecutive_failures: 1,
                open_duration: Duration::from_millis(20),
                half_open_calls: 3,
                ..config()
            },
        );
        // Probes hold until the gate opens, so the breaker stays half-open while every caller tries.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let in_flight = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let (active, max, held) = (in_flight.clone(), peak.clone(), gate.clone());
        let service = CircuitBreakerLayer::new(breaker.clone())
            .classify(Errors)
            .layer(tower::service_fn(move |_: ()| {
                let (active, max, held) = (active.clone(), max.clone(), held.clone());
                async move {
                    // Counted out on drop too: a cancelled caller's probe stops running (and
                    // gives its slot back) without reaching the end.
                    struct Running(Arc<AtomicU32>);
                    impl Drop for Running {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, SeqCst);
                        }
                    }
                    let now = active.fetch_add(1, SeqCst) + 1;
                    let _running = Running(active);
                    max.fetch_max(now, SeqCst);
                    let _permit = held.acquire().await;
                    Ok::<_, std::io::Error>(())
                }
            }));
        call(&breaker, false).unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
        let mut tasks = Vec::new();
        let attempted = Arc::new(AtomicU32::new(0));
        for i in 0..64 {
            let service = service.clone();
            let attempted = attempted.clone();
            tasks.push(tokio::spawn(async move {
                attempted.fetch_add(1, SeqCst);
                if i % 4 == 0 {
                    // Cancelled callers: a probe slot they held must come back.
                    let _ = tokio::time::timeout(Duration::from_millis(1), service.oneshot(())).await;
                } else {
                    let _ = service.oneshot(()).await;
                }
            }));
        }
        // Every caller has tried (on a busy machine the tasks may start late), and the cancelled
        // ones have given up.
        for _ in 0..500 {
            if attempted.load(SeqCst) == 64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(attempted.load(SeqCst), 64, "every caller ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(breaker.state(), State::HalfOpen);
        assert!(
            peak.load(SeqCst) <= 3,
            "at most half_open_calls probes at once, saw {}",
            peak.load(SeqCst)
        );
        gate.add_permits(1_000);
        for task in tasks {
            task.await.unwrap();
        }
        // Cancelled probes gave their slots back: later callers finish the probing.
        for _ in 0..10 {
            if breaker.state() == State::Closed {
                break;
            }
            let _ = service.clone().oneshot(()).await;
        }
        assert_eq!(breaker.state(), State::Closed, "not stuck in half-open");
    }

    #[test]
    fn registry_shares_breakers_by_name() {
        let registry = CircuitBreakerRegistry::new();
        let a = registry.get_or_create("x", &config());
        let b = registry.get_or_create("x", &CircuitBreakerConfig::default());
        a.force_open();
        assert_eq!(b.state(), State::ForcedOpen);
        assert_eq!(registry.snapshots().len(), 1);
    }

    #[test]
    fn invalid_settings_name_the_key() {
        let error = CircuitBreakerConfig {
            failure_rate_threshold: 1.5,
            minimum_calls: 500,
            ..Default::default()
        }
        .validated()
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("circuit_breaker.failure_rate_threshold"), "{text}");
        assert!(text.contains("circuit_breaker.minimum_calls"), "{text}");
    }
}
