//! Which consumers are up: what the `messaging:consumers` readiness check reports.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::health::{Check, CheckResult};

/// Each running consumer by name (`group/type#n`), up or down (restarting).
#[derive(Debug, Clone, Default)]
pub(crate) struct ConsumerStates(Arc<Mutex<BTreeMap<String, bool>>>);

impl ConsumerStates {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set(&self, name: &str, up: bool) {
        self.lock().insert(name.to_owned(), up);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub(crate) fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    /// `messaging:consumers`: `fail` naming the consumers that are down (their subscription
    /// ended and is being made again), the number running as the observed value.
    pub(crate) fn health_check(&self) -> Check {
        let states = self.clone();
        Check::new("messaging:consumers", move || {
            let (up, down): (Vec<_>, Vec<_>) = states
                .lock()
                .iter()
                .map(|(n, up)| (n.clone(), *up))
                .partition(|(_, up)| *up);
            async move {
                if down.is_empty() {
                    CheckResult::pass().with_observed_value(up.len(), "consumers")
                } else {
                    let names: Vec<_> = down.into_iter().map(|(name, _)| name).collect();
                    CheckResult::fail(format!("restarting: {}", names.join(", ")))
                        .with_observed_value(up.len(), "consumers")
                }
            }
        })
        .component_type("component")
    }
}
