//! Log line formats that carry the OpenTelemetry `trace_id` and `span_id` of the span the event
//! happened in, so logs and traces join up in any backend.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use tracing::dispatcher::WeakDispatch;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The subscriber the formatter belongs to, set once it is built.
///
/// Asking `tracing` for the current dispatcher from inside an event callback returns none when
/// the subscriber is a scoped default (re-entrancy guard), so the formatter keeps its own
/// (weak, so there is no reference cycle) handle to the subscriber that owns it.
pub(crate) type DispatchSlot = Arc<OnceLock<WeakDispatch>>;

/// The ids of the innermost span around the event that has an OpenTelemetry context.
fn trace_ids<S, N>(ctx: &FmtContext<'_, S, N>, slot: &DispatchSlot) -> Option<(TraceId, SpanId)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    if let Some(scope) = ctx.event_scope()
        && let Some(dispatch) = slot.get().and_then(WeakDispatch::upgrade)
    {
        for span in scope {
            if let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch) {
                let span_context = cx.span().span_context().clone();
                if span_context.is_valid() {
                    return Some((span_context.trace_id(), span_context.span_id()));
                }
            }
        }
    }
    // No `tracing` span with an OpenTelemetry context: the server span of the inbound layer
    // (built with the OpenTelemetry API) is the current context while a request is handled.
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let span_context = span.span_context();
        span_context
            .is_valid()
            .then(|| (span_context.trace_id(), span_context.span_id()))
    })
}

/// Whether the event happened inside an entered request span (`HTTP request`).
fn in_request_span<S, N>(ctx: &FmtContext<'_, S, N>) -> bool
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    ctx.event_scope()
        .is_some_and(|mut scope| scope.any(|span| span.metadata().target() == super::request_span::SERVER_SPAN_TARGET))
}

/// Human-readable lines:
/// `2026-11-25T10:00:00.123Z  INFO HTTP request{...}: my_service: message k=v trace_id=… span_id=…`
#[derive(Debug, Clone)]
pub(crate) struct TextFormat {
    ansi: bool,
    dispatch: DispatchSlot,
}

impl TextFormat {
    pub(crate) fn new(ansi: bool, dispatch: DispatchSlot) -> Self {
        Self { ansi, dispatch }
    }

    fn level(&self, level: &Level) -> (&'static str, &'static str) {
        let name = match *level {
            Level::ERROR => "ERROR",
            Level::WARN => " WARN",
            Level::INFO => " INFO",
            Level::DEBUG => "DEBUG",
            Level::TRACE => "TRACE",
        };
        if !self.ansi {
            return (name, "");
        }
        let color = match *level {
            Level::ERROR => "\x1b[31m",
            Level::WARN => "\x1b[33m",
            Level::INFO => "\x1b[32m",
            Level::DEBUG => "\x1b[34m",
            Level::TRACE => "\x1b[35m",
        };
        (name, color)
    }
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let ids = trace_ids(ctx, &self.dispatch);
        let (dim, reset) = if self.ansi { ("\x1b[2m", "\x1b[0m") } else { ("", "") };
        let meta = event.metadata();
        let (level, color) = self.level(meta.level());
        write!(
            writer,
            "{dim}{}{reset} {color}{level}{reset} ",
            humantime::format_rfc3339_millis(SystemTime::now())
        )?;
        if !in_request_span(ctx)
            && let Some(request) = super::request_span::polled_request()
        {
            // The request's span was not made (or not entered here): the same prefix from
            // what it would hold.
            write!(writer, "{}{{", super::request_span::REQUEST_SPAN_NAME)?;
            for (i, (name, value)) in request.fields().enumerate() {
                let separator = if i == 0 { "" } else { " " };
                write!(writer, "{separator}{name}={value:?}")?;
            }
            writer.write_str("}: ")?;
        }
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(writer, "{}", span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>()
                    && !fields.is_empty()
                {
                    write!(writer, "{{{fields}}}")?;
                }
                writer.write_str(": ")?;
            }
        }
        write!(writer, "{dim}{}:{reset} ", meta.target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        if let Some((trace_id, span_id)) = ids {
            write!(writer, " {dim}trace_id={trace_id} span_id={span_id}{reset}")?;
        }
        writeln!(writer)
    }
}

/// tracing-subscriber's JSON lines with `trace_id` and `span_id` added as top-level members.
pub(crate) struct JsonWithTraceIds {
    inner: format::Format<Json>,
    dispatch: DispatchSlot,
}

