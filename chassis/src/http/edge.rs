//! The HTTP edge: errors of the layers become problem+json responses; request bodies are capped;
//! panics become 500s.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::catch_panic::ResponseForPanic;

use super::Problem;
use crate::resilience::BoxError;
use crate::resilience::bulkhead::BulkheadFull;
use crate::resilience::circuit_breaker::CircuitOpen;
use crate::resilience::timeout::Elapsed;

/// The problem details answering an error from a chassis layer: `503` for a timeout or a full
/// bulkhead, `413` for a body over the limit, `500` for anything unknown (logged at ERROR, with
/// no internals in the response).
///
/// ```
/// use chassis::resilience::timeout::Elapsed;
/// use std::time::Duration;
///
/// let problem = chassis::http::problem_for(&Elapsed::new(Duration::from_secs(30)));
/// assert_eq!(problem.status(), http::StatusCode::SERVICE_UNAVAILABLE);
/// assert_eq!(problem.type_uri(), "urn:chassis:problem:timeout");
/// ```
pub fn problem_for(error: &(dyn std::error::Error + 'static)) -> Problem {
    if let Some(e) = error.downcast_ref::<Elapsed>() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "Request timed out").with_detail(format!(
            "the request did not complete within {}",
            crate::config::duration::format(&e.after())
        ));
    }
    if let Some(e) = error.downcast_ref::<BulkheadFull>() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Service overloaded")
            .with_detail(e.to_string())
            .with_retry_after(std::time::Duration::from_secs(1));
    }
    if let Some(e) = error.downcast_ref::<CircuitOpen>() {
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "circuit-open",
            "Dependency unavailable",
        )
        .with_detail(e.to_string())
        .with_retry_after(e.retry_after);
    }
    if let Some(e) = error.downcast_ref::<PayloadTooLarge>() {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Request body too large",
        )
        .with_detail(e.to_string())
        .with_extension("limit_bytes", e.limit);
    }
    tracing::error!(error = %error, "request failed with an unexpected error");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error")
}

/// Turns the errors of the layers inside it into problem+json responses (see [`problem_for`]),
/// so the service as a whole never fails and every rejection is a proper HTTP answer.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use chassis::http::ProblemLayer;
/// use chassis::resilience::timeout::TimeoutLayer;
/// use tower::ServiceBuilder;
///
/// let app = ServiceBuilder::new()
///     .layer(ProblemLayer)
///     .layer(TimeoutLayer::new(Duration::from_secs(10)))
///     .service(Router::<()>::new().route("/", get(|| async { "hi" })));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemLayer;

impl<S> Layer<S> for ProblemLayer {
    type Service = ProblemService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProblemService { inner }
    }
}

/// The service of [`ProblemLayer`].
#[derive(Debug, Clone)]
pub struct ProblemService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for ProblemService<S>
where
    S: Service<Request<B>, Response = Response>,
    S::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ProblemFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A layer that fails readiness fails the call instead; our layers are always ready.
        let _ = ready!(self.inner.poll_ready(cx));
        Poll::Ready(Ok(()))
    }

    // The layers are thin and the request and futures they pass on are large: inlined,
    // they are built in place instead of copied at every layer (docs/src/performance.md).
    #[inline(always)]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        ProblemFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// Response future of [`ProblemService`].
    pub struct ProblemFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, E> Future for ProblemFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().inner.poll(cx)) {
            Ok(response) => response,
            Err(error) => problem_for(&*error.into()).into_response(),
        }))
    }
}

/// The request declared a body larger than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body of {declared} bytes exceeds the limit of {limit} bytes")]
pub struct PayloadTooLarge {
    declared: u64,
    limit: u64,
}

/// Rejects requests whose `Content-Length` exceeds the limit with [`PayloadTooLarge`] (413
/// problem+json at the edge) before the handler runs. Bodies without a length (chunked) are
/// capped by axum's `DefaultBodyLimit`, which the runtime sets to the same limit.
///
/// ```
/// use chassis::http::BodyLimitLayer;
/// let layer = BodyLimitLayer::new(2 * 1024 * 1024);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BodyLimitLayer {
    limit: u64,
}

impl BodyLimitLayer {
    /// A limit of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BodyLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The service of [`BodyLimitLayer`].
#[derive(Debug, Clone)]
pub struct BodyLimit<S> {
    inner: S,
    limit: u64,
}

impl<S, B> Service<Request<B>> for BodyLimit<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BodyLimitFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline(always)]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let state = match declared {
            Some(declared) if declared > self.limit => BodyLimitFutureState::Rejected {
                error: Some(PayloadTooLarge {
                    declared,
                    limit: self.limit,
                }),
            },
            _ => BodyLimitFutureState::Inner {
                inner: self.inner.call(request),
            },
        };
        BodyLimitFuture { state }
    }
}

pin_project! {
    /// Response future of [`BodyLimit`].
    pub struct BodyLimitFuture<F> {
        #[pin]
        state: BodyLimitFutureState<F>,
    }
}

