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
