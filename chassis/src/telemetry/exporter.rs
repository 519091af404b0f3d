//! The OTLP span, log and metric exporters, over HTTP/protobuf or gRPC as configured.

use opentelemetry_otlp::WithExportConfig;
#[cfg(feature = "otlp-http")]
use opentelemetry_otlp::WithHttpConfig;

use super::{OtlpConfig, OtlpProtocol, TelemetryError};

fn describe(config: &OtlpConfig) -> String {
    config
        .endpoint
        .clone()
        .unwrap_or_else(|| "the endpoint from OTEL_EXPORTER_OTLP_*".into())
}

/// Builds the exporter that `$builder` (`SpanExporter::builder()`, ...) starts for `$config`,
/// over HTTP at `$path`: one body for every signal, whose SDK builders share their methods but
/// no trait.
macro_rules! build_exporter {
    ($builder:expr, $config:expr, $path:literal) => {{
        let config: &OtlpConfig = $config;
        let error = |e: opentelemetry_otlp::ExporterBuildError| TelemetryError::Exporter {
            endpoint: describe(config),
            reason: e.to_string(),
        };
        match config.protocol {
            #[cfg(feature = "otlp-http")]
            OtlpProtocol::HttpProtobuf => {
                let mut builder = $builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_timeout(config.timeout)
                    .with_headers(config.headers.clone().into_iter().collect());
                if let Some(endpoint) = &config.endpoint {
                    // Like OTEL_EXPORTER_OTLP_ENDPOINT, the configured URL is the collector's
                    // base; the signal path is ours to add.
                    builder = builder.with_endpoint(format!("{}{}", endpoint.trim_end_matches('/'), $path));
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
                let mut builder = $builder
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
    }};
}

/// The span exporter: `/v1/traces` on the configured base URL over HTTP.
pub(super) fn spans(config: &OtlpConfig) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    build_exporter!(opentelemetry_otlp::SpanExporter::builder(), config, "/v1/traces")
}

/// The log record exporter: `/v1/logs` on the configured base URL over HTTP.
pub(super) fn logs(config: &OtlpConfig) -> Result<opentelemetry_otlp::LogExporter, TelemetryError> {
    build_exporter!(opentelemetry_otlp::LogExporter::builder(), config, "/v1/logs")
}

/// The metric exporter: `/v1/metrics` on the configured base URL over HTTP.
pub(super) fn metrics(
    config: &OtlpConfig,
    temporality: opentelemetry_sdk::metrics::Temporality,
) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    build_exporter!(
        opentelemetry_otlp::MetricExporter::builder().with_temporality(temporality),
        config,
        "/v1/metrics"
    )
}