impl JsonWithTraceIds {
    pub(crate) fn new(dispatch: DispatchSlot) -> Self {
        Self {
            inner: format::format().json().with_current_span(true).with_span_list(false),
            dispatch,
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let ids = trace_ids(ctx, &self.dispatch);
        // With no span entered, the current span is the request's, whether or not it was made.
        let request = match ctx.lookup_current() {
            None => super::request_span::polled_request(),
            Some(_) => None,
        };
        if ids.is_none() && request.is_none() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let Some(members) = line.trim_end().strip_prefix('{').and_then(|l| l.strip_suffix('}')) else {
            return writer.write_str(&line);
        };
        writer.write_char('{')?;
        if let Some((trace_id, span_id)) = ids {
            write!(writer, "\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",")?;
        }
        writer.write_str(members)?;
        if let Some(request) = request {
            let mut span: serde_json::Map<_, _> = request
                .fields()
                .map(|(name, value)| (name.into(), value.into()))
                .collect();
            span.insert("name".into(), super::request_span::REQUEST_SPAN_NAME.into());
            write!(writer, ",\"span\":{}", serde_json::Value::Object(span))?;
        }
        writer.write_str("}\n")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs one event inside a span and returns the line, with the span's trace id.
    fn log_in_span(json: bool) -> (String, String) {
        log_line(json, true)
    }

    /// Logs one event, inside a span or not, and returns the line, with the span's trace id.
    fn log_line(json: bool, in_span: bool) -> (String, String) {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let fmt = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || writer.clone());
        let slot = DispatchSlot::default();
        let fmt = if json {
            fmt.event_format(JsonWithTraceIds::new(slot.clone()))
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                .boxed()
        } else {
            fmt.event_format(TextFormat::new(false, slot.clone())).boxed()
        };
        // The order of `telemetry::init`: the formatter first, the OpenTelemetry layer after.
        let subscriber = tracing_subscriber::registry().with(fmt).with(otel);
        let dispatch = tracing::Dispatch::new(subscriber);
        slot.set(dispatch.downgrade()).unwrap();
        let trace_id = tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request");
            let _entered = in_span.then(|| span.enter());
            tracing::info!(answer = 42, "handled");
            use opentelemetry::trace::TraceContextExt as _;
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            span.context().span().span_context().trace_id().to_string()
        });
        let line = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        (line, trace_id)
    }

    #[test]
    fn text_lines_carry_the_trace_and_span_ids() {
        let (line, trace_id) = log_in_span(false);
        assert!(line.contains("handled"), "{line}");
        assert!(line.contains("answer=42"), "{line}");
        assert!(line.contains(&format!("trace_id={trace_id}")), "{line}");
        assert!(line.contains("span_id="), "{line}");
    }

    #[test]
    fn lines_inside_a_request_carry_its_fields_whether_or_not_its_span_was_made() {
        use super::super::request_span::in_polled_request;
        let prefix = r#"HTTP request{http.request.method="GET" url.path="/orders/7" request_id="abc-1"}: "#;
        let (line, _) = in_polled_request("GET", "/orders/7?x=1", Some("abc-1"), || log_line(false, false));
        assert!(
            line.contains(&format!(" {prefix}chassis::telemetry::format::tests: handled")),
            "{line}"
        );
        let (line, _) = in_polled_request("GET", "/orders/7", Some("abc-1"), || log_line(false, true));
        assert!(
            line.contains(&format!(" {prefix}request: ")),
            "the request outermost: {line}"
        );
        let (line, _) = log_line(false, false);
        assert!(!line.contains("HTTP request"), "{line}");

        let (line, _) = in_polled_request("POST", "/orders", None, || log_line(true, false));
        let value: serde_json::Value = serde_json::from_str(line.trim()).expect(&line);
        assert_eq!(value["span"]["name"], "HTTP request", "{line}");
        assert_eq!(value["span"]["http.request.method"], "POST");
        assert_eq!(value["span"]["url.path"], "/orders");
        assert!(value["span"].get("request_id").is_none());
        assert_eq!(value["fields"]["answer"], 42);
        let (line, _) = in_polled_request("POST", "/orders", None, || log_line(true, true));
        let value: serde_json::Value = serde_json::from_str(line.trim()).expect(&line);
        assert_eq!(
            value["span"]["name"], "request",
            "the innermost span, as without a request"
        );
    }

    #[test]
    fn json_lines_carry_the_trace_and_span_ids() {
        let (line, trace_id) = log_in_span(true);
        let value: serde_json::Value = serde_json::from_str(line.trim()).expect(&line);
        assert_eq!(value["trace_id"], trace_id.as_str(), "{line}");
        assert_eq!(value["span_id"].as_str().map(str::len), Some(16), "{line}");
    }
}
