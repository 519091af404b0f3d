//! Answers a panic in the inner service with a 500 problem: [`RecoverPanicLayer`], its service
//! [`RecoverPanic`] and [`ResponseFuture`].

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::catch_panic::ResponseForPanic;

use super::Problem;
use crate::future::{Answer, Call};

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
/// boxing it again: one allocation and one indirection per response less.
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
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        let call = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => Call::called(CatchUnwind { future }),
            Err(panic) => Call::answered(Panicked(panic)),
        };
        ResponseFuture { call }
    }
}

pin_project! {
    /// The response future of [`RecoverPanic`].
    pub struct ResponseFuture<F> {
        #[pin]
        call: Call<CatchUnwind<F>, Panicked>,
    }
}

/// A panic in `call`: answered with the [`PanicResponse`] when the future is polled.
struct Panicked(Box<dyn Any + Send + 'static>);

impl<E> Answer<Result<Response, E>> for Panicked {
    fn into_output(self) -> Result<Response, E> {
        Ok(PanicResponse.response_for_panic(self.0))
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().call.poll(cx)
    }
}

pin_project! {
    /// The inner future, a panic in its `poll` answered with the [`PanicResponse`].
    struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F, E> Future for CatchUnwind<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll,
            // A finished future is not polled again: this answer is final.
            Err(panic) => Poll::Ready(Ok(PanicResponse.response_for_panic(panic))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use http::header;
    use tower::ServiceExt;

    use super::*;

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
}
