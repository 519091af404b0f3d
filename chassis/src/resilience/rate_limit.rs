//! Rate limiting of HTTP requests (GCRA, by the `governor` crate), globally, per client address
//! or per header value (an API key): [`RateLimitLayer`], its service [`RateLimit`] and
//! [`ResponseFuture`].
//!
//! A request over the limit is answered `429` problem+json with `Retry-After` and never reaches
//! the service. Every answer carries the IETF `RateLimit-Policy` and `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy: "api";q=100;w=1` and
//! `RateLimit: "api";r=42;t=1` (requests remaining, seconds until the quota is whole again).
//!
//! All services made by one [`RateLimitLayer`] share its buckets.
//!
//! Metric: `chassis_rate_limit_rejected_total{limiter}`.
//!
//! ```
//! use axum::{Router, routing::get};
//! use chassis::resilience::{RateLimitConfig, RateLimitKey, RateLimitLayer};
//!
//! let mut config = RateLimitConfig::default();
//! config.requests = 100;
//! config.key = RateLimitKey::Header("x-api-key".into());
//! let app: Router = Router::new()
//!     .route("/search", get(|| async { "results" }))
//!     .layer(RateLimitLayer::new("api", config).unwrap());
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{HeaderName, HeaderValue, Request, StatusCode};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tower::{Layer, Service};

use crate::config::{ConfigError, Problems, Validate};
use crate::future::Call;
use crate::problem::{Problem, retry_after_secs};

/// Name of the rejection counter.
pub const REJECTED_TOTAL: &str = "chassis_rate_limit_rejected_total";

/// What requests share a bucket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum RateLimitKey {
    /// `"global"`: one bucket for everybody.
    Global,
    /// `"client_ip"`: one bucket per peer address (the socket's, not `X-Forwarded-For`, which
    /// any client can forge).
    ClientIp,
    /// `"header:<name>"`: one bucket per value of a header, e.g. `"header:x-api-key"`.
    /// Requests without the header share one bucket.
    Header(String),
    /// `"identity"`: one bucket per authenticated client and subject (the request's
    /// [`Identity`](crate::identity::Identity)); a request without one is answered `401
    /// identity-required`, never counted in a shared bucket.
    Identity,
}

impl TryFrom<String> for RateLimitKey {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "global" => Ok(Self::Global),
            "client_ip" => Ok(Self::ClientIp),
            "identity" => Ok(Self::Identity),
            other => match other.strip_prefix("header:") {
                Some(name) if HeaderName::try_from(name).is_ok() => Ok(Self::Header(name.to_ascii_lowercase())),
                _ => Err(format!(
                    "expected \"global\", \"client_ip\", \"identity\" or \"header:<name>\", got {other:?}"
                )),
            },
        }
    }
}

/// Rate limit settings: `requests` per `per`, with bursts up to `burst`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// `requests`: requests allowed per `per`. Default `100`.
    pub requests: u32,
    /// `per`: the period. Default `"1s"`.
    #[serde(with = "crate::config::duration")]
    pub per: Duration,
    /// `burst`: requests allowed at once after a quiet spell. Default: `requests`.
    pub burst: Option<u32>,
    /// `key`: `"global"` (default), `"client_ip"` or `"header:<name>"`.
    pub key: RateLimitKey,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests: 100,
            per: Duration::from_secs(1),
            burst: None,
            key: RateLimitKey::Global,
        }
    }
}

impl Validate for RateLimitConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(self.requests > 0, "requests", "must be at least 1");
        problems.check(self.per >= Duration::from_millis(1), "per", "must be at least 1ms");
        problems.check(self.burst != Some(0), "burst", "must be at least 1");
    }
}

impl RateLimitConfig {
    fn quota(&self) -> Option<Quota> {
        let requests = NonZeroU32::new(self.requests)?;
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.requests))?;
        Some(Quota::with_period(self.per / requests.get())?.allow_burst(burst))
    }
}

type Limiter = DefaultKeyedRateLimiter<String, StateInformationMiddleware>;

struct Shared {
    name: Arc<str>,
    config: RateLimitConfig,
    limiter: Limiter,
    policy: HeaderValue,
    calls: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish()
    }
}

