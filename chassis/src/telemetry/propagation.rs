use std::sync::OnceLock;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};

/// Reads propagation fields (`traceparent`, `tracestate`, `baggage`) from HTTP headers.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes propagation fields into HTTP headers.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// The W3C TraceContext + Baggage propagator the chassis uses. Held here rather than read from
/// OpenTelemetry's global on every request, which would take a lock on the hot path.
pub fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(super::composite_propagator)
}

/// Extracts the remote context from `headers`. A missing or malformed `traceparent` yields an
/// empty context, so the request starts a new trace.
///
/// ```
/// use opentelemetry::trace::TraceContextExt;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
/// let cx = chassis::telemetry::extract_context(&headers);
/// assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
///
/// headers.insert("traceparent", "garbage".parse().unwrap());
/// assert!(!chassis::telemetry::extract_context(&headers).span().span_context().is_valid());
/// ```
pub fn extract_context(headers: &HeaderMap) -> Context {
    propagator().extract(&HeaderExtractor(headers))
}

/// Writes `cx` (usually the current span's context) into `headers` as `traceparent`,
/// `tracestate` and `baggage`.
///
/// ```
/// use tracing_opentelemetry::OpenTelemetrySpanExt;
///
/// let mut headers = http::HeaderMap::new();
/// chassis::telemetry::inject_context(&tracing::Span::current().context(), &mut headers);
/// ```
pub fn inject_context(cx: &Context, headers: &mut HeaderMap) {
    propagator().inject_context(cx, &mut HeaderInjector(headers));
}
