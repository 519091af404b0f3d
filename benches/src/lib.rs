//! Shared fixtures of the benchmarks: the same routes served bare and behind the chassis.

use axum::Router;
use axum::routing::get;

/// A small JSON-ish route with a path parameter, the shape of a typical API call.
pub fn routes() -> Router {
    Router::new()
        .route(
            "/users/{id}",
            get(|axum::extract::Path(id): axum::extract::Path<u64>| async move { format!("{{\"id\":{id}}}") }),
        )
        .route("/health", get(|| async { "ok" }))
}

/// Deletes what a run declared on `transport`'s broker at `url` under `namespace` (streams,
/// queues), so that runs leave nothing behind on a shared broker.
pub async fn delete_namespace(transport: &str, url: &str, namespace: &str) {
    if let Err(error) = chassis::testing::delete_broker_namespace(transport, url, namespace).await {
        eprintln!("{namespace} is left on the {transport} broker: {error}");
    }
}

/// `POST /payments` answering 201, for the idempotency load runs.
pub fn payments() -> Router {
    Router::new().route(
        "/payments",
        axum::routing::post(|| async { (axum::http::StatusCode::CREATED, r#"{"id":1}"#) }),
    )
}

/// The in-process pair every inbound benchmark compares: [`routes`] bare, and the same routes in
/// the chassis' inbound stack with telemetry and metrics installed as a service has them by
/// default (logs at WARN, server span per request, no exporter). Keep the guard alive for the
/// run.
pub fn inbound_pair() -> (chassis::telemetry::TelemetryGuard, Router, chassis::runtime::Inbound) {
    let (config, ()) = chassis::config::ConfigLoader::new()
        .set("telemetry.log_level", "warn")
        .load::<chassis::runtime::ChassisConfig, ()>()
        .expect("bench config");
    let telemetry = chassis::telemetry::init(&config.service, &config.telemetry).expect("telemetry");
    chassis::metrics::install(&config.metrics, &config.service).expect("metrics");
    let stack = chassis::runtime::Inbound::new(routes(), &config);
    (telemetry, routes(), stack)
}

/// The request of the inbound benchmarks: `GET /users/42` with the one header wrk sends, so the
/// header map is allocated by the "client", as hyper does for every real request, not by the
/// first layer that adds a header.
pub fn get_user() -> axum::http::Request<axum::body::Body> {
    axum::http::Request::get("/users/42")
        .header(axum::http::header::HOST, "127.0.0.1:3000")
        .body(axum::body::Body::empty())
        .expect("a valid request")
}

/// The single-threaded runtime the in-process benchmarks drive the services on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// How many spans an OTLP `ExportTraceServiceRequest` body holds, read from the protobuf wire
/// format without decoding the spans: the load runs' sink shares its core with the load
/// generator, and decoding every span there would slow the generator, not the server measured.
/// `None` when the body is not well-formed protobuf.
pub fn count_spans(body: &[u8]) -> Option<u64> {
    /// Calls `field` for each `(number, length-delimited payload)` of a message; other wire
    /// types are skipped.
    fn fields<'a>(mut message: &'a [u8], mut field: impl FnMut(u64, &'a [u8]) -> Option<()>) -> Option<()> {
        fn varint(bytes: &mut &[u8]) -> Option<u64> {
            let mut value = 0u64;
            for shift in (0..64).step_by(7) {
                let (&byte, rest) = bytes.split_first()?;
                *bytes = rest;
                value |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return Some(value);
                }
            }
            None
        }
        while !message.is_empty() {
            let key = varint(&mut message)?;
            match key & 7 {
                0 => {
                    varint(&mut message)?;
                }
                1 => message = message.get(8..)?,
                2 => {
                    let len = usize::try_from(varint(&mut message)?).ok()?;
                    let payload = message.get(..len)?;
                    message = &message[len..];
                    field(key >> 3, payload)?;
                }
                5 => message = message.get(4..)?,
                _ => return None,
            }
        }
        Some(())
    }
    let mut spans = 0;
    // ExportTraceServiceRequest.resource_spans (1) → ResourceSpans.scope_spans (2) → ScopeSpans.spans (2)
    fields(body, |number, resource_spans| {
        if number != 1 {
            return Some(());
        }
        fields(resource_spans, |number, scope_spans| {
            if number != 2 {
                return Some(());
            }
            fields(scope_spans, |number, _| {
                spans += u64::from(number == 2);
                Some(())
            })
        })
    })?;
    Some(spans)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;

    #[test]
    fn spans_are_counted_as_decoding_counts_them() {
        let scope = |n: usize| ScopeSpans {
            spans: (0..n)
                .map(|i| Span {
                    name: format!("GET /users/{i}"),
                    start_time_unix_nano: 1_764_000_000_000_000_000,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    scope_spans: vec![scope(3), scope(300)],
                    ..Default::default()
                },
                ResourceSpans {
                    scope_spans: vec![scope(0), scope(1)],
                    ..Default::default()
                },
            ],
        };
        let body = request.encode_to_vec();
        assert_eq!(super::count_spans(&body), Some(304));
        assert_eq!(
            super::count_spans(&body[..body.len() - 1]),
            None,
            "a cut body is not counted"
        );
        assert_eq!(super::count_spans(&[]), Some(0));
    }
}
