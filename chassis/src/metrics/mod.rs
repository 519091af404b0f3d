//! Prometheus metrics: the recorder, the `/metrics` exposition and the HTTP RED layer.
//!
//! [`install`] sets a [`metrics`] recorder from metrics-exporter-prometheus as the process'
//! global recorder (once per process) with histogram buckets for every `*_seconds` metric, and
//! registers the `chassis_build_info` gauge. The exposition is rendered by the admin
//! listener's `/metrics`; there is no second HTTP server.
//!
//! Any code in the service can record with the [`metrics`] macros and the series appear on the
//! same endpoint.
//!
//! When telemetry exports over OTLP (an endpoint set, `telemetry.otlp.metrics` on), the
//! runtime attaches the recorder to the OpenTelemetry meter before the service takes requests:
//! from then on every series is also an OpenTelemetry instrument, under the semantic
//! conventions' name where it has one (`http.server.request.duration`), and the process and
//! runtime metrics are observed at each collection. See docs/src/metrics.md, "Over OTLP".
//!
//! | series | type | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | histogram | `http_request_method`, `http_route`, `http_response_status_code` |
//! | `http_server_active_requests` | gauge | `http_request_method` |
//! | `chassis_build_info` | gauge (always 1) | `service`, `version`, `chassis_version` |
//! | `process_*` | see the `metrics-process` crate | |

mod exemplars;
pub mod http_metrics;
#[cfg_attr(not(any(feature = "otlp-http", feature = "otlp-grpc")), allow(dead_code))]
mod openmetrics;
mod otel;
mod process;
mod recorder;
mod runtime;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;

pub use http_metrics::{HttpMetrics, HttpMetricsLayer};
pub use openmetrics::OPENMETRICS_TEXT;

use crate::config::{Problems, ServiceConfig, Validate};

/// Name of the request duration histogram.
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http_server_request_duration_seconds";
/// Name of the in-flight requests gauge.
pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http_server_active_requests";
/// Name of the build info gauge.
pub const BUILD_INFO: &str = "chassis_build_info";

/// The OpenTelemetry semantic conventions' recommended buckets for HTTP durations, in seconds.
pub const DEFAULT_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// `[metrics]`: the recorder and the HTTP metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// `metrics.enabled`: install the recorder, the HTTP layer and `/metrics`. Default `true`.
    pub enabled: bool,
    /// `metrics.process`: also export the `process_*` metrics (CPU, memory, open fds, threads;
    /// Linux) and the tokio runtime's (`tokio_*`: workers, live tasks, queue depth, busy time).
    /// Default `true`.
    pub process: bool,
    /// `metrics.duration_buckets`: bucket bounds, in seconds, for every histogram whose name ends
    /// in `_seconds`. Default: the OpenTelemetry HTTP recommendation,
    /// `[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]`.
    pub duration_buckets: Vec<f64>,
    /// `metrics.upkeep_interval`: how often histogram samples are folded into their buckets
    /// between scrapes. Default `"5s"`. The recorder keeps each sample until then, so without
    /// it an unscraped service would hold every sample it ever recorded.
    #[serde(with = "crate::config::duration")]
    pub upkeep_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            process: true,
            duration_buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            upkeep_interval: Duration::from_secs(5),
        }
    }
}

impl Validate for MetricsConfig {
    fn validate(&self, problems: &mut Problems) {
        let buckets = &self.duration_buckets;
        problems.check(
            !buckets.is_empty()
                && buckets.iter().all(|b| b.is_finite() && *b > 0.0)
                && buckets.windows(2).all(|w| w[0] < w[1]),
            "duration_buckets",
            "must be a non-empty list of positive numbers in increasing order",
        );
        problems.check(
            !self.upkeep_interval.is_zero(),
            "upkeep_interval",
            "must be longer than zero, e.g. \"5s\"",
        );
    }
}

/// Why metrics could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Another global `metrics` recorder was installed before the chassis'.
    #[error(
        "another global metrics recorder is already installed; the chassis needs its own to serve /metrics (disable it with metrics.enabled = false)"
    )]
    RecorderTaken,
    /// The bucket configuration was rejected.
    #[error("invalid histogram buckets: {0}")]
    Buckets(String),
}

