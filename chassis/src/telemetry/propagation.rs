use std::sync::OnceLock;

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

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
    PROPAGATOR.get_or_init(composite_propagator)
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
    // Most requests carry neither field, and then every propagator leaves the current context
    // as it is.
    if !carries_propagation_fields(headers) {
        return Context::current();
    }
    propagator().extract(&HeaderExtractor(headers))
}

/// Whether `headers` hold `traceparent` or `baggage`, without which no propagator changes the
/// context (`tracestate` only counts next to a `traceparent`).
fn carries_propagation_fields(headers: &HeaderMap) -> bool {
    const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
    const BAGGAGE: HeaderName = HeaderName::from_static("baggage");
    // A lookup hashes the name byte by byte. A request has a handful of headers, and comparing
    // their names (standard ones by tag, others by length first) costs less than hashing two.
    const SCAN_UP_TO: usize = 16;
    if headers.keys_len() <= SCAN_UP_TO {
        headers.keys().any(|name| *name == TRACEPARENT || *name == BAGGAGE)
    } else {
        headers.contains_key(TRACEPARENT) || headers.contains_key(BAGGAGE)
    }
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

/// W3C TraceContext and Baggage, the propagators the chassis installs.
pub(crate) fn composite_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::baggage::BaggageExt;
    use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceId};

    fn remote(trace_id: &str) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex(trace_id).unwrap(),
            opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            Default::default(),
        ))
    }

    #[test]
    fn without_fields_the_current_context_stays_and_with_them_it_is_replaced() {
        let _current = remote("11111111111111111111111111111111").attach();
        let trace_id = |cx: &Context| cx.span().span_context().trace_id().to_string();
        assert_eq!(
            trace_id(&extract_context(&HeaderMap::new())),
            "11111111111111111111111111111111"
        );

        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(trace_id(&extract_context(&headers)), "4bf92f3577b34da6a3ce929d0e0e4736");

        let mut headers = HeaderMap::new();
        headers.insert("baggage", "tenant=acme".parse().unwrap());
        let cx = extract_context(&headers);
        assert_eq!(
            cx.baggage().get("tenant").map(|v| v.as_str().to_owned()),
            Some("acme".into())
        );
        assert_eq!(
            trace_id(&cx),
            "11111111111111111111111111111111",
            "baggage alone keeps the trace"
        );
    }

    #[test]
    fn the_fields_are_found_among_few_or_many_headers() {
        for others in [0, 3, 16, 40] {
            let mut headers = HeaderMap::new();
            for i in 0..others {
                headers.insert(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("1"),
                );
            }
            headers.insert(http::header::USER_AGENT, HeaderValue::from_static("wrk"));
            assert!(!carries_propagation_fields(&headers), "{others} other headers");
            let mut traced = headers.clone();
            traced.insert(
                "traceparent",
                HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            );
            assert!(carries_propagation_fields(&traced), "{others} other headers");
            headers.insert("baggage", HeaderValue::from_static("tenant=acme"));
            assert!(carries_propagation_fields(&headers), "{others} other headers");
        }
    }
}
