//! Logs and traces: the tracing subscriber, the OpenTelemetry tracer provider with OTLP export,
//! W3C propagation, the inbound [`TraceLayer`] and the [`RequestIdLayer`].
//!
//! [`init`] installs, once per process:
//!
//! - a `tracing-subscriber` registry with an `EnvFilter` for logs (`telemetry.log_level`,
//!   overridden by `RUST_LOG`), printing text or JSON lines; every line written inside a traced
//!   span carries `trace_id` and `span_id`;
//! - a tracing-opentelemetry layer (filtered by `telemetry.trace_level`, independent of the log
//!   level) over an SDK tracer provider with the resource `service.name`, `service.version` and
//!   `deployment.environment.name`, a parent-based ratio sampler, and batch export over OTLP
//!   (HTTP/protobuf with the `otlp-http` feature, gRPC with `otlp-grpc`);
//! - the W3C TraceContext and Baggage propagators as the global propagator.
//!
//! Export is off unless `telemetry.otlp.endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; trace ids are still generated and propagated so
//! logs correlate. `OTEL_SDK_DISABLED=true` turns export off, `OTEL_SERVICE_NAME` overrides the
//! service name in the resource.

mod format;
mod propagation;
mod request_id;
mod trace_layer;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt as _;
use tracing_subscriber::layer::SubscriberExt;

pub use propagation::{HeaderExtractor, HeaderInjector, extract_context, inject_context, propagator};
pub use request_id::{REQUEST_ID_HEADER, RequestId, RequestIdLayer, SetRequestId};
pub use trace_layer::{TraceFuture, TraceLayer, TraceService};

use crate::config::{Problems, ServiceConfig};

/// `[telemetry]`: logs and traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TelemetryConfig {
    /// `telemetry.log_level`: `EnvFilter` directives for logs. Default `"info"`. `RUST_LOG`, when
    /// set, wins.
    pub log_level: String,
    /// `telemetry.log_format`: `"text"` (default) or `"json"` (one object per line).
    pub log_format: LogFormat,
    /// `telemetry.trace_level`: `EnvFilter` directives for spans sent to OpenTelemetry,
    /// independent of the log level. Default `"info"`.
    pub trace_level: String,
    /// `telemetry.access_log`: log one line per request at INFO (target `chassis::access`).
    /// Default `false`: request metrics and spans already record every request, and a log line
    /// costs more than both.
    pub access_log: bool,
    /// `telemetry.sampling_ratio`: fraction of new traces sampled, 0.0 to 1.0. Default `1.0`.
    /// Requests with a sampled parent follow the parent's decision.
    pub sampling_ratio: f64,
    /// `[telemetry.otlp]`: trace export.
    pub otlp: OtlpConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            trace_level: "info".into(),
            access_log: false,
            sampling_ratio: 1.0,
            otlp: OtlpConfig::default(),
        }
    }
}

