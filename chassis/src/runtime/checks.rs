//! The readiness checks the runtime registers for what it composes.

use std::sync::Arc;

use crate::health::{Check, CheckResult};
use crate::messaging::Transport;
use crate::resilience::CircuitBreakerRegistry;

/// `circuit_breakers:open`: `warn` (not `fail`: the service still serves, degraded) while any
/// breaker is open, naming them.
pub(super) fn circuit_breakers(registry: CircuitBreakerRegistry) -> Check {
    Check::new("circuit_breakers:open", move || {
        let open: Vec<String> = registry
            .snapshots()
            .into_iter()
            .filter(|s| s.state.is_open())
            .map(|s| s.name)
            .collect();
        async move {
            if open.is_empty() {
                CheckResult::pass().with_observed_value(0, "breakers")
            } else {
                CheckResult::warn(format!("open: {}", open.join(", "))).with_observed_value(open.len(), "breakers")
            }
        }
    })
    .component_type("component")
}

/// `messaging:{transport}`: `fail` while the broker connection is down.
pub(super) fn broker(transport: Arc<dyn Transport>) -> Check {
    let name = format!("messaging:{}", transport.name());
    Check::new(name, move || {
        let connected = transport.is_connected();
        async move {
            if connected {
                CheckResult::pass()
            } else {
                CheckResult::fail("not connected to the broker; reconnecting")
            }
        }
    })
}
