//! The registry behind the probes: checks, their cached results, and the service's lifecycle.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use futures_util::FutureExt;
use tokio::time::Instant;

use super::{Check, CheckEntry, CheckResult, HealthConfig, HealthReport, Lifecycle, Probe, Status};

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
    use std::time::Duration;

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
