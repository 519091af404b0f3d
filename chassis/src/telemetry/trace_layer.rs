use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::ConnectInfo;
use http::{Request, Response, Version, header};
use opentelemetry::trace::TraceContextExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::RequestId;
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
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer {
    access_log: bool,
}

impl TraceLayer {
    /// The layer, without access log lines.
    pub fn new() -> Self {
        Self::default()
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
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct TraceService<S> {
    inner: S,
    access_log: bool,
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

fn make_span<B>(request: &Request<B>, method: &'static str) -> Span {
    let span = tracing::info_span!(
        target: "chassis::http",
        "HTTP request",
        otel.kind = "server",
        otel.name = method,
        http.request.method = method,
        url.path = request.uri().path(),
        url.scheme = request.uri().scheme_str().unwrap_or("http"),
        network.protocol.version = version_str(request.version()),
        user_agent.original = Empty,
        client.address = Empty,
        request_id = Empty,
        http.route = Empty,
        http.response.status_code = Empty,
        otel.status_code = Empty,
        error.type = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    // Must happen before the span is first entered: that is when the OpenTelemetry span starts.
    let _ = span.set_parent(super::extract_context(request.headers()));
    if let Some(agent) = request.headers().get(header::USER_AGENT).and_then(|v| v.to_str().ok()) {
        span.record("user_agent.original", agent);
    }
    if let Some(ConnectInfo(addr)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
        span.record("client.address", tracing::field::display(addr.ip()));
    }
    if let Some(id) = request.extensions().get::<RequestId>() {
        span.record("request_id", id.as_str());
    }
    span
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let route = MatchedRoute::attach(&mut request);
        let method = method_label(request.method());
        let span = make_span(&request, method);
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        TraceFuture {
            inner,
            span,
            route,
            method,
            started: self.access_log.then(Instant::now),
        }
    }
}

pin_project! {
    /// Response future of [`TraceService`].
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        route: MatchedRoute,
        method: &'static str,
        started: Option<Instant>,
    }
}

impl<F, B, E> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx))
        };
        let span = &*this.span;
        let status = result.as_ref().map(|r| r.status().as_u16()).unwrap_or(500);
        if !span.is_disabled() {
            span.record("http.response.status_code", status);
            if let Some(route) = this.route.get() {
                span.record("http.route", route);
                // The OpenTelemetry span has started by now; its name is set directly.
                span.context().span().update_name(span_name(this.method, route));
            }
            if status >= 500 {
                span.record("otel.status_code", "error");
                span.record("error.type", status);
            }
        }
        if let Some(started) = this.started {
            tracing::info!(
                target: "chassis::access",
                parent: span,
                method = this.method,
                route = this.route.label(),
                status,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request completed"
            );
        }
        Poll::Ready(result)
    }
}

/// `"{method} {route}"`, built once per route and method and kept: the set is bounded by the
/// service's routes, and a per-request `format!` is measurable.
fn span_name(method: &'static str, route: &str) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    type Names = RwLock<HashMap<(&'static str, Box<str>), &'static str>>;
    static NAMES: OnceLock<Names> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    let key = (method, Box::<str>::from(route));
    if let Some(name) = names.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return name;
    }
    let name: &'static str = Box::leak(format!("{method} {route}").into_boxed_str());
    names.write().unwrap_or_else(|e| e.into_inner()).insert(key, name);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_use_semconv_names() {
        assert_eq!(version_str(Version::HTTP_11), "1.1");
        assert_eq!(version_str(Version::HTTP_2), "2");
    }

    #[test]
    fn unknown_methods_are_bounded() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        assert_eq!(method_label(&http::Method::from_bytes(b"PROPFIND").unwrap()), "_OTHER");
    }
}
