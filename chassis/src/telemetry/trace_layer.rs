use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::ConnectInfo;
use http::{Request, Response, Version, header};
use opentelemetry::global::BoxedTracer;
use opentelemetry::trace::{
    SpanBuilder, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, Tracer,
};
use opentelemetry::{Context as OtelContext, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SamplingDecision, SdkTracer, ShouldSample};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;

use super::RequestId;
use crate::http::{MatchedRoute, method_label};

/// The target of the per-request `tracing` span. The OpenTelemetry layer of
/// [`init`](super::init) does not see it: the server span is built with the OpenTelemetry API
/// directly, which costs a fraction of going through `tracing` fields.
pub(crate) const SERVER_SPAN_TARGET: &str = "chassis::http::server";

/// Whether `telemetry.trace_level` lets server spans through (set by [`init`](super::init)).
static SERVER_SPANS: AtomicBool = AtomicBool::new(true);

pub(crate) fn set_server_spans(enabled: bool) {
    SERVER_SPANS.store(enabled, Ordering::Relaxed);
}

/// Where server spans come from, decided once by [`init`](super::init).
pub(crate) enum SpanSource {
    /// Export is on: spans recorded by the process' SDK provider.
    Recorded(SdkTracer),
    /// Export is off: nothing would ever read a recorded span, so the context only gets fresh
    /// ids and the sampler's decision. Log lines still carry the ids and calls made while
    /// handling the request still propagate the trace, with the right sampled flag.
    Propagated(Sampler),
    /// Telemetry was set up by someone else: the global tracer provider.
    Global(BoxedTracer),
}

static SOURCE: std::sync::OnceLock<SpanSource> = std::sync::OnceLock::new();

pub(crate) fn set_span_source(source: SpanSource) {
    let _ = SOURCE.set(source);
}

/// A layer's span source: the process' own, set by [`init`](super::init), borrowed for the life
/// of the process (hyper clones the stack per request, and a reference costs nothing to copy),
/// or, without `init`, the global tracer provider as it was when the layer was made.
#[derive(Clone)]
enum SourceRef {
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

fn span_source() -> SourceRef {
    match SOURCE.get() {
        Some(source) => SourceRef::Installed(source),
        None => SourceRef::Global(Arc::new(SpanSource::Global(opentelemetry::global::tracer("chassis")))),
    }
}

/// One server span per request, in the OpenTelemetry HTTP semantic conventions.
///
/// - The parent comes from the incoming `traceparent` / `tracestate` (W3C TraceContext); a
///   missing or malformed header starts a new trace, never an error.
/// - The span is named `{method} {route}` with the matched route template (`GET /users/{id}`),
///   or just `{method}` when no route matched, and carries `http.request.method`, `url.path`,
///   `url.scheme`, `network.protocol.version`, `user_agent.original`, `client.address`,
///   `http.route`, `http.response.status_code` and `request_id`.
/// - 5xx responses set the span status to error and `error.type` to the status code.
/// - Its context is current while the request is handled, so spans opened by handlers (through
///   `tracing` or the OpenTelemetry API) are its children and log lines carry its ids.
///
/// The span is built with the global tracer provider as it is when the layer is created (after
/// [`init`](super::init)). Log lines inside the request carry its method, path and request
/// id, and `tracing::Span::current()` in a handler is a `tracing` span `HTTP request` (target
/// `chassis::http::server`) that carries the server span's context, so
/// `tokio::spawn(work.in_current_span())` stays in the trace. Under the subscriber of
/// [`init`](super::init) that span is made only when something asks for it.
///
/// The route is read from the [`MatchedRoute`] slot, so the router needs
/// [`CaptureRouteLayer`](crate::http::CaptureRouteLayer) (the runtime adds it).
///
/// ```
/// use axum::{Router, routing::get};
/// use chassis::http::CaptureRouteLayer;
/// use chassis::telemetry::TraceLayer;
/// use tower::ServiceBuilder;
///
/// let router: Router = Router::new().route("/users/{id}", get(|| async { "user" })).layer(CaptureRouteLayer);
/// let app = ServiceBuilder::new().layer(TraceLayer::new()).service(router);
/// ```
#[derive(Clone)]
pub struct TraceLayer {
    access_log: bool,
    source: SourceRef,
}

impl std::fmt::Debug for TraceLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceLayer")
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

impl Default for TraceLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TraceLayer {
    /// The layer, without access log lines, on the current global tracer provider.
    pub fn new() -> Self {
        Self {
            access_log: false,
            source: span_source(),
        }
    }

