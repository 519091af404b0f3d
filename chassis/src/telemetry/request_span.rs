//! The request's `tracing` span, made on demand: what `Span::current()` returns inside a
//! handler, the subscriber that makes it, and the layer that carries the server span's
//! OpenTelemetry context into it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context as OtelContext;
use tracing::Span;

use super::RequestId;

/// The target of the per-request `tracing` span. The OpenTelemetry layer of
/// [`init`](super::init) does not see it: the server span is built with the OpenTelemetry API
/// directly, which costs a fraction of going through `tracing` fields.
pub(crate) const SERVER_SPAN_TARGET: &str = "chassis::http::server";

/// The name of the request's `tracing` span.
pub(crate) const REQUEST_SPAN_NAME: &str = "HTTP request";

/// Whether the request's `tracing` span is made only when something asks for it (set by
/// [`init`](super::init), whose subscriber makes it on demand; see [`RequestScope`]).
pub(super) static LAZY_SPANS: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_lazy_request_spans(enabled: bool) {
    LAZY_SPANS.store(enabled, Ordering::Relaxed);
}

/// What the request's `tracing` span (`HTTP request`, target `chassis::http::server`) is made
/// of, and the span once made.
///
/// The span is what `Span::current()` returns inside a handler, so that
/// `tokio::spawn(work.in_current_span())` keeps spawned work in the request's trace. Making it
/// in the `tracing` registry is the costliest thing the inbound stack does, and most requests
/// never ask for it: with the chassis' subscriber ([`init`](super::init)) it is made the first
/// time `Span::current()` is called while the request is polled and no other span is entered.
/// Until then the server span's context is attached around each poll directly and the log
/// formats print the request's fields from here, so log lines look the same either way.
pub(crate) struct RequestScope {
    pub(super) method: &'static str,
    pub(super) uri: http::Uri,
    pub(super) request_id: Option<RequestId>,
    pub(super) otel: OtelContext,
    pub(super) span: std::sync::OnceLock<(Span, bool)>,
    /// The request's [`MatchedRoute`] slot, unless an outer layer attached one first.
    pub(super) route: std::sync::OnceLock<axum::extract::MatchedPath>,
}

impl crate::http::HoldsRoute for RequestScope {
    fn route_slot(&self) -> &std::sync::OnceLock<axum::extract::MatchedPath> {
        &self.route
    }
}

impl RequestScope {
    /// The request's span, made on first use; `true` with it when the span carries the server
    /// context (the chassis' subscriber is installed).
    pub(super) fn span(&self) -> &(Span, bool) {
        self.span.get_or_init(|| {
            ServerContextLayer::carrying(&self.otel, || {
                // The fields of `fields`, which the log formats print while the span is not made.
                tracing::info_span!(
                    target: SERVER_SPAN_TARGET,
                    REQUEST_SPAN_NAME,
                    http.request.method = self.method,
                    url.path = self.uri.path(),
                    request_id = self.request_id.as_ref().map(RequestId::as_str),
                )
            })
        })
    }

