//! The sliding window of recent outcomes, with running totals so judging it is O(1).

use std::collections::VecDeque;

use tokio::time::Instant;

use super::{CircuitBreakerConfig, Outcome, WindowKind};

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    pub(super) calls: usize,
    pub(super) failures: usize,
    pub(super) slow: usize,
}

impl Counts {
    pub(super) fn add(&mut self, outcome: Outcome) {
        self.calls += 1;
        self.failures += usize::from(outcome.failed());
        self.slow += usize::from(outcome.slow());
    }

    fn remove(&mut self, outcome: Outcome) {
        self.calls -= 1;
        self.failures -= usize::from(outcome.failed());
        self.slow -= usize::from(outcome.slow());
    }

    pub(super) fn failure_rate(&self) -> f64 {
        Self::rate(self.failures, self.calls)
    }

    pub(super) fn slow_call_rate(&self) -> f64 {
        Self::rate(self.slow, self.calls)
    }

    /// Whether either rate reaches its threshold.
    pub(super) fn over_thresholds(&self, config: &CircuitBreakerConfig) -> bool {
        self.failure_rate() >= config.failure_rate_threshold || self.slow_call_rate() >= config.slow_call_rate_threshold
    }

    fn rate(part: usize, calls: usize) -> f64 {
        if calls == 0 { 0.0 } else { part as f64 / calls as f64 }
    }
}

#[derive(Debug)]
pub(super) enum Window {
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
    pub(super) fn new(config: &CircuitBreakerConfig) -> Self {
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

    pub(super) fn record(&mut self, outcome: Outcome, now: Instant) {
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

    pub(super) fn totals(&mut self, now: Instant) -> Counts {
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

    pub(super) fn clear(&mut self) {
        match self {
            Window::Count { outcomes, totals, .. } => {
                outcomes.clear();
                *totals = Counts::default();
            }
            Window::Time { buckets, .. } => buckets.clear(),
        }
    }
}
