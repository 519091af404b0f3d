//! Installing logs, traces and metric export for the process: the subscriber, the tracer and
//! meter providers, the propagators.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt;

use super::request_span::{self, RequestSpans, ServerContextLayer};
use super::span_source::{self, SpanSource};
use super::{LogFormat, TelemetryConfig, format};
use crate::config::ServiceConfig;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter for {endpoint}: {reason}")]
    Exporter {
        /// The endpoint, or where it was read from.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
}

/// Keeps the tracer provider alive; call [`TelemetryGuard::shutdown`] on exit to flush spans.
///
/// Every service started in the process holds one on the same provider. Stopping a service
/// flushes the spans batched so far but leaves the provider running, so services started side
/// by side (tests, a one-process demo) keep tracing after one of them stops.
#[derive(Debug)]
#[must_use = "dropping the guard without shutdown() loses the spans still in the batch"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    #[cfg_attr(not(any(feature = "otlp-http", feature = "otlp-grpc")), allow(dead_code))]
    flush_timeout: std::time::Duration,
}

/// The provider installed by the first [`init`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
/// Its batch processor, when it exports.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
static BATCH: OnceLock<super::batch::BatchProcessor<super::server_span::EndedSpan>> = OnceLock::new();
/// The metrics' export, when they are exported.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
static METRICS: OnceLock<super::metric_export::MetricExport> = OnceLock::new();
/// The log records' batch processor, when they are exported.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
static LOG_BATCH: OnceLock<super::batch::BatchProcessor<super::log_export::Record>> = OnceLock::new();

impl TelemetryGuard {
    /// A guard that owns nothing (telemetry was initialized elsewhere).
    pub fn none() -> Self {
        Self {
            provider: None,
            flush_timeout: std::time::Duration::ZERO,
        }
    }