    /// The span's fields by name, as the log formats show them (the request id only when
    /// there is one).
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("http.request.method", Some(self.method)),
            ("url.path", Some(self.uri.path())),
            ("request_id", self.request_id.as_ref().map(RequestId::as_str)),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

thread_local! {
    /// The requests being polled on this thread, innermost last.
    static SCOPES: std::cell::RefCell<Vec<Arc<RequestScope>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Keeps a request current on this thread while it is polled.
pub(super) struct PolledScope;

impl PolledScope {
    /// Runs `f` with `scope` current on this thread and hands `scope` back. The thread's stack
    /// holds it meanwhile: moved in and out, no reference count changes per poll.
    pub(super) fn run<R>(scope: Arc<RequestScope>, f: impl FnOnce() -> R) -> (Arc<RequestScope>, R) {
        SCOPES.with(|scopes| scopes.borrow_mut().push(scope));
        // Pops the scope if `f` unwinds.
        let guard = PolledScope;
        let result = f();
        std::mem::forget(guard);
        let scope = SCOPES.with(|scopes| scopes.borrow_mut().pop()).expect("pushed above");
        (scope, result)
    }
}

impl Drop for PolledScope {
    fn drop(&mut self) {
        SCOPES.with(|scopes| scopes.borrow_mut().pop());
    }
}

/// The request being polled on this thread, if any.
pub(crate) fn polled_request() -> Option<Arc<RequestScope>> {
    SCOPES.with(|scopes| scopes.borrow().last().cloned())
}

/// Runs `f` as if inside the poll of a request to `uri` (for tests of what sees it).
#[cfg(test)]
pub(crate) fn in_polled_request<R>(
    method: &'static str,
    uri: &'static str,
    request_id: Option<&'static str>,
    f: impl FnOnce() -> R,
) -> R {
    let scope = Arc::new(RequestScope {
        method,
        uri: http::Uri::from_static(uri),
        request_id: request_id.map(|id| RequestId(http::HeaderValue::from_static(id))),
        otel: OtelContext::new(),
        span: std::sync::OnceLock::new(),
        route: std::sync::OnceLock::new(),
    });
    PolledScope::run(scope, f).1
}

/// The span `Span::current()` stands for when no span is entered: the polled request's span,
/// made now if it was not yet.
pub(crate) fn polled_request_span() -> Option<tracing_core::span::Current> {
    let scope = polled_request()?;
    let (span, _) = scope.span();
    Some(tracing_core::span::Current::new(span.id()?, span.metadata()?))
}

/// Makes the server span's OpenTelemetry context current whenever the request's `tracing` span
/// is entered: while the inbound layer polls the request, and wherever a future instrumented
/// with it runs (`tokio::spawn(work.in_current_span())`), so spans and log lines there belong
/// to the request's trace. [`init`](super::init) installs it, filtered to the request spans.
pub(crate) struct ServerContextLayer;

/// The context a request span carries.
struct CarriedContext(OtelContext);

thread_local! {
    /// The context for the request span being created on this thread.
    static PENDING: std::cell::RefCell<Option<OtelContext>> = const { std::cell::RefCell::new(None) };
    /// The contexts attached by entered request spans, innermost last, with the span's id.
    static ATTACHED: std::cell::RefCell<Vec<(tracing::span::Id, opentelemetry::ContextGuard)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl ServerContextLayer {
    /// Creates the request span with `make`, handing it `cx`; `true` when the span took it.
    fn carrying(cx: &OtelContext, make: impl FnOnce() -> Span) -> (Span, bool) {
        PENDING.with(|pending| *pending.borrow_mut() = Some(cx.clone()));
        let span = make();
        let left = PENDING.with(|pending| pending.borrow_mut().take());
        (span, left.is_none())
    }

    /// The filter that shows this layer the request spans and nothing else.
    /// A static filter, so no other callsite is ever asked about again.
    pub(crate) fn filter() -> tracing_subscriber::filter::Targets {
        tracing_subscriber::filter::Targets::new().with_target(SERVER_SPAN_TARGET, tracing::Level::INFO)
    }
}

impl<S> tracing_subscriber::Layer<S> for ServerContextLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let Some(cx) = PENDING.with(|pending| pending.borrow_mut().take())
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(CarriedContext(cx));
        }
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(CarriedContext(cx)) = span.extensions().get::<CarriedContext>()
        {
            let guard = cx.clone().attach();
            ATTACHED.with(|attached| attached.borrow_mut().push((id.clone(), guard)));
        }
    }

    fn on_exit(&self, id: &tracing::span::Id, _: tracing_subscriber::layer::Context<'_, S>) {
        // Entered and exited in strict nesting on one thread: if this span attached a context,
        // it is the last one (no second lookup of the span needed to know).
        let guard = ATTACHED.with(|attached| {
            let mut attached = attached.borrow_mut();
            match attached.last() {
                Some((top, _)) if top == id => attached.pop(),
                _ => None,
            }
        });
        drop(guard);
    }
}

/// The chassis' subscriber: `subscriber` as it is, except that `Span::current()` with no span
/// entered, while a request is polled, returns the request's span (made then; see
/// [`RequestScope`]). Only `Span::current()` goes through here: the registry and its layers
/// keep their own idea of the current span, in which the request's span is not entered.
pub(crate) struct RequestSpans<S> {
    inner: S,
}

impl<S> RequestSpans<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: tracing::Subscriber> tracing::Subscriber for RequestSpans<S> {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.inner.max_level_hint()
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &tracing::span::Id, follows: &tracing::span::Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event_enabled(&self, event: &tracing::Event<'_>) -> bool {
        self.inner.event_enabled(event)
    }

    fn event(&self, event: &tracing::Event<'_>) {
        self.inner.event(event);
    }

    fn enter(&self, span: &tracing::span::Id) {
        self.inner.enter(span);
    }

    fn exit(&self, span: &tracing::span::Id) {
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &tracing::span::Id) -> tracing::span::Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: tracing::span::Id) -> bool {
        self.inner.try_close(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        let current = self.inner.current_span();
        if current.id().is_some() {
            return current;
        }
        polled_request_span().unwrap_or(current)
    }

    // Layers find each other through the dispatcher (tracing-opentelemetry's span context,
    // `downcast_ref::<Registry>()`): answer for the wrapped subscriber as it would.
    #[allow(unsafe_code)]
    unsafe fn downcast_raw(&self, id: std::any::TypeId) -> Option<*const ()> {
        if id == std::any::TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: forwards the caller's request unchanged to the wrapped subscriber, which
        // upholds the same contract (the pointer it returns is to a value of type `id` it owns,
        // living as long as `self`).
        unsafe { self.inner.downcast_raw(id) }
    }
}