/// A metric read when it is collected rather than recorded as things happen: name, type
/// (`counter` or `gauge`), help text, value.
type Reading = (&'static str, &'static str, &'static str, f64);

/// Renders the Prometheus exposition of everything recorded in this process.
#[derive(Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    process: bool,
    hooks: std::sync::Arc<std::sync::Mutex<Vec<ScrapeHook>>>,
}

type ScrapeHook = Box<dyn Fn() + Send + Sync>;

impl std::fmt::Debug for MetricsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsHandle").field("process", &self.process).finish()
    }
}

impl MetricsHandle {
    /// Runs `hook` before every scrape: for gauges read from something else (a pool's size)
    /// rather than recorded as things happen.
    ///
    /// ```
    /// let handle = chassis::metrics::install(&Default::default(), &Default::default()).unwrap();
    /// handle.on_scrape(|| metrics::gauge!("queue_length").set(3.0));
    /// assert!(handle.render().contains("queue_length 3"));
    /// ```
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    /// Runs the [`on_scrape`](Self::on_scrape) hooks: before a scrape, and before each
    /// collection for OTLP export.
    pub(crate) fn run_hooks(&self) {
        for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook();
        }
    }

    /// Sends everything recorded from now on to OpenTelemetry instruments of `meter` too (OTLP
    /// export, next to `/metrics`), with the process and runtime metrics of `runtime` observed
    /// at each collection. The first call in a process wins; `false` for the others.
    ///
    /// The runtime calls it before the service takes requests: series whose handles were
    /// registered earlier and kept stay on `/metrics` only.
    #[cfg_attr(not(any(feature = "otlp-http", feature = "otlp-grpc")), allow(dead_code))]
    pub(crate) fn export_to(
        &self,
        meter: opentelemetry::metrics::Meter,
        runtime: Option<tokio::runtime::Handle>,
        service: &ServiceConfig,
    ) -> bool {
        let Some(recorder) = RECORDER.get() else {
            return false;
        };
        let attached = recorder.attach(otel::Instruments::new(
            meter,
            recorder.exemplars().bounds().to_vec(),
            self.process,
            runtime,
        ));
        if attached {
            // Registered before the export was: once more, so that it is exported too.
            record_build_info(service);
        }
        attached
    }

    /// The OpenMetrics exposition (1.0.0, [`OPENMETRICS_TEXT`]) of what [`render`](Self::render)
    /// shows, with exemplars: each bucket of a `*_seconds` histogram carries the trace and span
    /// ids of its latest sample recorded in a sampled trace. Exemplars are kept from the first
    /// call on, so a service nobody scrapes this way pays nothing for them.
    ///
    /// ```
    /// let handle = chassis::metrics::install(&Default::default(), &Default::default()).unwrap();
    /// metrics::counter!("jobs_total").increment(1);
    /// let text = handle.render_openmetrics();
    /// assert!(text.contains("# TYPE jobs counter\njobs_total 1\n"));
    /// assert!(text.ends_with("# EOF\n"));
    /// ```
    pub fn render_openmetrics(&self) -> String {
        exemplars::want();
        let text = self.render();
        match RECORDER.get() {
            Some(recorder) => openmetrics::convert(&text, recorder.exemplars()),
            // Not reached: a handle is made once the recorder is installed.
            None => openmetrics::convert(&text, &exemplars::Exemplars::new(&[])),
        }
    }

    /// Whether an `Accept` header asks for OpenMetrics rather than the Prometheus text.
    ///
    /// ```
    /// use chassis::metrics::MetricsHandle;
    ///
    /// // What Prometheus sends by default.
    /// assert!(MetricsHandle::wants_openmetrics(
    ///     "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    /// ));
    /// assert!(!MetricsHandle::wants_openmetrics("text/plain;version=0.0.4"));
    /// ```
    pub fn wants_openmetrics(accept: &str) -> bool {
        openmetrics::asked_for(accept)
    }

    /// The text exposition format (version 0.0.4): what the service recorded, the process
    /// (`process_*`, with `metrics.process`) and the tokio runtime it runs on (`tokio_*`).
    pub fn render(&self) -> String {
        self.run_hooks();
        // Rendering folds in the histogram samples recorded since the last upkeep.
        let mut text = self.prometheus.render();
        if self.process {
            text.push_str(&process::render());
            text.push_str(&runtime::render());
        }
        text
    }
}

