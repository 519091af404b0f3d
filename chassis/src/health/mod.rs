//! Health checks and the liveness, readiness and startup probes.
//!
//! A [`HealthRegistry`] holds named async checks. Each check says which probes it belongs to
//! (readiness only, by default: a dead database must not make Kubernetes restart every pod, so
//! liveness should depend on nothing outside the process). Checks run concurrently, each under its
//! own timeout, and results are cached for `health.cache_ttl` so a storm of probes does not
//! hammer the dependencies.
//!
//! Responses follow draft-inadarei-api-health-check: `application/health+json`, `status`
//! `pass` / `warn` / `fail`, per-check entries keyed `"component:measurement"`, HTTP 200 for pass
//! or warn and 503 for fail.
//!
//! Readiness also reflects the service's lifecycle: it fails until start-up has completed and
//! again as soon as shutdown begins, so load balancers stop sending traffic before the listener
//! closes.
//!
//! ```
//! use chassis::health::{Check, CheckResult, HealthRegistry, Probe};
//!
//! # async fn demo() {
//! let registry = HealthRegistry::new(Default::default());
//! registry.register(
//!     Check::new("queue:depth", || async {
//!         let depth = 12; // ask the queue
//!         if depth > 1000 {
//!             CheckResult::warn(format!("{depth} messages waiting"))
//!         } else {
//!             CheckResult::pass()
//!         }
//!         .with_observed_value(depth, "messages")
//!     })
//!     .component_type("component"),
//! );
//! registry.mark_ready();
//! let report = registry.report(Probe::Readiness).await;
//! assert!(report.status().is_healthy());
//! # }
//! ```

pub mod checks;
mod endpoint;

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use futures_util::FutureExt;
use serde::{Deserialize, Serialize};

pub use endpoint::{HEALTH_JSON, router};

use crate::config::Problems;
use crate::http::BoxFuture;

/// `[health]`: how checks run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// `health.cache_ttl`: how long a probe's check results are reused. Default `"1s"`; `"0s"`
    /// runs the checks on every probe.
    #[serde(with = "crate::config::duration")]
    pub cache_ttl: Duration,
    /// `health.check_timeout`: the timeout of a check that sets none itself. Default `"1s"`, the
    /// same as Kubernetes' default probe timeout, so a hung dependency reports `fail` instead of
    /// timing out the probe.
    #[serde(with = "crate::config::duration")]
    pub check_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(1),
            check_timeout: Duration::from_secs(1),
        }
    }
}

impl HealthConfig {
    pub(crate) fn validate(&self, problems: &mut Problems) {
        problems.check(
            !self.check_timeout.is_zero(),
            "health.check_timeout",
            "must be greater than zero",
        );
    }
}

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
    const ALL: [Probe; 3] = [Probe::Liveness, Probe::Readiness, Probe::Startup];

    fn bit(self) -> u8 {
        match self {
            Probe::Liveness => 1,
            Probe::Readiness => 2,
            Probe::Startup => 4,
        }
    }

    fn index(self) -> usize {
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

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct CheckResult {
    status: Status,
    observed_value: Option<serde_json::Value>,
    observed_unit: Option<String>,
    output: Option<String>,
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

type CheckFn = dyn Fn() -> BoxFuture<'static, CheckResult> + Send + Sync;

/// A named health check.
#[derive(Clone)]
pub struct Check {
    name: String,
    component_type: Option<String>,
    probes: u8,
    timeout: Option<Duration>,
    run: Arc<CheckFn>,
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

    fn probes_bits(&self) -> u8 {
        self.probes
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
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Lifecycle::Starting,
            1 => Lifecycle::Ready,
            _ => Lifecycle::Draining,
        }
    }

    fn as_str(self) -> &'static str {
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

#[derive(Debug)]
struct Cached {
    at: Instant,
    entries: Vec<(String, CheckEntry)>,
}

struct Inner {
    config: HealthConfig,
    service_id: String,
    version: String,
    checks: RwLock<Vec<Check>>,
    lifecycle: AtomicU8,
    cache: [tokio::sync::Mutex<Option<Cached>>; 3],
}

/// The registry of health checks behind the probes. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct HealthRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("service_id", &self.inner.service_id)
            .field("lifecycle", &self.lifecycle())
            .field("checks", &self.inner.checks.read().map(|c| c.len()).unwrap_or(0))
            .finish()
    }
}

impl HealthRegistry {
    /// An empty registry in the [`Lifecycle::Starting`] state.
    pub fn new(config: HealthConfig) -> Self {
        Self::for_service(config, "service", "0.0.0")
    }

