//! Answers the errors of the layers inside it with problem+json responses:
//! [`ProblemResponseLayer`], its service [`ProblemResponse`], [`ResponseFuture`] and the
//! mapping itself, [`problem_for`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{PayloadTooLarge, Problem};
use crate::BoxError;
use crate::future::{Answer, Call};
use crate::resilience::{BulkheadFull, CircuitOpen, Elapsed};

/// The problem details answering an error from a chassis layer: `503` for a timeout, a full
/// bulkhead or an open circuit breaker (with `Retry-After`), `413` for a body over the limit,
/// `500` for anything unknown (logged at ERROR, with no internals in the response).
///
/// ```
/// use chassis::resilience::Elapsed;
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
        .with_extension("limit_bytes", e.limit());
    }
    tracing::error!(error = %error, "request failed with an unexpected error");
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error")
}

/// Turns the errors of the layers inside it into problem+json responses (see [`problem_for`]),
/// so the service as a whole never fails and every rejection is a proper HTTP answer. Client
/// errors answered without problem details become problems too: an empty `404` or `405`
/// (axum's own for an unknown path or method, or a handler's bare status) and a `text/plain`
/// rejection (an extractor's "Failed to parse the request body as JSON"), whose text becomes
/// the `detail`. An inner
/// service that fails its readiness answers the next request with the problem for that error.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use chassis::http::ProblemResponseLayer;
/// use chassis::resilience::TimeoutLayer;
/// use tower::ServiceBuilder;
///
/// let app = ServiceBuilder::new()
///     .layer(ProblemResponseLayer)
///     .layer(TimeoutLayer::new(Duration::from_secs(10)))
///     .service(Router::<()>::new().route("/", get(|| async { "hi" })));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemResponseLayer;

impl<S> Layer<S> for ProblemResponseLayer {
    type Service = ProblemResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProblemResponse { inner, unready: None }
    }
}

/// The service of [`ProblemResponseLayer`].
#[derive(Debug)]
pub struct ProblemResponse<S> {
    inner: S,
    /// The error the inner service's readiness failed with, answered to the next call.
    unready: Option<BoxError>,
}

impl<S: Clone> Clone for ProblemResponse<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            unready: None,
        }
    }
}

impl<S, B> Service<Request<B>> for ProblemResponse<S>
where
    S: Service<Request<B>, Response = Response>,
    S::Error: Into<BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Err(error) = ready!(self.inner.poll_ready(cx)) {
            self.unready = Some(error.into());
        }
        Poll::Ready(Ok(()))
    }

    #[inline(always)]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = match self.unready.take() {
            None => Call::called(ErrorAsProblem {
                future: self.inner.call(request),
            }),
            Some(error) => Call::answered(Unready(error)),
        };
        ResponseFuture { call }
    }
}

pin_project! {
    /// The response future of [`ProblemResponse`].
    pub struct ResponseFuture<F> {
        #[pin]
        call: Call<ErrorAsProblem<F>, Unready>,
    }
}

/// The inner service's readiness error, answered with its problem.
struct Unready(BoxError);

impl Answer<Result<Response, Infallible>> for Unready {
    fn into_output(self) -> Result<Response, Infallible> {
        Ok(problem_for(&*self.0).into_response())
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().call.poll(cx)
    }
}

pin_project! {
    /// The inner future, its error answered with [`problem_for`].
    struct ErrorAsProblem<F> {
        #[pin]
        future: F,
    }
}

impl<F, E> Future for ErrorAsProblem<F>
where
    F: Future<Output = Result<Response, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response, Infallible>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match ready!(self.project().future.poll(cx)) {
            Ok(response) => super::plain_error::as_problem(response),
            Err(error) => problem_for(&*error.into()).into_response(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    #[test]
    fn unknown_errors_are_an_opaque_500() {
        let problem = problem_for(&std::io::Error::other("db password is hunter2"));
        assert_eq!(problem.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(problem.detail().is_none(), "no internals leak to the client");
    }

    /// A service whose readiness fails with an open circuit.
    #[derive(Clone)]
    struct Unready;

    impl Service<Request<Body>> for Unready {
        type Response = Response;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Err(Box::new(CircuitOpen {
                breaker: "downstream".into(),
                state: crate::resilience::circuit_breaker::State::Open,
                retry_after: std::time::Duration::from_secs(7),
            })))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            unreachable!("an unready service is not called")
        }
    }

    #[tokio::test]
    async fn a_readiness_error_is_answered_not_dropped() {
        let response = ProblemResponseLayer
            .layer(Unready)
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");
    }
}
