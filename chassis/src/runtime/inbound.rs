//! The inbound middleware stack, assembled once around the whole router: [`Inbound`] and its
//! [`ResponseFuture`].

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
use tower::util::{Either, MapFuture};
use tower::{Layer, Service, ServiceExt as _};

use super::ChassisConfig;
use crate::http::{
    BodyLimit, BodyLimitLayer, CaptureRouteLayer, ProblemResponse, ProblemResponseLayer, RecoverPanic,
    RecoverPanicLayer,
};
use crate::identity::{VerifyIdentity, VerifyIdentityLayer};
use crate::metrics::{HttpMetrics, HttpMetricsLayer};
use crate::resilience::{Bulkhead, BulkheadConfig, BulkheadLayer, RateLimit, RateLimitLayer, Timeout, TimeoutLayer};
use crate::telemetry::{SetRequestId, SetRequestIdLayer, Trace, TraceLayer};

type Routes = Either<<DefaultBodyLimit as Layer<Router>>::Service, Router>;
type Guarded = Timeout<BodyLimit<RecoverPanic<Routes>>>;
type Unboxed = Either<RateLimit<Guarded>, Guarded>;
type UnboxedFuture = <Unboxed as Service<Request<Body>>>::Future;
/// The body limit axum's extractors apply when no `DefaultBodyLimit` says otherwise.
const AXUM_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The inner layers' and the router's future (with the timeout's timer), boxed once: every
/// layer above returns its own future by value, and without the box each would copy them again.
type Limited = MapFuture<Unboxed, fn(UnboxedFuture) -> Pin<Box<UnboxedFuture>>>;
type Shed = Either<Bulkhead<Limited>, Limited>;
type Identified = VerifyIdentity<Shed>;
type Observed = Either<HttpMetrics<ProblemResponse<Identified>>, ProblemResponse<Identified>>;
type Stack = SetRequestId<Trace<Observed>>;

/// A service's router wrapped in the chassis' inbound stack, outermost first (the order and the
/// reason for each position are in the architecture guide):
///
/// request id > trace > metrics > problem responses > identity > load shedding > rate limit
/// (when `[http.rate_limit]` is set) > timeout > body limit > catch panic > router (which
/// records the matched route).
///
/// The runtime builds this for you; build it yourself to serve with your own server, or to
/// measure it (see `benches/`).
///
/// ```
/// use axum::{Router, routing::get};
/// use chassis::runtime::Inbound;
///
/// let routes = Router::new().route("/", get(|| async { "hi" }));
/// let service = Inbound::new(routes, &Default::default());
/// ```
#[derive(Clone)]
pub struct Inbound {
    stack: Stack,
    admin: Option<Router>,
    remote: Option<SocketAddr>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("admin_shared", &self.admin.is_some())
            .finish_non_exhaustive()
    }
}

