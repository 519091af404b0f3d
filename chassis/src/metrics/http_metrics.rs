//! RED metrics for inbound HTTP: [`HttpMetricsLayer`], its service [`HttpMetrics`] and
//! [`ResponseFuture`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use metrics::{Gauge, Histogram};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{HTTP_SERVER_ACTIVE_REQUESTS, HTTP_SERVER_REQUEST_DURATION};
use crate::http::{MatchedRoute, method_label, status_label, url_scheme};

/// RED metrics for inbound HTTP: `http_server_request_duration_seconds` (histogram by method,
/// matched route and status) and `http_server_active_requests` (gauge by method).
///
/// The route label is the matched route template, or `unmatched`: never the raw path, so a
/// scanner walking random URLs adds one series, not one per URL. The router needs
/// [`CaptureRouteLayer`](crate::http::CaptureRouteLayer) (the runtime adds it).
///
/// ```
/// use axum::{Router, routing::get};
/// use chassis::http::CaptureRouteLayer;
/// use chassis::metrics::HttpMetricsLayer;
/// use tower::ServiceBuilder;
///
/// let router: Router = Router::new().route("/orders/{id}", get(|| async { "order" })).layer(CaptureRouteLayer);
/// let app = ServiceBuilder::new().layer(HttpMetricsLayer::new()).service(router);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpMetricsLayer {
    _private: (),
}

impl HttpMetricsLayer {
    /// The layer.
    pub fn new() -> Self {
        // The clock calibrates itself on first use (under a millisecond): now, not in a request.
        quanta::Instant::now();
        Self::default()
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics { inner }
    }
}

/// The service of [`HttpMetricsLayer`].
#[derive(Debug, Clone)]
pub struct HttpMetrics<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for HttpMetrics<S>
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
        let route = MatchedRoute::attach(&mut request);
        let method = method_label(request.method());
        let https = url_scheme(&request) == "https";
        let active = active_gauge(method);
        active.increment(1.0);
        ResponseFuture {
            inner: self.inner.call(request),
            guard: Outcome {
                active,
                method,
                https,
                route,
                started: quanta::Instant::now(),
                recorded: false,
            },
        }
    }
}

// Handles are looked up in the recorder once per series and kept: a registry lookup with
// labels costs an allocation and a hash per request. (So the recorder must be installed before
// the first request, as the runtime does.)
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "_OTHER",
];

fn method_index(method: &'static str) -> usize {
    METHODS.iter().position(|m| *m == method).unwrap_or(METHODS.len() - 1)
}

fn active_gauge(method: &'static str) -> &'static Gauge {
    static GAUGES: OnceLock<Vec<Gauge>> = OnceLock::new();
    let gauges = GAUGES.get_or_init(|| {
        METHODS
            .iter()
            .map(|m| metrics::gauge!(HTTP_SERVER_ACTIVE_REQUESTS, "http_request_method" => *m))
            .collect()
    });
    &gauges[method_index(method)]
}

// Keys are route templates of the service's own router, never client input: a fast unkeyed
// hash is safe here, and SipHash on every request is measurable.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
/// Method, status and scheme of a series packed into one word (see [`series_key`]), then its route.
type DurationHandles = FastMap<u32, FastMap<Box<str>, Histogram>>;

/// The method's index, the status and whether the scheme is https in one word: one hash per
/// request rather than one per field.
fn series_key(method: &'static str, status: u16, https: bool) -> u32 {
    (method_index(method) as u32) << 17 | u32::from(status) << 1 | u32::from(https)
}

thread_local! {
    // Each thread keeps the handles its requests used, so a request finds its series without
    // a lock: a shared read lock's counter would move between cores on every request. The
    // recorder is asked once per series and thread; the set is bounded by routes x methods x
    // statuses.
    static DURATIONS: RefCell<DurationHandles> = RefCell::new(DurationHandles::default());
}

/// The status of a request whose client went away before the response: no status code, and
/// `error_type="client_closed"`.
const CLIENT_CLOSED: u16 = 0;

fn record_duration(method: &'static str, route: &str, status: u16, https: bool, seconds: f64) {
    let register = || {
        let (status_code, error_type) = match status {
            CLIENT_CLOSED => ("", "client_closed"),
            500.. => (status_label(status), status_label(status)),
            _ => (status_label(status), ""),
        };
        metrics::histogram!(
            HTTP_SERVER_REQUEST_DURATION,
            "http_request_method" => method,
            "http_route" => route.to_owned(),
            "http_response_status_code" => status_code,
            "url_scheme" => if https { "https" } else { "http" },
            "error_type" => error_type,
        )
    };
    let cached = DURATIONS.try_with(|handles| {
        let mut handles = handles.borrow_mut();
        let routes = handles.entry(series_key(method, status, https)).or_default();
        match routes.get(route) {
            Some(histogram) => histogram.record(seconds),
            None => routes.entry(route.into()).or_insert_with(register).record(seconds),
        }
    });
    // A future polled while its thread shuts down, after the cache is gone.
    if cached.is_err() {
        register().record(seconds);
    }
}

/// A request in progress: decrements the in-flight gauge and records the duration however the
/// request ends, a client that went away (its future dropped) included.
struct Outcome {
    active: &'static Gauge,
    method: &'static str,
    https: bool,
    route: MatchedRoute,
    // The TSC clock (`quanta`): a third of `std::time::Instant`'s cost per reading here.
    started: quanta::Instant,
    recorded: bool,
}

impl Outcome {
    fn record(&mut self, status: u16) {
        self.recorded = true;
        let seconds = (quanta::Instant::now() - self.started).as_secs_f64();
        record_duration(self.method, self.route.label(), status, self.https, seconds);
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.active.decrement(1.0);
        if !self.recorded {
            self.record(CLIENT_CLOSED);
        }
    }
}

pin_project! {
    /// The response future of [`HttpMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Outcome,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        this.guard
            .record(result.as_ref().map(|r| r.status().as_u16()).unwrap_or(500));
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_different_threads_count_in_one_series() {
        let handle = super::super::install(&Default::default(), &Default::default()).unwrap();
        const ROUTE: &str = "/per-thread/{id}";
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    record_duration("GET", ROUTE, 200, false, 0.001);
                    record_duration("GET", ROUTE, 200, false, 0.002);
                });
            }
        });
        let text = handle.render();
        let count = text
            .lines()
            .find(|line| line.starts_with("http_server_request_duration_seconds_count") && line.contains(ROUTE))
            .and_then(|line| line.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no series for {ROUTE} in\n{text}"));
        assert_eq!(count, "8", "{text}");
    }
}
