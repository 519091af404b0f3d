//! What a probe answers: the overall status and every check's entry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The status of a check or a whole report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Healthy.
    Pass,
    /// Healthy, with a concern worth a look (HTTP 200).
    Warn,
    /// Unhealthy (HTTP 503).
    Fail,
}

impl Status {
    /// `true` for pass and warn.
    pub fn is_healthy(self) -> bool {
        self != Status::Fail
    }

    /// The status name as it appears in responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// Which probe a check takes part in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Probe {
    /// `/health/live`: is the process able to make progress? Restarted by the orchestrator when
    /// failing.
    Liveness,
    /// `/health/ready`: should it receive traffic now?
    Readiness,
    /// `/health/startup`: has it finished starting? Guards slow starts.
    Startup,
}

impl Probe {
    pub(super) const ALL: [Probe; 3] = [Probe::Liveness, Probe::Readiness, Probe::Startup];

    pub(super) fn bit(self) -> u8 {
        match self {
            Probe::Liveness => 1,
            Probe::Readiness => 2,
            Probe::Startup => 4,
        }
    }

    pub(super) fn index(self) -> usize {
        match self {
            Probe::Liveness => 0,
            Probe::Readiness => 1,
            Probe::Startup => 2,
        }
    }

    /// The probe's name: `live`, `ready` or `startup`.
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Liveness => "live",
            Probe::Readiness => "ready",
            Probe::Startup => "startup",
        }
    }
}

/// Where the service is in its life, as readiness sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Start-up has not completed: readiness and startup fail.
    Starting,
    /// Serving: probes report the checks.
    Ready,
    /// Shutdown has begun: readiness fails so traffic drains away.
    Draining,
}

impl Lifecycle {
    pub(super) fn from_u8(v: u8) -> Self {
        match v {
            0 => Lifecycle::Starting,
            1 => Lifecycle::Ready,
            _ => Lifecycle::Draining,
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Starting => "starting",
            Lifecycle::Ready => "ready",
            Lifecycle::Draining => "draining",
        }
    }
}

/// One entry in a report's `checks` map.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckEntry {
    /// `componentType`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub component_type: Option<String>,
    /// `observedValue`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub observed_value: Option<serde_json::Value>,
    /// `observedUnit`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub observed_unit: Option<String>,
    /// `status`.
    pub status: Status,
    /// `time`: when the reading was taken (RFC 3339).
    pub time: String,
    /// `output`: why it is not passing.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub output: Option<String>,
}

/// A probe's answer, serialized as `application/health+json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// Overall status: the worst of the checks.
    pub status: Status,
    /// The service's version.
    pub version: String,
    /// The service's name.
    pub service_id: String,
    /// Which probe this report answers.
    pub description: String,
    /// Per-check entries keyed `"component:measurement"`.
    pub checks: BTreeMap<String, Vec<CheckEntry>>,
}

impl HealthReport {
    /// The overall status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The entry of a check, by name.
    pub fn check(&self, name: &str) -> Option<&CheckEntry> {
        self.checks.get(name).and_then(|entries| entries.first())
    }
}