    /// Also log one INFO line per completed request (target `chassis::access`).
    pub fn access_log(mut self, enabled: bool) -> Self {
        self.access_log = enabled;
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService {
            inner,
            access_log: self.access_log,
            source: self.source.clone(),
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone)]
pub struct TraceService<S> {
    inner: S,
    access_log: bool,
    // Cloned with the service for every request (hyper does).
    source: SourceRef,
}

impl<S: std::fmt::Debug> std::fmt::Debug for TraceService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TraceService")
            .field("inner", &self.inner)
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "_OTHER",
    }
}

/// The name of the request's `tracing` span.
pub(crate) const REQUEST_SPAN_NAME: &str = "HTTP request";

/// Whether the request's `tracing` span is made only when something asks for it (set by
/// [`init`](super::init), whose subscriber makes it on demand; see [`RequestScope`]).
static LAZY_SPANS: AtomicBool = AtomicBool::new(false);

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
    method: &'static str,
    uri: http::Uri,
    request_id: Option<RequestId>,
    otel: OtelContext,
    span: std::sync::OnceLock<(Span, bool)>,
    /// The request's [`MatchedRoute`] slot, unless an outer layer attached one first.
    route: std::sync::OnceLock<axum::extract::MatchedPath>,
}

impl crate::http::HoldsRoute for RequestScope {
    fn route_slot(&self) -> &std::sync::OnceLock<axum::extract::MatchedPath> {
        &self.route
    }
}

impl RequestScope {
    /// The request's span, made on first use; `true` with it when the span carries the server
    /// context (the chassis' subscriber is installed).
    fn span(&self) -> &(Span, bool) {
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
struct PolledScope;

impl PolledScope {
    /// Runs `f` with `scope` current on this thread and hands `scope` back. The thread's stack
    /// holds it meanwhile: moved in and out, no reference count changes per poll.
    fn run<R>(scope: Arc<RequestScope>, f: impl FnOnce() -> R) -> (Arc<RequestScope>, R) {
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

/// The OpenTelemetry server span, as the context handlers run in.
fn server_span<B>(source: &SpanSource, request: &Request<B>, method: &'static str) -> OtelContext {
    let parent = super::extract_context(request.headers());
    if !SERVER_SPANS.load(Ordering::Relaxed) {
        // Not traced here, but the caller's context still flows on to the calls we make.
        return parent;
    }
    fn start<T: Tracer>(tracer: &T, parent: OtelContext, method: &'static str) -> OtelContext
    where
        T::Span: Send + Sync + 'static,
    {
        let span = tracer.build_with_context(SpanBuilder::from_name(method).with_kind(SpanKind::Server), &parent);
        parent.with_span(span)
    }
    let cx = match source {
        SpanSource::Recorded(tracer) => start(tracer, parent, method),
        SpanSource::Global(tracer) => start(tracer, parent, method),
        SpanSource::Propagated(sampler) => return propagated(sampler, parent, method),
    };
    let span = cx.span();
    // Attributes cost allocations; only a span that records them gets them.
    if span.is_recording() {
        let mut attributes = Vec::with_capacity(10);
        attributes.push(KeyValue::new("http.request.method", method));
        attributes.push(KeyValue::new("url.path", request.uri().path().to_owned()));
        attributes.push(KeyValue::new("url.scheme", scheme(request)));
        attributes.push(KeyValue::new(
            "network.protocol.version",
            version_str(request.version()),
        ));
        if let Some(agent) = request.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
            attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
        }
        if let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
            attributes.push(KeyValue::new("client.address", addr.ip().to_string()));
        }
        if let Some(id) = request.extensions().get::<RequestId>() {
            attributes.push(KeyValue::new("request_id", id.as_str().to_owned()));
        }
        span.set_attributes(attributes);
    }
    cx
}

/// A non-recording server span: the parent's trace (or a new one), a new span id, and the
/// sampler's decision as the sampled flag.
fn propagated(sampler: &Sampler, parent: OtelContext, method: &'static str) -> OtelContext {
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
    let decision = sampler.should_sample(Some(&parent), trace_id, method, &SpanKind::Server, &[], &[]);
    let flags = match decision.decision {
        SamplingDecision::RecordAndSample => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    let trace_state = match decision.decision {
        SamplingDecision::Drop => trace_state,
        _ => decision.trace_state,
    };
    let span_context = SpanContext::new(trace_id, SpanId::from(fastrand::u64(..)), flags, false, trace_state);
    parent.with_remote_span_context(span_context)
}

fn scheme<B>(request: &Request<B>) -> &'static str {
    match request.uri().scheme_str() {
        Some("https") => "https",
        _ => "http",
    }
}

impl<S, B, ResBody> Service<Request<B>> for TraceService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TraceFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    // The layers are thin and the request and futures they pass on are large: inlined,
    // they are built in place instead of copied at every layer (docs/src/performance.md).
    #[inline(always)]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let method = method_label(request.method());
        let otel = server_span(&self.source, &request, method);
        let scope = Arc::new(RequestScope {
            method,
            uri: request.uri().clone(),
            request_id: request.extensions().get::<RequestId>().cloned(),
            otel,
            span: std::sync::OnceLock::new(),
            route: std::sync::OnceLock::new(),
        });
        let route = MatchedRoute::attach_in(&mut request, &scope);
        // Without the chassis' subscriber nothing would make the span on demand: make it now,
        // and enter it around each poll, for whatever subscriber is installed.
        let lazy = LAZY_SPANS.load(Ordering::Relaxed);
        let attach = lazy || !scope.span().1;
        // Inner `call`s only route and build futures; the context is current for them too.
        let inner = {
            let _attached = scope.otel.clone().attach();
            self.inner.call(request)
        };
        TraceFuture {
            inner,
            scope: Some(scope),
            lazy,
            attach,
            route,
            started: self.access_log.then(Instant::now),
        }
    }
}

pin_project! {
    /// Response future of [`TraceService`].
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        // Always there between polls; see `PolledScope::run`.
        scope: Option<Arc<RequestScope>>,
        // The span is made on demand (the chassis' subscriber); otherwise it exists already and
        // is entered around each poll.
        lazy: bool,
        // Attach the server context around each poll here (the span does not carry it, or
        // is not entered).
        attach: bool,
        route: MatchedRoute,
        started: Option<Instant>,
    }
}

