//! Logs and traces: the tracing subscriber, the OpenTelemetry tracer provider with OTLP export,
//! W3C propagation, the inbound [`TraceLayer`] and the [`SetRequestIdLayer`].
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
//! With export on, log records go over OTLP too (`telemetry.otlp.logs`, default on), with the
//! trace and span ids of where they were logged, counted in [`LOG_RECORDS_TOTAL`]; and so do
//! metrics (`telemetry.otlp.metrics`, default on): the runtime attaches the metrics recorder to
//! the meter provider built here, collected every `telemetry.otlp.metrics_interval` and
//! counted in [`METRIC_COLLECTIONS_TOTAL`].
//!
//! Export is off unless `telemetry.otlp.endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; trace ids are still generated and propagated so
//! logs correlate. `OTEL_SDK_DISABLED=true` turns export off, `OTEL_SERVICE_NAME` overrides the
//! service name in the resource.

#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
mod batch;
mod config;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
mod exporter;
mod format;
#[cfg(feature = "otlp-http")]
mod http_spans;
mod init;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
mod log_export;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
mod metric_export;
#[cfg(feature = "otlp-http")]
mod otlp_encode;
mod propagation;
pub mod request_id;
mod request_span;
mod route_names;
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
mod server_span;
mod span_source;
pub mod trace;

#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
pub use batch::{LOG_RECORDS_TOTAL, METRIC_COLLECTIONS_TOTAL, SPANS_TOTAL};
pub use config::{LogFormat, OtlpConfig, OtlpProtocol, TelemetryConfig};
#[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
pub(crate) use init::metric_export;
pub use init::{TelemetryError, TelemetryGuard, init, log_filter, set_log_filter};
pub use propagation::{HeaderExtractor, HeaderInjector, extract_context, inject_context, propagator};
pub use request_id::{REQUEST_ID_HEADER, RequestId, SetRequestId, SetRequestIdLayer};
pub use trace::{Trace, TraceLayer};

/// HELP and units for the metrics of this module.
pub(crate) fn describe_metrics() {
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    batch::describe_metrics();
}