    /// An empty registry whose reports carry the service's name and version.
    pub fn for_service(config: HealthConfig, service_id: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                service_id: service_id.into(),
                version: version.into(),
                checks: RwLock::new(Vec::new()),
                lifecycle: AtomicU8::new(0),
                cache: Default::default(),
            }),
        }
    }

    /// Adds a check. A check registered under an existing name replaces it.
    pub fn register(&self, check: Check) {
        let mut checks = self.inner.checks.write().unwrap_or_else(|e| e.into_inner());
        checks.retain(|c| c.name != check.name);
        let bits = check.probes_bits();
        checks.push(check);
        drop(checks);
        for probe in Probe::ALL {
            if bits & probe.bit() != 0 {
                self.invalidate(probe);
            }
        }
    }

    /// Removes a check by name.
    pub fn deregister(&self, name: &str) {
        self.inner
            .checks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|c| c.name != name);
        for probe in Probe::ALL {
            self.invalidate(probe);
        }
    }

    fn invalidate(&self, probe: Probe) {
        if let Ok(mut cache) = self.inner.cache[probe.index()].try_lock() {
            *cache = None;
        }
    }

    /// The current lifecycle state.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_u8(self.inner.lifecycle.load(Ordering::Acquire))
    }

    /// Marks start-up complete: readiness now reports the checks.
    pub fn mark_ready(&self) {
        // Never go back from draining to ready.
        let _ = self
            .inner
            .lifecycle
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Marks shutdown begun: readiness fails from now on.
    pub fn mark_draining(&self) {
        self.inner.lifecycle.store(2, Ordering::Release);
    }

    /// Runs (or reuses the cached results of) the checks of `probe` and builds the report.
    pub async fn report(&self, probe: Probe) -> HealthReport {
        let entries = self.check_entries(probe).await;
        let mut checks: BTreeMap<String, Vec<CheckEntry>> = BTreeMap::new();
        let mut status = Status::Pass;
        for (name, entry) in entries {
            status = status.max(entry.status);
            checks.entry(name).or_default().push(entry);
        }
        if probe != Probe::Liveness {
            let lifecycle = self.lifecycle();
            let lifecycle_status = match (probe, lifecycle) {
                (_, Lifecycle::Starting) => Status::Fail,
                (Probe::Readiness, Lifecycle::Draining) => Status::Fail,
                _ => Status::Pass,
            };
            status = status.max(lifecycle_status);
            checks.insert(
                "service:lifecycle".into(),
                vec![CheckEntry {
                    component_type: Some("system".into()),
                    observed_value: Some(lifecycle.as_str().into()),
                    observed_unit: None,
                    status: lifecycle_status,
                    time: now_rfc3339(),
                    output: match lifecycle_status {
                        Status::Fail if lifecycle == Lifecycle::Starting => {
                            Some("the service is still starting".into())
                        }
                        Status::Fail => Some("the service is shutting down".into()),
                        _ => None,
                    },
                }],
            );
        }
        HealthReport {
            status,
            version: self.inner.version.clone(),
            service_id: self.inner.service_id.clone(),
            description: format!("{} {} probe", self.inner.service_id, probe.as_str()),
            checks,
        }
    }

    async fn check_entries(&self, probe: Probe) -> Vec<(String, CheckEntry)> {
        // Holding the lock while the checks run makes concurrent probes wait for one run
        // instead of each starting their own.
        let mut cache = self.inner.cache[probe.index()].lock().await;
        if let Some(cached) = cache.as_ref()
            && cached.at.elapsed() < self.inner.config.cache_ttl
        {
            return cached.entries.clone();
        }
        let checks: Vec<Check> = self
            .inner
            .checks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|c| c.probes_bits() & probe.bit() != 0)
            .cloned()
            .collect();
        let default_timeout = self.inner.config.check_timeout;
        let runs = checks.into_iter().map(|check| async move {
            let timeout = check.timeout.unwrap_or(default_timeout);
            let result = match tokio::time::timeout(timeout, AssertUnwindSafe((check.run)()).catch_unwind()).await {
                Ok(Ok(result)) => result,
                Ok(Err(_panic)) => CheckResult::fail("the check panicked"),
                Err(_elapsed) => CheckResult::fail(format!(
                    "timed out after {}",
                    crate::config::duration::format(&timeout)
                )),
            };
            if !result.status.is_healthy() {
                tracing::warn!(check = %check.name, probe = probe.as_str(), output = result.output.as_deref().unwrap_or(""), "health check failing");
            }
            let entry = CheckEntry {
                component_type: check.component_type.clone(),
                observed_value: result.observed_value,
                observed_unit: result.observed_unit,
                status: result.status,
                time: now_rfc3339(),
                output: result.output,
            };
            (check.name, entry)
        });
        let entries = futures_util::future::join_all(runs).await;
        *cache = Some(Cached {
            at: Instant::now(),
            entries: entries.clone(),
        });
        entries
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn registry() -> HealthRegistry {
        HealthRegistry::for_service(HealthConfig::default(), "svc", "1.2.3")
    }

    #[tokio::test]
    async fn readiness_follows_the_lifecycle() {
        let registry = registry();
        let report = registry.report(Probe::Readiness).await;
        assert_eq!(report.status, Status::Fail);
        assert_eq!(
            report.check("service:lifecycle").unwrap().observed_value,
            Some("starting".into())
        );
        assert_eq!(registry.report(Probe::Startup).await.status, Status::Fail);
        assert_eq!(registry.report(Probe::Liveness).await.status, Status::Pass);

        registry.mark_ready();
        assert_eq!(registry.report(Probe::Readiness).await.status, Status::Pass);
        assert_eq!(registry.report(Probe::Startup).await.status, Status::Pass);

        registry.mark_draining();
        let report = registry.report(Probe::Readiness).await;
        assert_eq!(report.status, Status::Fail);
        assert_eq!(
            report.check("service:lifecycle").unwrap().output.as_deref(),
            Some("the service is shutting down")
        );
        assert_eq!(registry.report(Probe::Liveness).await.status, Status::Pass);
        registry.mark_ready();
        assert_eq!(registry.lifecycle(), Lifecycle::Draining, "never back from draining");
    }

    #[tokio::test]
    async fn worst_check_wins_and_checks_stay_on_their_probes() {
        let registry = registry();
        registry.mark_ready();
        registry.register(Check::new("db:connections", || async {
            CheckResult::warn("pool nearly full")
        }));
        registry.register(Check::new("loop:lag", || async { CheckResult::fail("stuck") }).probes(&[Probe::Liveness]));
        let ready = registry.report(Probe::Readiness).await;
        assert_eq!(ready.status, Status::Warn);
        assert!(ready.check("loop:lag").is_none());
        let live = registry.report(Probe::Liveness).await;
        assert_eq!(live.status, Status::Fail);
        assert!(live.check("db:connections").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_check_fails_at_its_timeout() {
        let registry = registry();
        registry.mark_ready();
        registry
            .register(Check::new("slow:ping", std::future::pending::<CheckResult>).timeout(Duration::from_millis(300)));
        let started = tokio::time::Instant::now();
        let report = registry.report(Probe::Readiness).await;
        assert_eq!(report.status, Status::Fail);
        assert_eq!(
            report.check("slow:ping").unwrap().output.as_deref(),
            Some("timed out after 300ms")
        );
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_panicking_check_fails_without_taking_the_probe_down() {
        let registry = registry();
        registry.mark_ready();
        registry.register(Check::new("bad:check", || async { panic!("boom") as CheckResult }));
        let report = registry.report(Probe::Readiness).await;
        assert_eq!(
            report.check("bad:check").unwrap().output.as_deref(),
            Some("the check panicked")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn results_are_cached_for_the_ttl() {
        let registry = registry();
        registry.mark_ready();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = runs.clone();
        registry.register(Check::new("x:y", move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { CheckResult::pass() }
        }));
        let (a, b) = tokio::join!(registry.report(Probe::Readiness), registry.report(Probe::Readiness));
        assert_eq!(a.status, Status::Pass);
        assert_eq!(b.status, Status::Pass);
        registry.report(Probe::Readiness).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "concurrent and repeated probes share one run"
        );
        tokio::time::advance(Duration::from_millis(1001)).await;
        registry.report(Probe::Readiness).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn lifecycle_changes_are_not_hidden_by_the_cache() {
        let registry = registry();
        registry.mark_ready();
        assert_eq!(registry.report(Probe::Readiness).await.status, Status::Pass);
        registry.mark_draining();
        assert_eq!(registry.report(Probe::Readiness).await.status, Status::Fail);
    }

    #[test]
    fn report_serializes_as_health_json() {
        let mut checks = BTreeMap::new();
        checks.insert(
            "db:responseTime".to_string(),
            vec![CheckEntry {
                component_type: Some("datastore".into()),
                observed_value: Some(12.into()),
                observed_unit: Some("ms".into()),
                status: Status::Pass,
                time: "2026-01-01T00:00:00.000Z".into(),
                output: None,
            }],
        );
        let report = HealthReport {
            status: Status::Pass,
            version: "1".into(),
            service_id: "svc".into(),
            description: "d".into(),
            checks,
        };
        let v = serde_json::to_value(&report).unwrap();
        assert_eq!(v["status"], "pass");
        assert_eq!(v["serviceId"], "svc");
        let entry = &v["checks"]["db:responseTime"][0];
        assert_eq!(entry["componentType"], "datastore");
        assert_eq!(entry["observedValue"], 12);
        assert_eq!(entry["observedUnit"], "ms");
        assert!(entry.get("output").is_none());
    }
}