impl<F, B, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        const BACK: &str = "the request scope is back after every poll";
        let this = self.project();
        let _attached = this
            .attach
            .then(|| this.scope.as_ref().expect(BACK).otel.clone().attach());
        let result = if *this.lazy {
            let scope = this.scope.take().expect(BACK);
            let inner = this.inner;
            let (scope, poll) = PolledScope::run(scope, || inner.poll(cx));
            *this.scope = Some(scope);
            ready!(poll)
        } else {
            let _entered = this.scope.as_ref().expect(BACK).span().0.enter();
            ready!(this.inner.poll(cx))
        };
        let scope = &**this.scope.as_ref().expect(BACK);
        let status = result.as_ref().map(|r| r.status().as_u16()).unwrap_or(500);
        let route = this.route.get();
        let method = scope.method;
        let server = scope.otel.span();
        if server.is_recording() {
            let mut attributes = Vec::with_capacity(3);
            attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
            match route {
                Some(route) => {
                    let names = names(method, route);
                    server.update_name(names.span);
                    attributes.push(KeyValue::new("http.route", names.route));
                }
                None => server.update_name(method),
            }
            if status >= 500 {
                attributes.push(KeyValue::new("error.type", i64::from(status).to_string()));
                server.set_status(Status::error(""));
            }
            server.set_attributes(attributes);
            // Ending reads the clock; a span that records nothing has nothing to end.
            server.end();
        }
        if let Some(started) = *this.started {
            let (span, route) = (&scope.span().0, this.route.label());
            tracing::info!(
                target: "chassis::access",
                parent: span,
                method,
                route,
                status,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request completed"
            );
        }
        Poll::Ready(result)
    }
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

/// The span name and route of a matched route, as `&'static str`.
struct RouteNames {
    span: &'static str,
    route: &'static str,
}

/// Built once per route and method and kept: the set is bounded by the service's routes, and a
/// per-request `format!` and copy are measurable.
fn names(method: &'static str, route: &str) -> &'static RouteNames {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    // Route templates of the service's own router, never client input: a fast unkeyed hash.
    type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
    type Names = RwLock<FastMap<&'static str, FastMap<Box<str>, &'static RouteNames>>>;
    static NAMES: OnceLock<Names> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    if let Some(found) = names
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(method)
        .and_then(|routes| routes.get(route))
    {
        return found;
    }
    let built: &'static RouteNames = Box::leak(Box::new(RouteNames {
        span: Box::leak(format!("{method} {route}").into_boxed_str()),
        route: Box::leak(Box::<str>::from(route)),
    }));
    names
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(method)
        .or_default()
        .insert(route.into(), built);
    built
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_use_semconv_names() {
        assert_eq!(version_str(Version::HTTP_11), "1.1");
        assert_eq!(version_str(Version::HTTP_2), "2");
    }

    fn ratio(r: f64) -> Sampler {
        Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
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
    fn unknown_methods_are_bounded() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(method_label(&http::Method::from_bytes(b"PROPFIND").unwrap()), "_OTHER");
    }
}
