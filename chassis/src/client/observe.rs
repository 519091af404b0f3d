//! The client's observer, below its retries: one client span per attempt (its context
//! injected as W3C headers) and the duration histogram per attempt. [`ObserveLayer`], its service [`Observe`] and
//! [`ResponseFuture`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::BoxError;
use crate::http::{method_label, status_label};
use crate::resilience::{CircuitOpen, Elapsed};

/// Name of the outbound request histogram.
pub const HTTP_CLIENT_REQUEST_DURATION: &str = "http_client_request_duration_seconds";

/// Traces and measures outbound requests: a client span named after the method, carrying the
/// OpenTelemetry HTTP client attributes, whose context goes out in `traceparent` / `tracestate`;
/// and `http_client_request_duration_seconds{client, http_request_method, server_address,
/// http_response_status_code, error_type}`.
///
/// ```
/// use chassis::client::ObserveLayer;
///
/// let layer = ObserveLayer::new("payments");
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    client: Arc<str>,
}

impl ObserveLayer {
    /// A layer labelling its metrics with `client`.
    pub fn new(client: impl Into<Arc<str>>) -> Self {
        Self { client: client.into() }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            client: self.client.clone(),
        }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    client: Arc<str>,
}

impl<S, B, ResBody> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let method = method_label(request.method());
        let host = request.uri().host().unwrap_or("").to_owned();
        let span = tracing::info_span!(
            target: "chassis::client",
            "HTTP client request",
            otel.kind = "client",
            otel.name = method,
            http.request.method = method,
            server.address = %host,
            url.full = %request.uri(),
            client = %self.client,
            otel.status_code = Empty,
            error.type = Empty,
        );
        if !span.is_disabled() {
            if let Some(crate::resilience::ResendCount(resent)) = request.extensions().get().copied()
                && resent > 0
            {
                span.set_attribute("http.request.resend_count", i64::from(resent));
            }
            // Integers through the OpenTelemetry API: as `tracing` fields they would arrive as
            // strings, and `http.response.status_code >= 500` would miss them.
            let default_port = if request.uri().scheme_str() == Some("https") {
                443
            } else {
                80
            };
            span.set_attribute(
                "server.port",
                i64::from(request.uri().port_u16().unwrap_or(default_port)),
            );
            crate::telemetry::inject_context(&span.context(), request.headers_mut());
        }
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            span,
            method,
            host,
            client: self.client.clone(),
            started: Instant::now(),
            recorded: false,
        }
    }
}

pin_project! {
    /// The response future of [`Observe`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        method: &'static str,
        host: String,
        client: Arc<str>,
        started: Instant,
        recorded: bool,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        // An attempt cut short from above (the total timeout, the caller gone) still counts.
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.recorded {
                return;
            }
            this.span.record("otel.status_code", "error");
            this.span.record("error.type", "cancelled");
            record(this.client, this.method, std::mem::take(this.host), "", "cancelled", *this.started);
        }
    }
}

fn record(
    client: &str,
    method: &'static str,
    host: String,
    status: &'static str,
    error: &'static str,
    started: Instant,
) {
    metrics::histogram!(
        HTTP_CLIENT_REQUEST_DURATION,
        "client" => client.to_owned(),
        "http_request_method" => method,
        "server_address" => host,
        "http_response_status_code" => status,
        "error_type" => error,
    )
    .record(started.elapsed().as_secs_f64());
}

fn error_type(error: &BoxError) -> &'static str {
    if error.downcast_ref::<Elapsed>().is_some() {
        "timeout"
    } else if error.downcast_ref::<CircuitOpen>().is_some() {
        "circuit_open"
    } else {
        "connection"
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            ready!(this.inner.poll(cx)).map_err(Into::into)
        };
        let (status, error) = match &result {
            Ok(response) => (status_label(response.status().as_u16()), ""),
            Err(error) => ("", error_type(error)),
        };
        if !this.span.is_disabled() {
            if let Ok(response) = &result {
                this.span
                    .set_attribute("http.response.status_code", i64::from(response.status().as_u16()));
                if response.status().is_server_error() {
                    this.span.record("otel.status_code", "error");
                    this.span.record("error.type", status);
                }
            } else {
                this.span.record("otel.status_code", "error");
                this.span.record("error.type", error);
            }
        }
        *this.recorded = true;
        record(
            this.client,
            this.method,
            std::mem::take(this.host),
            status,
            error,
            *this.started,
        );
        Poll::Ready(result)
    }
}