impl TelemetryConfig {
    pub(crate) fn validate(&self, problems: &mut Problems) {
        problems.check(
            (0.0..=1.0).contains(&self.sampling_ratio),
            "telemetry.sampling_ratio",
            format!("must be between 0.0 and 1.0, got {}", self.sampling_ratio),
        );
        if let Err(e) = EnvFilter::builder().parse(&self.log_level) {
            problems.push(
                "telemetry.log_level",
                format!("invalid filter {:?}: {e}", self.log_level),
            );
        }
        if let Err(e) = EnvFilter::builder().parse(&self.trace_level) {
            problems.push(
                "telemetry.trace_level",
                format!("invalid filter {:?}: {e}", self.trace_level),
            );
        }
        if let Some(endpoint) = &self.otlp.endpoint {
            problems.check(
                endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                "telemetry.otlp.endpoint",
                format!("{endpoint:?} must start with http:// or https://"),
            );
            problems.check(
                endpoint.parse::<http::Uri>().is_ok(),
                "telemetry.otlp.endpoint",
                format!("{endpoint:?} is not a valid URL"),
            );
        }
        problems.check(
            !self.otlp.timeout.is_zero(),
            "telemetry.otlp.timeout",
            "must be greater than zero",
        );
        #[cfg(not(feature = "otlp-grpc"))]
        problems.check(
            self.otlp.protocol != OtlpProtocol::Grpc,
            "telemetry.otlp.protocol",
            "\"grpc\" needs the chassis cargo feature `otlp-grpc`",
        );
        #[cfg(not(feature = "otlp-http"))]
        problems.check(
            self.otlp.protocol != OtlpProtocol::HttpProtobuf || self.otlp.endpoint.is_none(),
            "telemetry.otlp.protocol",
            "\"http/protobuf\" needs the chassis cargo feature `otlp-http`",
        );
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[telemetry.otlp]`: where traces go.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct OtlpConfig {
    /// `telemetry.otlp.endpoint`: the collector's base URL, e.g. `"http://otel-collector:4318"`
    /// (HTTP; `/v1/traces` is appended) or `"http://otel-collector:4317"` (gRPC). No default:
    /// when unset, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` are used,
    /// and without those nothing is exported.
    pub endpoint: Option<String>,
    /// `telemetry.otlp.protocol`: `"http/protobuf"` (default) or `"grpc"`.
    pub protocol: OtlpProtocol,
    /// `telemetry.otlp.timeout`: export timeout. Default `"10s"` (the OTLP default).
    #[serde(with = "crate::config::duration")]
    pub timeout: Duration,
    /// `telemetry.otlp.headers`: extra headers, e.g. an API key for a hosted backend.
    pub headers: BTreeMap<String, String>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
        }
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// OTLP over HTTP with protobuf bodies (port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// OTLP over gRPC (port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP trace exporter for {endpoint}: {reason}")]
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
}

/// The provider installed by the first [`init`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

impl TelemetryGuard {
    /// A guard that owns nothing (telemetry was initialized elsewhere).
    pub fn none() -> Self {
        Self { provider: None }
    }

