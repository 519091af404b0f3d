//! Where the inbound layer's server spans come from: the SDK provider when spans are exported,
//! a non-recording context with fresh ids and the sampler's decision when they are not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context as OtelContext;
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, ShouldSample};

/// Whether `telemetry.trace_level` lets server spans through (set by [`init`](super::init)).
pub(super) static SERVER_SPANS: AtomicBool = AtomicBool::new(true);

pub(crate) fn set_server_spans(enabled: bool) {
    SERVER_SPANS.store(enabled, Ordering::Relaxed);
}

/// Where server spans come from, decided once by [`init`](super::init).
pub(crate) enum SpanSource {
    /// Export is on: sampled spans recorded by the chassis and queued for export.
    #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
    Recorded {
        spans: super::server_span::ServerSpans,
        sampling: Sampling,
    },
    /// Export is off: nothing would ever read a recorded span, so the context only gets fresh
    /// ids and the sampler's decision. Log lines still carry the ids and calls made while
    /// handling the request still propagate the trace, with the right sampled flag.
    Propagated(Sampling),
    /// Telemetry was set up by someone else: the global tracer provider.
    Global(BoxedTracer),
}

/// The process' sampler: parent-based, with `telemetry.sampling_ratio` for new traces.
pub(crate) struct Sampling {
    sampler: Sampler,
    ratio: f64,
}

impl Sampling {
    pub(crate) fn new(ratio: f64) -> Self {
        Self {
            sampler: Self::sampler(ratio),
            ratio,
        }
    }

    /// The SDK's sampler for `ratio`, as the tracer provider uses it too.
    pub(crate) fn sampler(ratio: f64) -> Sampler {
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
    }

    /// What the sampler says where that needs no computation: a parent's own flag, or a new
    /// trace under a ratio of 1 (the default) or 0. `None`: ask the sampler.
    fn decided(&self, parent: &OtelContext) -> Option<bool> {
        if parent.has_active_span() {
            return Some(parent.span().span_context().is_sampled());
        }
        match self.ratio {
            ratio if ratio >= 1.0 => Some(true),
            ratio if ratio <= 0.0 => Some(false),
            _ => None,
        }
    }
}

static SOURCE: std::sync::OnceLock<SpanSource> = std::sync::OnceLock::new();

pub(crate) fn set_span_source(source: SpanSource) {
    let _ = SOURCE.set(source);
}

/// A layer's span source: the process' own, set by [`init`](super::init), borrowed for the life
/// of the process (hyper clones the stack per request, and a reference costs nothing to copy),
/// or, without `init`, the global tracer provider as it was when the layer was made.
#[derive(Clone)]
pub(super) enum SourceRef {
    Installed(&'static SpanSource),
    Global(Arc<SpanSource>),
}

impl std::ops::Deref for SourceRef {
    type Target = SpanSource;

    fn deref(&self) -> &SpanSource {
        match self {
            Self::Installed(source) => source,
            Self::Global(source) => source,
        }
    }
}

pub(super) fn span_source() -> SourceRef {
    match SOURCE.get() {
        Some(source) => SourceRef::Installed(source),
        None => SourceRef::Global(Arc::new(SpanSource::Global(opentelemetry::global::tracer("chassis")))),
    }
}

/// A non-recording server span: the parent's trace (or a new one), a new span id, and the
/// sampler's decision as the sampled flag.
pub(super) fn propagated(sampling: &Sampling, parent: OtelContext, method: &'static str) -> OtelContext {
    let span_context = decide(sampling, &parent, method);
    parent.with_remote_span_context(span_context)
}

/// The server span's context under `parent`: the parent's trace (or a new one), a new span id,
/// and the sampler's decision as the sampled flag.
pub(super) fn decide(sampling: &Sampling, parent: &OtelContext, method: &'static str) -> SpanContext {
    // The SDK's generator draws from a thread-local `RefCell`'d generator; the request ids'
    // fast generator gives ids as random at less cost per request.
    let (trace_id, trace_state) = {
        let parent_span = parent.span();
        let parent = parent_span.span_context();
        match parent.is_valid() {
            true => (parent.trace_id(), parent.trace_state().clone()),
            false => (TraceId::from(fastrand::u128(..)), Default::default()),
        }
    };
    let (flags, trace_state) = match sampling.decided(parent) {
        // What the SDK's sampler would say, without building its answer.
        Some(true) => (TraceFlags::SAMPLED, trace_state),
        Some(false) => (TraceFlags::default(), trace_state),
        None => {
            let decision = sampling
                .sampler
                .should_sample(Some(parent), trace_id, method, &SpanKind::Server, &[], &[]);
            match decision.decision {
                SamplingDecision::RecordAndSample => (TraceFlags::SAMPLED, decision.trace_state),
                SamplingDecision::RecordOnly => (TraceFlags::default(), decision.trace_state),
                SamplingDecision::Drop => (TraceFlags::default(), trace_state),
            }
        }
    };
    SpanContext::new(trace_id, SpanId::from(fastrand::u64(..)), flags, false, trace_state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(r: f64) -> Sampling {
        Sampling::new(r)
    }

    fn remote(sampled: bool) -> OtelContext {
        let flags = if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let trace_id = opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap();
        OtelContext::new().with_remote_span_context(SpanContext::new(
            trace_id,
            span_id,
            flags,
            true,
            Default::default(),
        ))
    }

    #[test]
    fn without_export_the_context_continues_the_callers_trace_and_decision() {
        for sampled in [true, false] {
            let parent = remote(sampled);
            let cx = propagated(&ratio(0.0), parent.clone(), "GET");
            let span = cx.span();
            let child = span.span_context();
            assert!(!span.is_recording(), "nothing is recorded without an exporter");
            assert_eq!(child.trace_id(), parent.span().span_context().trace_id());
            assert_ne!(
                child.span_id(),
                parent.span().span_context().span_id(),
                "a span id of its own"
            );
            assert_eq!(child.is_sampled(), sampled, "the caller's decision, whatever the ratio");
            assert!(!child.is_remote());
        }
    }

    #[test]
    fn without_export_a_new_trace_follows_the_sampling_ratio() {
        for (r, sampled) in [(1.0, true), (0.0, false)] {
            let cx = propagated(&ratio(r), OtelContext::new(), "GET");
            let span = cx.span();
            assert!(span.span_context().is_valid(), "log lines and calls still get ids");
            assert_eq!(span.span_context().is_sampled(), sampled);
        }
    }

    #[test]
    fn the_shortcut_decides_as_the_sdk_sampler_does() {
        for r in [0.0, 0.3, 1.0] {
            let sampling = ratio(r);
            for parent in [remote(true), remote(false), OtelContext::new()] {
                for _ in 0..50 {
                    let cx = propagated(&sampling, parent.clone(), "GET");
                    let trace_id = cx.span().span_context().trace_id();
                    let sdk =
                        sampling
                            .sampler
                            .should_sample(Some(&parent), trace_id, "GET", &SpanKind::Server, &[], &[]);
                    assert_eq!(
                        cx.span().span_context().is_sampled(),
                        sdk.decision == SamplingDecision::RecordAndSample,
                        "ratio {r}"
                    );
                }
            }
        }
    }
}
