//! The inbound middleware stack, assembled once around the whole router.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::response::Response;
use http::Request;
use pin_project_lite::pin_project;
use tower::util::{Either, MapResponse};
use tower::{Layer, Service, ServiceExt as _};
use tower_http::catch_panic::{CatchPanic, CatchPanicLayer};

use crate::config::ChassisConfig;
use crate::http::{BodyLimit, BodyLimitLayer, CaptureRouteLayer, PanicResponse, ProblemLayer, ProblemService};
use crate::metrics::{HttpMetrics, HttpMetricsLayer};
use crate::resilience::bulkhead::{Bulkhead, BulkheadConfig, BulkheadLayer};
use crate::resilience::rate_limit::{RateLimit, RateLimitLayer};
use crate::resilience::timeout::{Timeout, TimeoutLayer};
use crate::telemetry::{RequestIdLayer, SetRequestId, TraceLayer, TraceService};

type PanicBody = tower_http::body::UnsyncBoxBody<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>;
type Guarded =
    Timeout<BodyLimit<MapResponse<CatchPanic<Router, PanicResponse>, fn(http::Response<PanicBody>) -> Response>>>;
type Limited = Either<RateLimit<Guarded>, Guarded>;
type Shed = Either<Bulkhead<Limited>, Limited>;
type Observed = Either<HttpMetrics<ProblemService<Shed>>, ProblemService<Shed>>;
type Stack = SetRequestId<TraceService<Observed>>;

/// A service's router wrapped in the chassis' inbound stack, outermost first:
///
/// request id > trace > metrics > problem responses > load shedding > rate limit (when
/// `[http.rate_limit]` is set) > timeout > body limit > catch panic > router (which records the
/// matched route).
///
/// The runtime builds this for you; build it yourself to serve with your own server, or to
/// measure it (see `benches/`).
///
/// ```
/// use axum::{Router, routing::get};
/// use chassis::runtime::InboundService;
///
/// let routes = Router::new().route("/", get(|| async { "hi" }));
/// let service = InboundService::new(routes, &Default::default());
/// ```
#[derive(Clone)]
pub struct InboundService {
    stack: Stack,
    admin: Option<Router>,
    remote: Option<SocketAddr>,
}

impl std::fmt::Debug for InboundService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundService")
            .field("admin_shared", &self.admin.is_some())
            .finish_non_exhaustive()
    }
}

fn box_panic_body(response: http::Response<PanicBody>) -> Response {
    response.map(Body::new)
}

impl InboundService {
    /// Wraps `routes` in the stack configured by `config` (`[http]`, `[telemetry]`, `[metrics]`).
    pub fn new(routes: Router, config: &ChassisConfig) -> Self {
        let http = &config.http;
        // Only what needs the matched route sits on the routes; everything else wraps the router
        // once. Our BodyLimit answers declared lengths up front; DefaultBodyLimit (which also
        // lifts axum's own 2 MiB default) catches chunked bodies while the handler reads them.
        let routes = routes
            .layer(CaptureRouteLayer)
            .layer(DefaultBodyLimit::max(http.body_limit.as_usize()));
        let caught = MapResponse::new(
            CatchPanicLayer::custom(PanicResponse).layer(routes),
            box_panic_body as fn(http::Response<PanicBody>) -> Response,
        );
        let guarded: Guarded =
            TimeoutLayer::new(http.request_timeout).layer(BodyLimitLayer::new(http.body_limit.bytes()).layer(caught));
        let limited: Limited = match &http.rate_limit {
            Some(rate_limit) => Either::Left(
                RateLimitLayer::new("http_server", rate_limit.clone())
                    .expect("validated with the config")
                    .layer(guarded),
            ),
            None => Either::Right(guarded),
        };
        let shed: Shed = if http.max_concurrent_requests > 0 {
            let bulkhead = BulkheadConfig {
                max_concurrent: http.max_concurrent_requests,
                ..BulkheadConfig::default()
            };
            Either::Left(BulkheadLayer::new("http_server", bulkhead).layer(limited))
        } else {
            Either::Right(limited)
        };
        let problems = ProblemLayer.layer(shed);
        let observed: Observed = if config.metrics.enabled {
            Either::Left(HttpMetricsLayer::new().layer(problems))
        } else {
            Either::Right(problems)
        };
        let traced = TraceLayer::new()
            .access_log(config.telemetry.access_log)
            .layer(observed);
        Self {
            stack: RequestIdLayer::new().layer(traced),
            admin: None,
            remote: None,
        }
    }

    /// Serves `admin` (the health and metrics endpoints) from this service as well, outside
    /// the stack: admin requests are not traced, counted, limited or timed out.
    pub fn with_admin(mut self, admin: Router) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Makes the peer address available to handlers as `ConnectInfo<SocketAddr>`.
    pub fn with_remote_addr(mut self, remote: SocketAddr) -> Self {
        self.remote = Some(remote);
        self
    }
}

/// `true` for the paths the admin router answers.
pub(crate) fn is_admin_path(path: &str) -> bool {
    path == "/metrics" || path == "/circuit-breakers" || path.starts_with("/health/")
}

impl Service<Request<Body>> for InboundService {
    type Response = Response;
    type Error = Infallible;
    type Future = InboundFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <Stack as Service<Request<Body>>>::poll_ready(&mut self.stack, cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if let Some(remote) = self.remote {
            request.extensions_mut().insert(ConnectInfo(remote));
        }
        if let Some(admin) = &self.admin
            && is_admin_path(request.uri().path())
        {
            return InboundFuture {
                state: InboundState::Admin {
                    inner: admin.clone().oneshot(request),
                },
            };
        }
        InboundFuture {
            state: InboundState::Stack {
                inner: self.stack.call(request),
            },
        }
    }
}

pin_project! {
    /// Response future of [`InboundService`].
    pub struct InboundFuture {
        #[pin]
        state: InboundState,
    }
}

pin_project! {
    #[project = InboundStateProj]
    enum InboundState {
        Stack {
            #[pin]
            inner: <Stack as Service<Request<Body>>>::Future,
        },
        Admin {
            #[pin]
            inner: tower::util::Oneshot<Router, Request<Body>>,
        },
    }
}

impl Future for InboundFuture {
    type Output = Result<Response, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            InboundStateProj::Stack { inner } => inner.poll(cx),
            InboundStateProj::Admin { inner } => inner.poll(cx),
        }
    }
}