static INSTALLED: OnceLock<MetricsHandle> = OnceLock::new();
/// The process' global recorder, once installed.
static RECORDER: OnceLock<recorder::ChassisRecorder> = OnceLock::new();

/// Installs the Prometheus recorder as the global [`metrics`] recorder and records
/// `chassis_build_info`. The first call configures the recorder; later calls in the same process
/// return the same handle (and add their own build info).
///
/// ```
/// let handle = chassis::metrics::install(&Default::default(), &Default::default()).unwrap();
/// metrics::counter!("orders_placed_total").increment(1);
/// assert!(handle.render().contains("orders_placed_total 1"));
/// ```
pub fn install(config: &MetricsConfig, service: &ServiceConfig) -> Result<MetricsHandle, MetricsError> {
    // Two services starting at once (tests) must not both try to install.
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    let handle = match INSTALLED.get() {
        Some(handle) => handle.clone(),
        None => {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &config.duration_buckets)
                .map_err(|e| MetricsError::Buckets(e.to_string()))?
                .build_recorder();
            let prometheus = recorder.handle();
            if RECORDER
                .set(recorder::ChassisRecorder::new(recorder, &config.duration_buckets))
                .is_err()
            {
                return Err(MetricsError::RecorderTaken);
            }
            let ours = RECORDER.get().expect("set just above");
            metrics::set_global_recorder(ours).map_err(|_| MetricsError::RecorderTaken)?;
            spawn_upkeep(prometheus.clone(), config.upkeep_interval);
            describe();
            let handle = MetricsHandle {
                prometheus,
                process: config.process,
                hooks: Default::default(),
            };
            INSTALLED.get_or_init(|| handle).clone()
        }
    };
    record_build_info(service);
    Ok(handle)
}

fn record_build_info(service: &ServiceConfig) {
    metrics::gauge!(
        BUILD_INFO,
        "service" => service.name.clone(),
        "version" => service.version.clone(),
        "chassis_version" => env!("CARGO_PKG_VERSION"),
    )
    .set(1.0);
}

/// Name of the thread that folds histogram samples into buckets between scrapes.
// At most 15 characters: Linux keeps no more of a thread's name.
const UPKEEP_THREAD: &str = "metrics-upkeep";

/// Folds histogram samples into their buckets every `interval`, for the life of the process
/// (as long as the global recorder). A thread, not a task: the recorder is installed once per
/// process and outlives any runtime.
fn spawn_upkeep(prometheus: PrometheusHandle, interval: Duration) {
    let spawned = std::thread::Builder::new().name(UPKEEP_THREAD.into()).spawn(move || {
        loop {
            std::thread::sleep(interval);
            prometheus.run_upkeep();
        }
    });
    if let Err(error) = spawned {
        // Scrapes still fold the samples; only an unscraped process keeps them longer.
        tracing::warn!(%error, "could not start the metrics upkeep thread");
    }
}

fn describe() {
    metrics::describe_histogram!(
        HTTP_SERVER_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP server requests."
    );
    metrics::describe_gauge!(HTTP_SERVER_ACTIVE_REQUESTS, "Number of HTTP server requests in flight.");
    metrics::describe_gauge!(BUILD_INFO, "Build information of the service; always 1.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn histogram_samples_are_folded_on_a_thread_of_their_own() {
        install(&MetricsConfig::default(), &ServiceConfig::default()).unwrap();
        let threads = || -> Vec<String> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                // Other tests' threads come and go while this reads.
                .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
                .map(|name| name.trim_end().to_owned())
                .collect()
        };
        // A new thread names itself once it runs; until then it shows its parent's name.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut found = threads();
        while !found.iter().any(|name| name == UPKEEP_THREAD) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
            found = threads();
        }
        assert_eq!(
            found.iter().filter(|name| *name == UPKEEP_THREAD).count(),
            1,
            "one upkeep thread per process, found {found:?}"
        );
    }

    #[test]
    fn a_zero_upkeep_interval_is_refused() {
        let config = MetricsConfig {
            upkeep_interval: Duration::ZERO,
            ..Default::default()
        };
        let error = crate::config::validate("metrics", &config).unwrap_err().to_string();
        assert!(error.contains("metrics.upkeep_interval"), "{error}");
    }
}
