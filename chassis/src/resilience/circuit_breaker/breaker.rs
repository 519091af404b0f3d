//! The breaker itself: a state machine behind a mutex, shared by its clones, and the permit a
//! call holds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::window::{Counts, Window};
use super::{
    CALLS_TOTAL, CircuitBreakerConfig, CircuitOpen, HalfOpenEvaluation, Outcome, STATE, Snapshot, State,
    TRANSITIONS_TOTAL,
};
use crate::config::ConfigError;

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
    /// The outcomes the probes of this half-open state have reported.
    probes: Counts,
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    config: CircuitBreakerConfig,
    machine: Mutex<Machine>,
}

/// A named circuit breaker: the state shared by every call to one dependency. Cheap to clone;
/// clones share state.
///
/// Use it through [`CircuitBreakerLayer`](super::CircuitBreakerLayer), or directly around any
/// async call:
///
/// ```
/// # async fn demo() {
/// use chassis::resilience::{Breaker, CircuitBreakerConfig};
///
/// let breaker = Breaker::new("ledger", CircuitBreakerConfig::default()).unwrap();
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
pub struct Breaker {
    shared: Arc<Shared>,
}

impl Breaker {
    /// A stand-alone breaker, or the problems with `config`. Prefer
    /// [`CircuitBreakerRegistry::get_or_create`](super::CircuitBreakerRegistry::get_or_create)
    /// so breakers of the same name are shared.
    pub fn new(name: impl Into<Arc<str>>, config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        crate::config::validate("circuit_breaker", &config)?;
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
                    probes: Counts::default(),
                }),
                name,
                config,
            }),
        };
        breaker.publish_state(State::Closed);
        Ok(breaker)
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
            failure_rate: totals.failure_rate(),
            slow_call_rate: totals.slow_call_rate(),
            consecutive_failures: machine.consecutive_failures,
        }
    }

    /// Asks to make a call. On `Ok`, make it and report how it went on the permit; dropping the
    /// permit unreported (the call was cancelled, or its result is to be ignored) leaves the
    /// breaker as it was.
    pub fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        let now = Instant::now();
        let mut machine = self.lock();
        let probe = match machine.state {
            State::Closed | State::Disabled => false,
            State::Open if now >= machine.open_until => {
                self.transition(&mut machine, State::HalfOpen);
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
                let by_rate = totals.calls >= config.minimum_calls.max(1) && totals.over_thresholds(config);
                if by_consecutive || by_rate {
                    self.open(&mut machine, now);
                }
            }
            State::HalfOpen if probe => {
                machine.probes.add(outcome);
                let probes = machine.probes;
                let all_in = probes.calls >= config.half_open_calls as usize;
                let reopen = match config.half_open_evaluation {
                    HalfOpenEvaluation::Strict => outcome.failed() || outcome.slow(),
                    HalfOpenEvaluation::Rate => all_in && probes.over_thresholds(config),
                };
                if reopen {
                    self.open(&mut machine, now);
                } else if all_in {
                    machine.trips_in_a_row = 0;
                    self.transition(&mut machine, State::Closed);
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
        self.transition(machine, State::Open);
    }

    fn transition(&self, machine: &mut Machine, to: State) {
        let from = machine.state;
        machine.state = to;
        machine.generation += 1;
        machine.probes_admitted = 0;
        machine.probes = Counts::default();
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

    /// Opens the breaker by hand until [`Breaker::reset`]: isolates the dependency.
    pub fn force_open(&self) {
        let mut machine = self.lock();
        self.transition(&mut machine, State::ForcedOpen);
    }

    /// Lets every call through until [`Breaker::reset`] (outcomes are still counted).
    pub fn disable(&self) {
        let mut machine = self.lock();
        self.transition(&mut machine, State::Disabled);
    }

    /// Back to closed with an empty window.
    pub fn reset(&self) {
        let mut machine = self.lock();
        machine.trips_in_a_row = 0;
        self.transition(&mut machine, State::Closed);
    }
}

/// Permission to make one call. Report its outcome with [`Permit::record`] (or
/// [`Permit::record_result`]); dropping it unreported means the call was cancelled or its
/// result is ignored, and counts for nothing.
#[derive(Debug)]
#[must_use = "report the call's outcome, or the breaker learns nothing"]
pub struct Permit {
    breaker: Breaker,
    generation: u64,
    probe: bool,
    started: Instant,
    recorded: bool,
}

impl Permit {
    /// Reports whether the call succeeded; it was slow when it took longer than
    /// `slow_call_duration` since the permit was given.
    pub fn record_result(self, success: bool) {
        let slow = self.started.elapsed() > self.breaker.shared.config.slow_call_duration;
        self.record(Outcome::of(success, slow));
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
            // A cancelled or ignored probe gives its slot back, so half-open cannot get stuck.
            self.breaker.release_probe(self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::Strategy as _;

    use super::*;
    use crate::resilience::circuit_breaker::WindowKind;

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

    /// A breaker of [`config`] that opens at the first failure.
    fn opening_at_the_first_failure() -> Breaker {
        let config = CircuitBreakerConfig {
            consecutive_failures: 1,
            ..config()
        };
        Breaker::new("t", config).unwrap()
    }

    fn call(breaker: &Breaker, success: bool) -> Result<(), CircuitOpen> {
        breaker.try_acquire().map(|permit| permit.record_result(success))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_the_failure_rate_once_minimum_calls_are_in() {
        let breaker = Breaker::new("t", config()).unwrap();
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
        let breaker = Breaker::new("t", config()).unwrap();
        // One failure in three: never 50% in any window of 10.
        for i in 0..40 {
            call(&breaker, i % 3 != 2).unwrap();
        }
        assert_eq!(breaker.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_exactly_the_configured_consecutive_failures() {
        let breaker = Breaker::new(
            "t",
            CircuitBreakerConfig {
                consecutive_failures: 3,
                minimum_calls: 10,
                ..config()
            },
        )
        .unwrap();
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
        let breaker = opening_at_the_first_failure();
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
        let breaker = Breaker::new(
            "t",
            CircuitBreakerConfig {
                consecutive_failures: 1,
                open_duration_multiplier: 2.0,
                max_open_duration: Duration::from_secs(30),
                ..config()
            },
        )
        .unwrap();
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
        let breaker = opening_at_the_first_failure();
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
        let breaker = opening_at_the_first_failure();
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
        let breaker = Breaker::new(
            "t",
            CircuitBreakerConfig {
                slow_call_rate_threshold: 0.5,
                slow_call_duration: Duration::from_secs(2),
                ..config()
            },
        )
        .unwrap();
        for _ in 0..4 {
            let permit = breaker.try_acquire().unwrap();
            tokio::time::advance(Duration::from_secs(3)).await;
            permit.record_result(true);
        }
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_of_exactly_the_slow_duration_is_not_slow() {
        let breaker = Breaker::new(
            "t",
            CircuitBreakerConfig {
                slow_call_rate_threshold: 0.5,
                slow_call_duration: Duration::from_secs(2),
                ..config()
            },
        )
        .unwrap();
        for _ in 0..4 {
            let permit = breaker.try_acquire().unwrap();
            tokio::time::advance(Duration::from_secs(2)).await;
            permit.record_result(true);
        }
        assert_eq!(
            breaker.state(),
            State::Closed,
            "slow means longer than slow_call_duration"
        );
        assert_eq!(breaker.snapshot().slow_call_rate, 0.0);
    }

    /// Opens `breaker` (one failure opens it) and waits out the open duration.
    async fn trip(breaker: &Breaker) {
        call(breaker, false).unwrap();
        assert_eq!(breaker.state(), State::Open);
        tokio::time::advance(breaker.config().open_duration).await;
    }

    #[tokio::test(start_paused = true)]
    async fn rate_evaluation_judges_all_probes_against_the_thresholds() {
        let config = CircuitBreakerConfig {
            consecutive_failures: 1,
            half_open_calls: 4,
            half_open_evaluation: HalfOpenEvaluation::Rate,
            failure_rate_threshold: 0.5,
            ..config()
        };
        let breaker = Breaker::new("t", config).unwrap();
        // One failed probe of four (25 %) closes it.
        trip(&breaker).await;
        let probes: Vec<_> = (0..4).map(|_| breaker.try_acquire().unwrap()).collect();
        for (i, probe) in probes.into_iter().enumerate() {
            assert_eq!(breaker.state(), State::HalfOpen, "undecided until every probe reported");
            probe.record_result(i != 0);
        }
        assert_eq!(breaker.state(), State::Closed);
        // Two of four (50 %) opens it again.
        trip(&breaker).await;
        let probes: Vec<_> = (0..4).map(|_| breaker.try_acquire().unwrap()).collect();
        for (i, probe) in probes.into_iter().enumerate() {
            probe.record_result(i >= 2);
        }
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn strict_evaluation_reopens_at_the_first_failed_probe() {
        let config = CircuitBreakerConfig {
            consecutive_failures: 1,
            half_open_calls: 4,
            ..config()
        };
        let breaker = Breaker::new("t", config).unwrap();
        trip(&breaker).await;
        let first = breaker.try_acquire().unwrap();
        let _second = breaker.try_acquire().unwrap();
        first.record_result(false);
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_window_forgets_old_calls() {
        let breaker = Breaker::new(
            "t",
            CircuitBreakerConfig {
                window: WindowKind::Time,
                window_duration: Duration::from_secs(10),
                ..config()
            },
        )
        .unwrap();
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
        let breaker = Breaker::new("t", config()).unwrap();
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
                let breaker = Breaker::new("model", config.clone()).unwrap();
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

    #[test]
    fn invalid_settings_name_the_key() {
        let config = CircuitBreakerConfig {
            failure_rate_threshold: 1.5,
            minimum_calls: 500,
            ..Default::default()
        };
        let error = Breaker::new("t", config).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("circuit_breaker.failure_rate_threshold"), "{text}");
        assert!(text.contains("circuit_breaker.minimum_calls"), "{text}");
    }
}