    /// `true` when this guard holds the process' tracer provider.
    pub fn owns_provider(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans and log records still batched and a last collection of the metrics,
    /// waiting at most `telemetry.flush_timeout` for all of them together: a collector that is
    /// down or hangs cannot hold the process past its shutdown budget.
    pub async fn flush(&self) {
        if self.provider.is_none() {
            return;
        }
        #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
        {
            let within = self.flush_timeout;
            // Each flush blocks its thread until the exporter answers or the time is up; they
            // run side by side.
            let spans = BATCH
                .get()
                .cloned()
                .map(|batch| tokio::task::spawn_blocking(move || ("spans", batch.flush_within(within))));
            let logs = LOG_BATCH
                .get()
                .cloned()
                .map(|batch| tokio::task::spawn_blocking(move || ("log records", batch.flush_within(within))));
            let metrics = METRICS
                .get()
                .cloned()
                .map(|export| tokio::task::spawn_blocking(move || ("metrics", export.flush_within(within))));
            for flush in [spans, logs, metrics].into_iter().flatten() {
                if let Ok((what, Err(error))) = flush.await {
                    tracing::warn!(
                        %error,
                        flush_timeout = %crate::config::duration::format(&within),
                        "the {what} still batched at shutdown could not be exported in time; they are lost"
                    );
                }
            }
        }
    }

    /// Exports the spans still batched, at shutdown. The provider itself keeps running until
    /// the process exits: other services of the process may still be tracing.
    pub async fn shutdown(self) {
        self.flush().await;
    }
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// The log filter of the installed subscriber, and the directives it was made of.
struct LogFilter {
    handle: tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    directives: std::sync::Mutex<String>,
}

static LOG_FILTER: OnceLock<LogFilter> = OnceLock::new();

/// The directives of the log filter in force (`telemetry.log_level`, `RUST_LOG`, or what
/// [`set_log_filter`] set); `None` when the chassis' subscriber is not installed.
///
/// ```
/// assert_eq!(chassis::telemetry::log_filter(), None, "nothing installed in this doctest");
/// ```
pub fn log_filter() -> Option<String> {
    let filter = LOG_FILTER.get()?;
    Some(filter.directives.lock().unwrap_or_else(|e| e.into_inner()).clone())
}

/// Replaces the log filter while the service runs (`EnvFilter` directives such as
/// `"info,chassis::messaging=debug"`); the admin endpoint `PUT /log-filter` calls it. Fails
/// with the reason when the directives do not parse, or when the chassis' subscriber is not
/// installed.
pub fn set_log_filter(directives: &str) -> Result<(), String> {
    let filter = LOG_FILTER
        .get()
        .ok_or("the chassis' logging is not installed in this process")?;
    let parsed = EnvFilter::builder()
        .parse(directives)
        .map_err(|e| format!("invalid filter directives {directives:?}: {e}"))?;
    filter
        .handle
        .reload(parsed)
        .map_err(|e| format!("the log filter could not be replaced: {e}"))?;
    *filter.directives.lock().unwrap_or_else(|e| e.into_inner()) = directives.to_owned();
    tracing::info!(filter = directives, "log filter changed");
    Ok(())
}

/// Installs logging and tracing for the process. The first call wins: later calls (a second
/// service started in the same process) keep the first configuration and share its provider.
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::telemetry::TelemetryError> {
/// let service = chassis::config::ServiceConfig::default();
/// let guard = chassis::telemetry::init(&service, &Default::default())?;
/// tracing::info!("up");
/// guard.shutdown().await;
/// # Ok(()) }
/// ```
pub fn init(service: &ServiceConfig, config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    if INSTALLED.get().is_some() {
        return Ok(TelemetryGuard {
            provider: PROVIDER.get().cloned(),
            flush_timeout: config.flush_timeout,
        });
    }
    let resource = resource(service);
    let (provider, exporting) = build_provider(resource.clone(), config)?;
    let tracer = provider.tracer("chassis");

    let log_directives = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => directives,
        _ => config.log_level.clone(),
    };
    // Reloadable: the admin endpoint `/log-filter` changes it while the service runs.
    let (log_filter, log_handle) =
        tracing_subscriber::reload::Layer::new(EnvFilter::builder().parse_lossy(&log_directives));
    let trace_filter = EnvFilter::builder().parse_lossy(&config.trace_level);
    let slot = format::DispatchSlot::default();
    let fmt_layer = match config.log_format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .event_format(format::TextFormat::new(ansi, slot.clone()))
                .boxed()
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .event_format(format::JsonWithTraceIds::new(slot.clone()))
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .boxed(),
    };
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    let metric_export = build_metric_export(exporting, resource.clone(), config)?;
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    let fmt_layer = fmt_layer.and_then(log_bridge(exporting, resource, config)?);
    #[cfg(not(any(feature = "otlp-http", feature = "otlp-grpc")))]
    let _ = resource;
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        // Busy/idle time per span costs two clock reads per poll and is rarely looked at.
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_target(false);

    span_source::set_server_spans(server_spans_enabled(&config.trace_level));
    // The inbound layer builds server spans with the OpenTelemetry API; its `tracing` span is
    // for log lines only.
    // Static filters (targets and levels only): each callsite's interest is decided once, so
    // a disabled event or span costs nothing per hit.
    let not_server_span = tracing_subscriber::filter::Targets::new()
        .with_default(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_target(
            request_span::SERVER_SPAN_TARGET,
            tracing_subscriber::filter::LevelFilter::OFF,
        );
    let dispatch = tracing::Dispatch::new(RequestSpans::new(
        tracing_subscriber::registry()
            .with(fmt_layer.with_filter(log_filter))
            .with(otel_layer.with_filter(trace_filter.and(not_server_span)))
            .with(ServerContextLayer.with_filter(ServerContextLayer::filter())),
    ));
    let _ = slot.set(dispatch.downgrade());
    let installed = tracing::dispatcher::set_global_default(dispatch).is_ok();
    // Request spans are made on demand only where `Span::current()` can make them: under this
    // subscriber, installed for the whole process.
    request_span::set_lazy_request_spans(installed);
    let _ = INSTALLED.set(());
    if installed {
        let _ = LOG_FILTER.set(LogFilter {
            handle: log_handle,
            directives: std::sync::Mutex::new(log_directives),
        });
    }
    if !installed {
        // Someone else owns the global subscriber; our provider would never see a span.
        let _ = provider.shutdown();
        return Ok(TelemetryGuard::none());
    }
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    if let Some(export) = metric_export {
        let _ = METRICS.set(export);
    }
    opentelemetry::global::set_text_map_propagator(super::propagation::composite_propagator());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = PROVIDER.set(provider.clone());
    let sampling = span_source::Sampling::new(config.sampling_ratio);
    span_source::set_span_source(match exporting {
        #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
        true => match BATCH.get() {
            Some(batch) => SpanSource::Recorded {
                spans: super::server_span::ServerSpans::new(batch),
                sampling,
            },
            None => SpanSource::Propagated(sampling),
        },
        _ => SpanSource::Propagated(sampling),
    });
    Ok(TelemetryGuard {
        provider: Some(provider),
        flush_timeout: config.flush_timeout,
    })
}

/// Whether `trace_level` lets INFO spans of the inbound layer through, asked of an `EnvFilter`
/// of those directives in a subscriber of its own.
fn server_spans_enabled(trace_level: &str) -> bool {
    let filter = EnvFilter::builder().parse_lossy(trace_level);
    let probe = tracing_subscriber::registry().with(filter);
    tracing::subscriber::with_default(
        probe,
        || tracing::enabled!(target: request_span::SERVER_SPAN_TARGET, tracing::Level::INFO),
    )
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

fn sampler(config: &TelemetryConfig) -> Sampler {
    span_source::Sampling::sampler(config.sampling_ratio)
}

/// The resource of every signal the service exports.
fn resource(service: &ServiceConfig) -> Resource {
    // `service.name` already is OTEL_SERVICE_NAME when that is set: one name for every signal.
    Resource::builder()
        .with_service_name(service.name.clone())
        .with_attributes([
            KeyValue::new("service.version", service.version.clone()),
            KeyValue::new("service.instance.id", service.instance_id()),
            KeyValue::new("deployment.environment.name", service.environment.clone()),
        ])
        .build()
}

/// The export of the process' metrics, when metrics go over OTLP; the runtime attaches the
/// metrics recorder to its meter.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
pub(crate) fn metric_export() -> Option<super::metric_export::MetricExport> {
    METRICS.get().cloned()
}

/// Whether the variable `name` is set to `none` (an `OTEL_*_EXPORTER` switched off).
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
fn switched_off(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"))
}

/// The export of metrics, when spans are exported (`exporting`), and `telemetry.otlp.metrics` is
/// on and `OTEL_METRICS_EXPORTER` is not `none`.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
fn build_metric_export(
    exporting: bool,
    resource: Resource,
    config: &TelemetryConfig,
) -> Result<Option<super::metric_export::MetricExport>, TelemetryError> {
    use opentelemetry_sdk::metrics::Temporality;
    if !exporting || !config.otlp.metrics || switched_off("OTEL_METRICS_EXPORTER") {
        return Ok(None);
    }
    let temporality = match std::env::var("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
        .as_str()
    {
        "delta" => Temporality::Delta,
        "lowmemory" => Temporality::LowMemory,
        _ => Temporality::Cumulative,
    };
    let interval = std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(config.otlp.metrics_interval, std::time::Duration::from_millis);
    let exporter = super::exporter::metrics(&config.otlp, temporality)?;
    Ok(Some(super::metric_export::MetricExport::start(
        exporter,
        resource,
        temporality,
        interval,
        endpoint_name(&config.otlp),
        &config.otlp,
    )))
}

/// The collector's address in log lines.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
fn endpoint_name(config: &super::OtlpConfig) -> String {
    config
        .endpoint
        .clone()
        .unwrap_or_else(|| "the endpoint of OTEL_EXPORTER_OTLP_*".into())
}

/// The layer that exports log records over OTLP, when spans are exported (`exporting`), and
/// `telemetry.otlp.logs` is on and `OTEL_LOGS_EXPORTER` is not `none`.
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
fn log_bridge(
    exporting: bool,
    resource: Resource,
    config: &TelemetryConfig,
) -> Result<
    Option<
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge<
            opentelemetry_sdk::logs::SdkLoggerProvider,
            opentelemetry_sdk::logs::SdkLogger,
        >,
    >,
    TelemetryError,
> {
    if !exporting || !config.otlp.logs || switched_off("OTEL_LOGS_EXPORTER") {
        return Ok(None);
    }
    let exporter = super::exporter::logs(&config.otlp)?;
    let batch = super::batch::BatchProcessor::new(
        super::log_export::Logs(exporter),
        endpoint_name(&config.otlp),
        &config.otlp,
    );
    let _ = LOG_BATCH.set(batch.clone());
    let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
        .with_resource(resource)
        .with_log_processor(batch)
        .build();
    Ok(Some(
        opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge::new(&provider),
    ))
}

/// The provider, and whether it exports.
fn build_provider(resource: Resource, config: &TelemetryConfig) -> Result<(SdkTracerProvider, bool), TelemetryError> {
    let builder = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler(config));

    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let wanted = config.otlp.endpoint.is_some()
        || env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
        || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    if disabled || !wanted {
        return Ok((builder.build(), false));
    }
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    {
        let endpoint = endpoint_name(&config.otlp);
        let batch = match config.otlp.protocol {
            // Encoded straight from the spans; see `otlp_encode`.
            #[cfg(feature = "otlp-http")]
            super::OtlpProtocol::HttpProtobuf => super::batch::BatchProcessor::new(
                super::http_spans::HttpSpans::new(&config.otlp)?,
                endpoint,
                &config.otlp,
            ),
            #[allow(unreachable_patterns)]
            _ => {
                let exporter = super::batch::Spans(super::exporter::spans(&config.otlp)?);
                super::batch::BatchProcessor::new(exporter, endpoint, &config.otlp)
            }
        };
        let _ = BATCH.set(batch.clone());
        Ok((builder.with_span_processor(batch).build(), true))
    }
    #[cfg(not(any(feature = "otlp-http", feature = "otlp-grpc")))]
    Err(TelemetryError::Exporter {
        endpoint: config
            .otlp
            .endpoint
            .clone()
            .unwrap_or_else(|| "OTEL_EXPORTER_OTLP_*".into()),
        reason: "no OTLP protocol is compiled in: enable the chassis feature `otlp-http` or `otlp-grpc`".into(),
    })
}