impl Inbound {
    /// Wraps `routes` in the stack configured by `config` (`[http]`, `[telemetry]`, `[metrics]`).
    pub fn new(routes: Router, config: &ChassisConfig) -> Self {
        let http = &config.http;
        // Only what needs the matched route sits on the routes (a layer there costs a boxed
        // clone per request); everything else wraps the router once. Our BodyLimit answers
        // declared lengths up front; axum's extractors cap chunked bodies while the handler
        // reads them, at DefaultBodyLimit's value or their own 2 MiB. At 2 MiB the layer would
        // only repeat that default, at the price of an extension per request.
        // `with_state(())` turns every handler into its service now: a router served as it is
        // does that per request (boxing the handler, and the route layer around it, each time).
        let routes = routes.layer(CaptureRouteLayer).with_state(());
        let routes: Routes = match http.body_limit.as_usize() {
            AXUM_BODY_LIMIT => Either::Right(routes),
            limit => Either::Left(DefaultBodyLimit::max(limit).layer(routes)),
        };
        let caught = RecoverPanicLayer.layer(routes);
        let guarded: Guarded =
            TimeoutLayer::new(http.request_timeout).layer(BodyLimitLayer::new(http.body_limit.bytes()).layer(caught));
        let unboxed: Unboxed = match &http.rate_limit {
            Some(rate_limit) => Either::Left(
                RateLimitLayer::new("http_server", rate_limit.clone())
                    .expect("`http.rate_limit` is validated when the configuration loads")
                    .layer(guarded),
            ),
            None => Either::Right(guarded),
        };
        let limited: Limited = MapFuture::new(unboxed, Box::pin as fn(UnboxedFuture) -> Pin<Box<UnboxedFuture>>);
        let shed: Shed = if http.max_concurrent_requests > 0 {
            let bulkhead = BulkheadConfig {
                max_concurrent: http.max_concurrent_requests,
                ..BulkheadConfig::default()
            };
            Either::Left(
                BulkheadLayer::new("http_server", bulkhead)
                    .expect("a positive max_concurrent_requests is a valid bulkhead")
                    .layer(limited),
            )
        } else {
            Either::Right(limited)
        };
        let identified = VerifyIdentityLayer::new(&config.identity)
            .expect("`[identity]` is validated when the configuration loads")
            .layer(shed);
        let problems = ProblemResponseLayer.layer(identified);
        let observed: Observed = if config.metrics.enabled {
            Either::Left(HttpMetricsLayer::new().layer(problems))
        } else {
            Either::Right(problems)
        };
        let traced = TraceLayer::new()
            .access_log(config.telemetry.access_log)
            .layer(observed);
        Self {
            stack: SetRequestIdLayer::new().layer(traced),
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

/// An empty extensions map with room for what a request gathers on its way to the handler
/// without growing: the stack's own (`ConnectInfo`, `RequestId`, `MatchedRoute`) and axum's
/// (`OriginalUri`, `MatchedPath`, the path parameters). A map starts with room for three and
/// would be rebuilt at the fourth, on every request.
fn presized_extensions() -> http::Extensions {
    #[derive(Clone)]
    struct Room<const N: usize>;
    static EMPTY: std::sync::OnceLock<http::Extensions> = std::sync::OnceLock::new();
    EMPTY
        .get_or_init(|| {
            let mut extensions = http::Extensions::new();
            // Four entries grow the map to hold seven; removing them keeps that size.
            extensions.insert(Room::<0>);
            extensions.insert(Room::<1>);
            extensions.insert(Room::<2>);
            extensions.insert(Room::<3>);
            extensions.remove::<Room<0>>();
            extensions.remove::<Room<1>>();
            extensions.remove::<Room<2>>();
            extensions.remove::<Room<3>>();
            extensions
        })
        .clone()
}

/// `true` for the paths the admin router answers.
pub(crate) fn is_admin_path(path: &str) -> bool {
    path == "/metrics" || path == "/circuit-breakers" || path == "/log-filter" || path.starts_with("/health/")
}

impl Service<Request<Body>> for Inbound {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <Stack as Service<Request<Body>>>::poll_ready(&mut self.stack, cx)
    }

    #[inline(always)]
    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The listener's few entries (the URL scheme, an upgrade) move into a presized map.
        if request.extensions().len() < 3 {
            let mut extensions = presized_extensions();
            extensions.extend(std::mem::take(request.extensions_mut()));
            *request.extensions_mut() = extensions;
        }
        if let Some(remote) = self.remote {
            request.extensions_mut().insert(ConnectInfo(remote));
        }
        if let Some(admin) = &self.admin
            && is_admin_path(request.uri().path())
        {
            return ResponseFuture {
                state: InboundState::Admin {
                    inner: Box::pin(admin.clone().oneshot(request)),
                },
            };
        }
        ResponseFuture {
            state: InboundState::Stack {
                inner: self.stack.call(request),
            },
        }
    }
}

pin_project! {
    /// The response future of [`Inbound`].
    pub struct ResponseFuture {
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
        // Boxed: the rare admin request (with `admin.shared`) must not make every request's
        // future as large as a pending request.
        Admin {
            inner: Pin<Box<tower::util::Oneshot<Router, Request<Body>>>>,
        },
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            InboundStateProj::Stack { inner } => inner.poll(cx),
            InboundStateProj::Admin { inner } => inner.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use http::StatusCode;

    /// The status of posting `len` bytes without a `Content-Length` (so only the extractor's
    /// limit can stop it) under `http.body_limit = limit`.
    async fn post_undeclared(limit: &str, len: usize) -> StatusCode {
        let config =
            super::super::Config::<()>::load(&crate::config::ConfigLoader::new().set("http.body_limit", limit))
                .expect("config");
        let routes = Router::new().route(
            "/echo",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
        let request = Request::post("/echo").body(Body::from(vec![b'x'; len])).unwrap();
        assert!(request.headers().get(http::header::CONTENT_LENGTH).is_none());
        let response = Inbound::new(routes, &config.chassis).oneshot(request).await.unwrap();
        response.status()
    }

    #[derive(Clone)]
    struct FromTheServer(&'static str);

    #[tokio::test]
    async fn handlers_see_the_extensions_of_the_server_and_none_of_the_presizing() {
        assert!(presized_extensions().is_empty());
        assert_eq!(presized_extensions().len(), 0);
        let routes = Router::new().route(
            "/",
            axum::routing::get(|request: Request<Body>| async move {
                let extensions = request.extensions();
                // Ours (request id, route slot) and axum's (original URI, matched path) at least.
                assert!(extensions.len() >= 4, "{extensions:?}");
                extensions
                    .get::<FromTheServer>()
                    .map(|e| e.0)
                    .unwrap_or("missing")
                    .to_owned()
            }),
        );
        let service = Inbound::new(routes, &Default::default());
        for given in [None, Some(FromTheServer("kept"))] {
            let mut request = Request::get("/").body(Body::empty()).unwrap();
            if let Some(extension) = given.clone() {
                request.extensions_mut().insert(extension);
            }
            let response = service.clone().oneshot(request).await.unwrap();
            let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
            assert_eq!(body, given.map(|e| e.0).unwrap_or("missing"));
        }
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_are_capped_at_the_configured_limit() {
        const MIB: usize = 1024 * 1024;
        assert_eq!(post_undeclared("2MiB", 2 * MIB).await, StatusCode::OK);
        assert_eq!(
            post_undeclared("2MiB", 2 * MIB + 1).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(post_undeclared("1KiB", 1024).await, StatusCode::OK);
        assert_eq!(post_undeclared("1KiB", 1025).await, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            post_undeclared("4MiB", 3 * MIB).await,
            StatusCode::OK,
            "above axum's own default"
        );
        assert_eq!(
            post_undeclared("4MiB", 4 * MIB + 1).await,
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