/// Limits the request rate per [`RateLimitConfig`].
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// A limiter named `name` (its policy name in the headers and its metric label), or the
    /// problems with `config`.
    pub fn new(name: impl Into<Arc<str>>, config: RateLimitConfig) -> Result<Self, ConfigError> {
        crate::config::validate("rate_limit", &config)?;
        let name = name.into();
        let quota = config.quota().expect("validated above");
        let window = config.per.as_secs().max(1);
        let policy = HeaderValue::try_from(format!("\"{name}\";q={};w={window}", config.requests))
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\""));
        Ok(Self {
            shared: Arc::new(Shared {
                limiter: DefaultKeyedRateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
                name,
                config,
                policy,
                calls: AtomicU64::new(0),
            }),
        })
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// The bucket of `request`, or `None` when the key needs an identity the request lacks.
fn key_of<B>(key: &RateLimitKey, request: &Request<B>) -> Option<String> {
    Some(match key {
        RateLimitKey::Global => String::new(),
        RateLimitKey::ClientIp => request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_default(),
        RateLimitKey::Header(name) => request
            .headers()
            .get(name.as_str())
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default(),
        RateLimitKey::Identity => request.extensions().get::<crate::identity::Identity>()?.scope(),
    })
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

impl<S, B> Service<Request<B>> for RateLimit<S>
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

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = &self.shared;
        // Forget idle keys now and then, so per-client buckets do not grow without bound.
        if shared.calls.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            shared.limiter.retain_recent();
        }
        let Some(key) = key_of(&shared.config.key, &request) else {
            return ResponseFuture {
                call: Call::answered(Ok(crate::identity::required())),
            };
        };
        let period = shared.config.per;
        match shared.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = shared.config.burst.unwrap_or(shared.config.requests) - remaining;
                // Time until the bucket is whole again: one emission interval per used cell.
                let reset = (period.as_secs_f64() * f64::from(used) / f64::from(shared.config.requests)).ceil() as u64;
                let state = HeaderValue::try_from(format!("\"{}\";r={remaining};t={reset}", shared.name)).ok();
                ResponseFuture {
                    call: Call::called(WithHeaders {
                        future: self.inner.call(request),
                        policy: shared.policy.clone(),
                        state,
                    }),
                }
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                metrics::counter!(REJECTED_TOTAL, "limiter" => shared.name.to_string()).increment(1);
                let mut response = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
                    .with_detail(format!(
                        "the rate limit {:?} allows {} requests per {}; retry after the Retry-After delay",
                        &*shared.name,
                        shared.config.requests,
                        crate::config::duration::format(&period)
                    ))
                    .with_retry_after(wait)
                    .into_response();
                let headers = response.headers_mut();
                headers.insert(RATELIMIT_POLICY, shared.policy.clone());
                let reset = retry_after_secs(wait);
                if let Ok(value) = HeaderValue::try_from(format!("\"{}\";r=0;t={reset}", shared.name)) {
                    headers.insert(RATELIMIT, value);
                }
                ResponseFuture {
                    call: Call::answered(Ok(response)),
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`RateLimit`]: the inner service's response with the rate limit
    /// headers added, or the 429.
    pub struct ResponseFuture<F: Future> {
        #[pin]
        call: Call<WithHeaders<F>, F::Output>,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().call.poll(cx)
    }
}

pin_project! {
    /// The admitted request's response, with `RateLimit-Policy` and `RateLimit` set.
    struct WithHeaders<F> {
        #[pin]
        future: F,
        policy: HeaderValue,
        state: Option<HeaderValue>,
    }
}

impl<F, E> Future for WithHeaders<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.future.poll(cx))?;
        let headers = response.headers_mut();
        headers.insert(RATELIMIT_POLICY, this.policy.clone());
        if let Some(state) = this.state.take() {
            headers.insert(RATELIMIT, state);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    fn app(config: RateLimitConfig) -> Router {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .layer(RateLimitLayer::new("api", config).unwrap())
    }

    fn request(key: Option<&str>) -> Request<Body> {
        let mut builder = Request::get("/");
        if let Some(key) = key {
            builder = builder.header("x-api-key", key);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn over_the_limit_is_a_429_problem_with_retry_after_and_ratelimit_headers() {
        let app = app(RateLimitConfig {
            requests: 2,
            per: Duration::from_secs(60),
            ..Default::default()
        });
        let first = app.clone().oneshot(request(None)).await.unwrap();
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()["ratelimit-policy"], "\"api\";q=2;w=60");
        assert_eq!(first.headers()["ratelimit"], "\"api\";r=1;t=30");
        assert_eq!(app.clone().oneshot(request(None)).await.unwrap().status(), 200);
        let third = app.clone().oneshot(request(None)).await.unwrap();
        assert_eq!(third.status(), 429);
        assert_eq!(third.headers()["content-type"], "application/problem+json");
        let retry_after: u64 = third.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((29..=30).contains(&retry_after), "one emission interval: {retry_after}");
        assert!(third.headers()["ratelimit"].to_str().unwrap().contains("r=0"));
    }

    #[tokio::test]
    async fn header_keys_get_their_own_buckets() {
        let app = app(RateLimitConfig {
            requests: 1,
            per: Duration::from_secs(60),
            key: RateLimitKey::Header("x-api-key".into()),
            ..Default::default()
        });
        assert_eq!(app.clone().oneshot(request(Some("a"))).await.unwrap().status(), 200);
        assert_eq!(app.clone().oneshot(request(Some("a"))).await.unwrap().status(), 429);
        assert_eq!(app.clone().oneshot(request(Some("b"))).await.unwrap().status(), 200);
    }

    #[test]
    fn keys_parse_from_config_strings() {
        assert_eq!(
            RateLimitKey::try_from("client_ip".to_owned()),
            Ok(RateLimitKey::ClientIp)
        );
        assert_eq!(
            RateLimitKey::try_from("header:X-Api-Key".to_owned()),
            Ok(RateLimitKey::Header("x-api-key".into()))
        );
        assert!(RateLimitKey::try_from("ip".to_owned()).is_err());
    }
}