    /// `true` when this guard holds the process' tracer provider.
    pub fn owns_provider(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still batched.
    pub async fn flush(&self) {
        if let Some(provider) = self.provider.clone() {
            // The SDK's flush blocks the calling thread until the exporter answers.
            let result = tokio::task::spawn_blocking(move || provider.force_flush()).await;
            if let Ok(Err(e)) = result {
                eprintln!("telemetry: flushing spans failed: {e}");
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

/// Installs logging and tracing for the process. The first call wins: later calls (a second
/// service started in the same process) keep the first configuration and share its provider.
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::telemetry::TelemetryError> {
/// let config = chassis::config::ConfigLoader::new().load::<()>().unwrap();
/// let guard = chassis::telemetry::init(&config.chassis.service, &config.chassis.telemetry)?;
/// tracing::info!("up");
/// guard.shutdown().await;
/// # Ok(()) }
/// ```
pub fn init(service: &ServiceConfig, config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    if INSTALLED.get().is_some() {
        return Ok(TelemetryGuard {
            provider: PROVIDER.get().cloned(),
        });
    }
    let (provider, exporting) = build_provider(service, config)?;
    let tracer = provider.tracer("chassis");

    let log_filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::builder().parse_lossy(directives),
        _ => EnvFilter::builder().parse_lossy(&config.log_level),
    };
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
    let otel_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        // Busy/idle time per span costs two clock reads per poll and is rarely looked at.
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_target(false);

    trace_layer::set_server_spans(server_spans_enabled(&config.trace_level));
    // The inbound layer builds server spans with the OpenTelemetry API; its `tracing` span is
    // for log lines only.
    // Static filters (targets and levels only): each callsite's interest is decided once, so
    // a disabled event or span costs nothing per hit.
    let not_server_span = tracing_subscriber::filter::Targets::new()
        .with_default(tracing_subscriber::filter::LevelFilter::TRACE)
        .with_target(
            trace_layer::SERVER_SPAN_TARGET,
            tracing_subscriber::filter::LevelFilter::OFF,
        );
    let dispatch = tracing::Dispatch::new(trace_layer::RequestSpans::new(
        tracing_subscriber::registry()
            .with(fmt_layer.with_filter(log_filter))
            .with(otel_layer.with_filter(trace_filter.and(not_server_span)))
            .with(trace_layer::ServerContextLayer.with_filter(trace_layer::ServerContextLayer::filter())),
    ));
    let _ = slot.set(dispatch.downgrade());
    let installed = tracing::dispatcher::set_global_default(dispatch).is_ok();
    // Request spans are made on demand only where `Span::current()` can make them: under this
    // subscriber, installed for the whole process.
    trace_layer::set_lazy_request_spans(installed);
    let _ = INSTALLED.set(());
    if !installed {
        // Someone else owns the global subscriber; our provider would never see a span.
        let _ = provider.shutdown();
        return Ok(TelemetryGuard::none());
    }
    opentelemetry::global::set_text_map_propagator(composite_propagator());
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = PROVIDER.set(provider.clone());
    trace_layer::set_span_source(match exporting {
        true => trace_layer::SpanSource::Recorded(provider.tracer("chassis")),
        false => trace_layer::SpanSource::Propagated(sampler(config)),
    });
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// Whether `trace_level` lets INFO spans of the inbound layer through, asked of an `EnvFilter`
/// of those directives in a subscriber of its own.
fn server_spans_enabled(trace_level: &str) -> bool {
    let filter = EnvFilter::builder().parse_lossy(trace_level);
    let probe = tracing_subscriber::registry().with(filter);
    tracing::subscriber::with_default(
        probe,
        || tracing::enabled!(target: trace_layer::SERVER_SPAN_TARGET, tracing::Level::INFO),
    )
}

pub(crate) fn composite_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

fn sampler(config: &TelemetryConfig) -> Sampler {
    Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sampling_ratio)))
}

/// The provider, and whether it exports.
fn build_provider(
    service: &ServiceConfig,
    config: &TelemetryConfig,
) -> Result<(SdkTracerProvider, bool), TelemetryError> {
    let mut resource = Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(service.name.clone());
    }
    let resource = resource
        .with_attributes([
            KeyValue::new("service.version", service.version.clone()),
            KeyValue::new("deployment.environment.name", service.environment.clone()),
        ])
        .build();
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
    let exporter = exporter::build(&config.otlp)?;
    Ok((builder.with_batch_exporter(exporter).build(), true))
}

mod exporter {
    use super::*;
    #[allow(unused_imports)]
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};

    fn describe(config: &OtlpConfig) -> String {
        config
            .endpoint
            .clone()
            .unwrap_or_else(|| "the endpoint from OTEL_EXPORTER_OTLP_*".into())
    }

    pub(super) fn build(config: &OtlpConfig) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
        let error = |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter {
            endpoint: describe(config),
            reason: e.to_string(),
        };
        match config.protocol {
            #[cfg(feature = "otlp-http")]
            OtlpProtocol::HttpProtobuf => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(config.timeout)
                    .with_headers(config.headers.clone().into_iter().collect());
                if let Some(endpoint) = &config.endpoint {
                    // Like OTEL_EXPORTER_OTLP_ENDPOINT, the configured URL is the collector's
                    // base; the signal path is ours to add.
                    builder = builder.with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')));
                }
                builder.build().map_err(error)
            }
            #[cfg(feature = "otlp-grpc")]
            OtlpProtocol::Grpc => {
                use opentelemetry_otlp::WithTonicConfig;
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (key, value) in &config.headers {
                    if let (Ok(k), Ok(v)) = (
                        key.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
                        value.parse(),
                    ) {
                        metadata.insert(k, v);
                    }
                }
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_timeout(config.timeout)
                    .with_metadata(metadata);
                if let Some(endpoint) = &config.endpoint {
                    builder = builder.with_endpoint(endpoint.clone());
                }
                builder.build().map_err(error)
            }
            #[allow(unreachable_patterns)]
            _ => Err(TelemetryError::Exporter {
                endpoint: describe(config),
                reason: "this OTLP protocol is not compiled in (chassis features `otlp-http` / `otlp-grpc`)".into(),
            }),
        }
    }
}
