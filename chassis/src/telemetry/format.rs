//! Log line formats that carry the OpenTelemetry `trace_id` and `span_id` of the span the event
//! happened in, so logs and traces join up in any backend.

use std::fmt;
use std::time::SystemTime;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The ids of the innermost span around the event that has an OpenTelemetry context.
fn trace_ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(TraceId, SpanId)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let mut scope = Some(ctx.event_scope()?);
    tracing::dispatcher::get_default(|dispatch| {
        for span in scope.take()? {
            if let Some(cx) = tracing_opentelemetry::get_otel_context(&span.id(), dispatch) {
                let span_context = cx.span().span_context().clone();
                if span_context.is_valid() {
                    return Some((span_context.trace_id(), span_context.span_id()));
                }
            }
        }
        None
    })
}

/// Human-readable lines:
/// `2026-11-25T10:00:00.123Z  INFO HTTP request{...}: my_service: message k=v trace_id=… span_id=…`
#[derive(Debug, Clone, Copy)]
pub(crate) struct TextFormat {
    ansi: bool,
}

impl TextFormat {
    pub(crate) fn new(ansi: bool) -> Self {
        Self { ansi }
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
        let ids = trace_ids(ctx);
        let (dim, reset) = if self.ansi { ("\x1b[2m", "\x1b[0m") } else { ("", "") };
        let meta = event.metadata();
        let (level, color) = self.level(meta.level());
        write!(
            writer,
            "{dim}{}{reset} {color}{level}{reset} ",
            humantime::format_rfc3339_millis(SystemTime::now())
        )?;
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
}

impl JsonWithTraceIds {
    pub(crate) fn new() -> Self {
        Self {
            inner: format::format().json().with_current_span(true).with_span_list(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some((trace_id, span_id)) = trace_ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}
