//! Rejects requests that declare a body over the limit before the handler runs:
//! [`BodyLimitLayer`], its service [`BodyLimit`] and [`ResponseFuture`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::BoxError;
use crate::future::{Call, ErrInto, Rejection};

/// The request declared a body larger than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body of {declared} bytes exceeds the limit of {limit} bytes")]
pub struct PayloadTooLarge {
    declared: u64,
    limit: u64,
}

impl PayloadTooLarge {
    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }
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
    type Future = ResponseFuture<S::Future>;

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
        let call = match declared {
            Some(declared) if declared > self.limit => Call::answered(Rejection(Box::new(PayloadTooLarge {
                declared,
                limit: self.limit,
            }))),
            _ => Call::called(ErrInto::new(self.inner.call(request))),
        };
        ResponseFuture { call }
    }
}

pin_project! {
    /// The response future of [`BodyLimit`].
    pub struct ResponseFuture<F> {
        #[pin]
        call: Call<ErrInto<F>, Rejection>,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().call.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::post;
    use http::StatusCode;
    use tower::ServiceExt;

    use super::*;
    use crate::http::{PROBLEM_JSON, ProblemResponseLayer};

    #[tokio::test]
    async fn oversized_declared_body_is_a_413_problem() {
        let app = ProblemResponseLayer
            .layer(BodyLimitLayer::new(10).layer(Router::new().route("/", post(|| async { "ok" }))));
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
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
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
}
