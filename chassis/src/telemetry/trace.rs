//! One server span per request: [`TraceLayer`], its service [`Trace`] and [`ResponseFuture`].

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::ConnectInfo;
use http::{Request, Response, Version, header};
use opentelemetry::trace::{SpanBuilder, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context as OtelContext, KeyValue};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::RequestId;
use super::request_span::{LAZY_SPANS, PolledScope, RequestScope};
use super::route_names::names;
use super::span_source::{SERVER_SPANS, SourceRef, SpanSource, propagated, span_source};
use crate::http::{MatchedRoute, method_label};

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
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            inner,
            access_log: self.access_log,
            source: self.source.clone(),
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    access_log: bool,
    // Cloned with the service for every request (hyper does).
    source: SourceRef,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Trace<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
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
        let span = tracer.build_with_context(
            SpanBuilder::from_name(span_method(method)).with_kind(SpanKind::Server),
            &parent,
        );
        parent.with_span(span)
    }
    let cx = match source {
        #[cfg(any(feature = "otlp-http", feature = "otlp-grpc"))]
        SpanSource::Recorded { spans, sampling } => {
            let context = super::span_source::decide(sampling, &parent, method);
            if !context.is_sampled() {
                return parent.with_remote_span_context(context);
            }
            let fields = super::server_span::RequestFields::of(request, method, version_str(request.version()));
            return spans.start(parent, context, span_method(method), fields);
        }
        SpanSource::Global(tracer) => start(tracer, parent, method),
        SpanSource::Propagated(sampling) => return propagated(sampling, parent, method),
    };
    let span = cx.span();
    // Attributes cost allocations; only a span that records them gets them.
    if span.is_recording() {
        let mut attributes = Vec::with_capacity(10);
        attributes.push(KeyValue::new("http.request.method", method));
        if method == "_OTHER" {
            attributes.push(KeyValue::new(
                "http.request.method_original",
                request.method().as_str().to_owned(),
            ));
        }
        attributes.push(KeyValue::new("url.path", request.uri().path().to_owned()));
        attributes.push(KeyValue::new("url.scheme", crate::http::url_scheme(request)));
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

/// The method as it starts a span name: semconv names a span of an unknown method `HTTP`.
fn span_method(method: &'static str) -> &'static str {
    match method {
        "_OTHER" => "HTTP",
        known => known,
    }
}

impl<S, B, ResBody> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

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
        ResponseFuture {
            inner,
            scope: Some(scope),
            lazy,
            attach,
            route,
            started: self.access_log.then(Instant::now),
            finished: false,
        }
    }
}

pin_project! {
    /// The response future of [`Trace`]. Dropped before the response (the client went away),
    /// it still ends the server span, with the route and `error.type = "client_closed"`.
    pub struct ResponseFuture<F> {
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
        finished: bool,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.finished {
                return;
            }
            if let Some(scope) = this.scope.as_ref() {
                let server = scope.otel.span();
                if server.is_recording() {
                    let mut attributes = Attributes::new();
                    attributes.push(KeyValue::new("error.type", "client_closed"));
                    name_by_route(&server, scope.method, this.route.get(), &mut attributes);
                    server.set_attributes(attributes);
                    server.set_status(Status::error("the client closed the connection before the response"));
                    server.end();
                }
            }
        }
    }
}

/// The attributes a server span gets when it ends.
type Attributes = smallvec::SmallVec<[KeyValue; 3]>;

/// Names the server span by its route (`GET /orders/{id}`) and records `http.route`, or by
/// the method alone for an unmatched request.
fn name_by_route(
    server: &opentelemetry::trace::SpanRef<'_>,
    method: &'static str,
    route: Option<&str>,
    attributes: &mut Attributes,
) {
    match route {
        Some(route) => {
            let names = names(span_method(method), route);
            server.update_name(names.span);
            attributes.push(KeyValue::new("http.route", names.route));
        }
        None => server.update_name(span_method(method)),
    }
}

impl<F, B, E> Future for ResponseFuture<F>
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
        *this.finished = true;
        if server.is_recording() {
            // On the stack: the span takes them one by one.
            let mut attributes = Attributes::new();
            attributes.push(KeyValue::new("http.response.status_code", i64::from(status)));
            name_by_route(&server, method, route, &mut attributes);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_use_semconv_names() {
        assert_eq!(version_str(Version::HTTP_11), "1.1");
        assert_eq!(version_str(Version::HTTP_2), "2");
    }
}
