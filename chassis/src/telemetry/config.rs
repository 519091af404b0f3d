//! `[telemetry]`: logs, traces and their export.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

use crate::config::{Problems, Validate};

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
    /// `telemetry.flush_timeout`: how long shutdown waits for the spans still batched to be
    /// exported; a collector that is down or hangs costs no more. Default `"3s"`: with
    /// `shutdown.readiness_delay` (5 s) and `shutdown.grace_period` (20 s) a shutdown ends within
    /// 28 s, inside Kubernetes' default 30 s.
    #[serde(with = "crate::config::duration")]
    pub flush_timeout: Duration,
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
            flush_timeout: Duration::from_secs(3),
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(
            (0.0..=1.0).contains(&self.sampling_ratio),
            "sampling_ratio",
            format!("must be between 0.0 and 1.0, got {}", self.sampling_ratio),
        );
        if let Err(e) = EnvFilter::builder().parse(&self.log_level) {
            problems.push("log_level", format!("invalid filter {:?}: {e}", self.log_level));
        }
        if let Err(e) = EnvFilter::builder().parse(&self.trace_level) {
            problems.push("trace_level", format!("invalid filter {:?}: {e}", self.trace_level));
        }
        if let Some(endpoint) = &self.otlp.endpoint {
            problems.check(
                endpoint.starts_with("http://") || endpoint.starts_with("https://"),
                "otlp.endpoint",
                format!("{endpoint:?} must start with http:// or https://"),
            );
            problems.check(
                endpoint.parse::<http::Uri>().is_ok(),
                "otlp.endpoint",
                format!("{endpoint:?} is not a valid URL"),
            );
        }
        problems.check(
            !self.otlp.timeout.is_zero(),
            "otlp.timeout",
            "must be greater than zero",
        );
        problems.check(
            !self.otlp.batch_delay.is_zero(),
            "otlp.batch_delay",
            "must be greater than zero",
        );
        problems.check(
            self.otlp.max_batch_size > 0,
            "otlp.max_batch_size",
            "must be at least 1",
        );
        problems.check(
            self.otlp.max_queue_size > self.otlp.max_batch_size,
            "otlp.max_queue_size",
            format!("must be larger than otlp.max_batch_size ({})", self.otlp.max_batch_size),
        );
        problems.check(
            !self.otlp.metrics_interval.is_zero(),
            "otlp.metrics_interval",
            "must be greater than zero, e.g. \"60s\"",
        );
        problems.check(
            !self.flush_timeout.is_zero(),
            "flush_timeout",
            "must be greater than zero",
        );
        #[cfg(not(feature = "otlp-grpc"))]
        problems.check(
            self.otlp.protocol != OtlpProtocol::Grpc,
            "otlp.protocol",
            "\"grpc\" needs the chassis cargo feature `otlp-grpc`",
        );
        #[cfg(not(feature = "otlp-http"))]
        problems.check(
            self.otlp.protocol != OtlpProtocol::HttpProtobuf || self.otlp.endpoint.is_none(),
            "otlp.protocol",
            "\"http/protobuf\" needs the chassis cargo feature `otlp-http`",
        );
    }
}

crate::config::choices! {
    /// How log lines are written.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum LogFormat {
        /// Human-readable lines, coloured on a terminal.
        Text = "text",
        /// One JSON object per line, for log shippers.
        Json = "json",
    }
}

/// `[telemetry.otlp]`: where traces, logs and metrics go.
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
    /// `telemetry.otlp.batch_delay`: how long an ended span waits for a full batch before a
    /// smaller one is exported. Default `"5s"` (the SDK's).
    #[serde(with = "crate::config::duration")]
    pub batch_delay: Duration,
    /// `telemetry.otlp.max_batch_size`: spans per export request at most. Default `512`.
    pub max_batch_size: usize,
    /// `telemetry.otlp.max_queue_size`: ended spans waiting for export at most; beyond it they
    /// are dropped (and counted in `chassis_otel_spans_total{outcome="dropped"}`). Default
    /// `2048`. Log records have a queue of their own of the same size.
    pub max_queue_size: usize,
    /// `telemetry.otlp.logs`: export log records too (the events `telemetry.log_level` lets
    /// through, with their trace and span ids) to `/v1/logs`, next to the lines on stdout.
    /// Default `true`: with an endpoint set, traces and logs go to the collector.
    pub logs: bool,
    /// `telemetry.otlp.metrics`: export metrics too (every series of `/metrics`, the process and
    /// runtime metrics) to `/v1/metrics`; `/metrics` stays. Default `true`: with an endpoint set,
    /// all three signals go to the collector. Needs `metrics.enabled`.
    pub metrics: bool,
    /// `telemetry.otlp.metrics_interval`: how often metrics are collected and exported.
    /// Default `"60s"` (the OpenTelemetry default); `OTEL_METRIC_EXPORT_INTERVAL`
    /// (milliseconds), when set, wins.
    #[serde(with = "crate::config::duration")]
    pub metrics_interval: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
            batch_delay: Duration::from_secs(5),
            max_batch_size: 512,
            max_queue_size: 2048,
            logs: true,
            metrics: true,
            metrics_interval: Duration::from_secs(60),
        }
    }
}

crate::config::choices! {
    /// The OTLP transport.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum OtlpProtocol {
        /// OTLP over HTTP with protobuf bodies (port 4318).
        HttpProtobuf = "http/protobuf",
        /// OTLP over gRPC (port 4317).
        Grpc = "grpc",
    }
}