pin_project! {
    #[project = BodyLimitProj]
    enum BodyLimitFutureState<F> {
        /// Within the limit.
        Inner { #[pin] inner: F },
        /// Over the limit.
        Rejected { error: Option<PayloadTooLarge> },
    }
}

impl<F, T, E> Future for BodyLimitFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            BodyLimitProj::Inner { inner } => inner.poll(cx).map_err(Into::into),
            BodyLimitProj::Rejected { error } => {
                Poll::Ready(Err(Box::new(error.take().expect("polled after completion"))))
            }
        }
    }
}

/// Answers a panic in a handler with a 500 problem+json, and logs the panic message at ERROR
/// inside the request's span. [`RecoverPanicLayer`] uses it; it also plugs into tower-http's
/// `CatchPanicLayer::custom`.
#[derive(Debug, Clone, Copy, Default)]
pub struct PanicResponse;

impl ResponseForPanic for PanicResponse {
    type ResponseBody = axum::body::Body;

    fn response_for_panic(&mut self, panic: Box<dyn Any + Send + 'static>) -> http::Response<Self::ResponseBody> {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        tracing::error!(panic = message, "handler panicked");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error").into_response()
    }
}

/// Turns a panic in the inner service (in `call` or while its future runs) into the
/// [`PanicResponse`] 500, so one bad request cannot take the connection or the service down.
///
/// Unlike tower-http's `CatchPanicLayer`, it keeps axum's response body as it is instead of
/// boxing it again: one allocation and one indirection per response less, which the inbound
/// stack's benchmark measures.
///
/// ```
/// use axum::{Router, routing::get};
/// use chassis::http::RecoverPanicLayer;
/// use tower::Layer;
///
/// let router: Router = Router::new().route("/", get(|| async { "fine" }));
/// let service = RecoverPanicLayer.layer(router);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct RecoverPanicLayer;

impl<S> Layer<S> for RecoverPanicLayer {
    type Service = RecoverPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RecoverPanic { inner }
    }
}

/// The service of [`RecoverPanicLayer`].
#[derive(Debug, Clone)]
pub struct RecoverPanic<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for RecoverPanic<S>
where
    S: Service<Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RecoverPanicFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => RecoverPanicFuture {
                state: RecoverState::Running { future },
            },
            Err(panic) => RecoverPanicFuture {
                state: RecoverState::Panicked {
                    response: Some(PanicResponse.response_for_panic(panic)),
                },
            },
        }
    }
}

pin_project! {
    /// Response future of [`RecoverPanic`].
    pub struct RecoverPanicFuture<F> {
        #[pin]
        state: RecoverState<F>,
    }
}

pin_project! {
    #[project = RecoverStateProj]
    enum RecoverState<F> {
        Running { #[pin] future: F },
        Panicked { response: Option<Response> },
    }
}

impl<F, E> Future for RecoverPanicFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            RecoverStateProj::Running { future } => {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(poll) => poll,
                    // The future is not polled again: this answer is final.
                    Err(panic) => Poll::Ready(Ok(PanicResponse.response_for_panic(panic))),
                }
            }
            RecoverStateProj::Panicked { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panic_while_handling_or_in_call_is_a_500_problem() {
        let router = Router::new()
            .route(
                "/async",
                post(|| async {
                    panic!("in the handler");
                    #[allow(unreachable_code)]
                    "never"
                }),
            )
            .route("/fine", post(|| async { "fine" }));
        let app = RecoverPanicLayer.layer(router);
        for (path, status) in [("/async", 500), ("/fine", 200)] {
            let response = app
                .clone()
                .oneshot(Request::post(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), status, "{path}");
        }
        let panics_in_call =
            tower::service_fn(|_: Request<Body>| -> std::future::Ready<Result<Response, Infallible>> {
                panic!("in call")
            });
        let response = RecoverPanicLayer
            .layer(panics_in_call)
            .oneshot(Request::post("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/problem+json");
    }

    #[tokio::test]
    async fn oversized_declared_body_is_a_413_problem() {
        let app = ProblemLayer.layer(BodyLimitLayer::new(10).layer(Router::new().route("/", post(|| async { "ok" }))));
        let response = app
            .clone()
            .oneshot(
                Request::post("/")
                    .header("content-length", "11")
                    .body(Body::from("x".repeat(11)))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], super::super::PROBLEM_JSON);
        let body: serde_json::Value =
            serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 4096).await.unwrap()).unwrap();
        assert_eq!(body["limit_bytes"], 10);

        let response = app
            .oneshot(
                Request::post("/")
                    .header("content-length", "10")
                    .body(Body::from("x".repeat(10)))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn unknown_errors_are_an_opaque_500() {
        let problem = problem_for(&std::io::Error::other("db password is hunter2"));
        assert_eq!(problem.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(problem.detail().is_none(), "no internals leak to the client");
    }
}
