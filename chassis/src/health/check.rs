//! A named check and what it reports.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Probe, Status};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct CheckResult {
    pub(super) status: Status,
    pub(super) observed_value: Option<serde_json::Value>,
    pub(super) observed_unit: Option<String>,
    pub(super) output: Option<String>,
}

impl CheckResult {
    /// A passing result.
    pub fn pass() -> Self {
        Self::with_status(Status::Pass, None)
    }

    /// A warning: still healthy, with an explanation.
    pub fn warn(output: impl Into<String>) -> Self {
        Self::with_status(Status::Warn, Some(output.into()))
    }

    /// A failure, with an explanation.
    pub fn fail(output: impl Into<String>) -> Self {
        Self::with_status(Status::Fail, Some(output.into()))
    }

    fn with_status(status: Status, output: Option<String>) -> Self {
        Self {
            status,
            observed_value: None,
            observed_unit: None,
            output,
        }
    }

    /// Attaches the measured value and its unit (`"ms"`, `"percent"`, `"connections"`).
    pub fn with_observed_value(mut self, value: impl Into<serde_json::Value>, unit: impl Into<String>) -> Self {
        self.observed_value = Some(value.into());
        self.observed_unit = Some(unit.into());
        self
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The explanation, if any.
    pub fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }
}

impl<E: std::fmt::Display> From<Result<(), E>> for CheckResult {
    fn from(result: Result<(), E>) -> Self {
        match result {
            Ok(()) => CheckResult::pass(),
            Err(e) => CheckResult::fail(e.to_string()),
        }
    }
}

pub(super) type CheckFn = dyn Fn() -> BoxFuture<'static, CheckResult> + Send + Sync;

/// A named health check.
#[derive(Clone)]
pub struct Check {
    pub(super) name: String,
    pub(super) component_type: Option<String>,
    pub(super) probes: u8,
    pub(super) timeout: Option<Duration>,
    pub(super) run: Arc<CheckFn>,
}

impl std::fmt::Debug for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("component_type", &self.component_type)
            .field("probes", &self.probe_list())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Check {
    /// A check named `"component:measurement"` (for example `"postgres:connections"`) that runs
    /// `check`. It takes part in the readiness probe unless told otherwise.
    pub fn new<F, Fut, R>(name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: Into<CheckResult> + 'static,
    {
        Self {
            name: name.into(),
            component_type: None,
            probes: Probe::Readiness.bit(),
            timeout: None,
            run: Arc::new(move || Box::pin(check().map(Into::into))),
        }
    }

    /// Sets `componentType`: `"datastore"`, `"component"`, `"system"` or a URI.
    pub fn component_type(mut self, component_type: impl Into<String>) -> Self {
        self.component_type = Some(component_type.into());
        self
    }

    /// Sets the probes this check takes part in, replacing the default (readiness).
    pub fn probes(mut self, probes: &[Probe]) -> Self {
        self.probes = probes.iter().fold(0, |bits, p| bits | p.bit());
        self
    }

    /// Sets this check's timeout (default `health.check_timeout`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn probe_list(&self) -> Vec<Probe> {
        Probe::ALL.into_iter().filter(|p| self.probes & p.bit() != 0).collect()
    }

    pub(super) fn probes_bits(&self) -> u8 {
        self.probes
    }
}
