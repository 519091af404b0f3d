//! Breakers shared by name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Breaker, CircuitBreakerConfig, Snapshot};
use crate::config::ConfigError;

/// Named breakers, shared: asking twice for a name gives the same breaker, so a breaker applied
/// to a router, or created for the same downstream twice, is one breaker.
#[derive(Debug, Clone, Default)]
pub struct CircuitBreakerRegistry {
    breakers: Arc<Mutex<BTreeMap<String, Breaker>>>,
}

impl CircuitBreakerRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Breaker>> {
        self.breakers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The breaker called `name`, created with `config` if it does not exist yet (an invalid
    /// `config` is an error then; an existing breaker keeps the settings it was made with).
    pub fn get_or_create(&self, name: &str, config: &CircuitBreakerConfig) -> Result<Breaker, ConfigError> {
        let mut breakers = self.lock();
        if let Some(breaker) = breakers.get(name) {
            return Ok(breaker.clone());
        }
        let breaker = Breaker::new(name, config.clone())?;
        breakers.insert(name.to_owned(), breaker.clone());
        Ok(breaker)
    }

    /// The breaker called `name`, if any.
    pub fn get(&self, name: &str) -> Option<Breaker> {
        self.lock().get(name).cloned()
    }

    /// Every breaker's snapshot, by name.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let breakers: Vec<_> = self.lock().values().cloned().collect();
        breakers.iter().map(Breaker::snapshot).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::circuit_breaker::State;

    #[test]
    fn registry_shares_breakers_by_name() {
        let registry = CircuitBreakerRegistry::new();
        let a = registry.get_or_create("x", &CircuitBreakerConfig::default()).unwrap();
        let b = registry
            .get_or_create(
                "x",
                &CircuitBreakerConfig {
                    window_size: 5,
                    minimum_calls: 5,
                    ..Default::default()
                },
            )
            .unwrap();
        a.force_open();
        assert_eq!(b.state(), State::ForcedOpen);
        assert_eq!(registry.snapshots().len(), 1);
    }
}
