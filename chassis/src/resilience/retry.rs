//! Retries of HTTP requests: exponential backoff with jitter, `Retry-After`, and a retry budget
//! so a failing dependency cannot set off a retry storm. [`RetryLayer`], its service [`Retry`]
//! and [`ResponseFuture`].
//!
//! A request is retried when the attempt failed with an error (a connection error or an attempt
//! timeout) or answered 408, 429, 500, 502, 503 or 504, and only when it is safe to send again:
//!
//! - its method is idempotent (GET, HEAD, PUT, DELETE, OPTIONS, TRACE) or it carries an
//!   `Idempotency-Key` header, unless `retry_non_idempotent` is set;
//! - its body is replayable: a body of known size up to `max_body_bytes` is buffered once and
//!   resent; a streaming or larger body is sent once, never retried (and the log says why).
//!
//! The delay before retry *n* (from 0) is drawn from `[0, min(max_delay, base_delay × 2ⁿ)]`
//! (full jitter) or grows by a random factor of the previous delay (decorrelated jitter). When
//! the answer carries `Retry-After`, that wait is used instead; a wait longer than `max_delay`
//! is not waited for: the answer is returned as it is.
//!
//! Every request deposits into the budget and every retry withdraws from it: retries may add at
//! most `budget.ratio` of the request rate, plus `budget.min_per_second` so a quiet client can
//! still retry. Refused retries are counted.
//!
//! Metric: `chassis_retry_attempts_total{client,outcome}`: `retried` for each retry made,
//! `budget_exhausted`, `attempts_exhausted` and `not_retryable` when a failed request is given
//! up on. Each retry logs a WARN event with the attempt number, the delay and the reason.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use futures_util::future::BoxFuture;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body::Body as _;
use serde::Deserialize;
use tower::retry::budget::{Budget as _, TpsBudget};
use tower::{Layer, Service, ServiceExt};

use super::CircuitOpen;
use crate::BoxError;
use crate::config::{ByteSize, ConfigError, Problems, Validate};

/// How many times a request was sent before this attempt (0 for the first), in the
/// extensions of every attempt the retry layer sends: what a layer below it records as
/// `http.request.resend_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResendCount(pub u32);

/// Name of the attempt counter.
pub const ATTEMPTS_TOTAL: &str = "chassis_retry_attempts_total";

crate::config::choices! {
    /// How the delay between attempts is randomized.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Jitter {
        /// Uniform in `[0, min(max_delay, base_delay × 2ⁿ)]`.
        Full = "full",
        /// Uniform in `[base_delay, 3 × previous delay]`, capped at `max_delay`.
        Decorrelated = "decorrelated",
    }
}

/// The retry budget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// `ratio`: retries allowed per request, 0.0 to 1.0. Default `0.2` (20 % extra load at most).
    pub ratio: f32,
    /// `min_per_second`: retries always allowed per second. Default `10`.
    pub min_per_second: u32,
    /// `window`: how long a deposit counts. Default `"10s"`.
    #[serde(with = "crate::config::duration")]
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// Retry settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// `max_retries`: retries after the first attempt. Default `3`; `0` turns retries off.
    pub max_retries: u32,
    /// `base_delay`: the first backoff step. Default `"100ms"`.
    #[serde(with = "crate::config::duration")]
    pub base_delay: Duration,
    /// `max_delay`: the longest wait between attempts, `Retry-After` included. Default `"5s"`.
    #[serde(with = "crate::config::duration")]
    pub max_delay: Duration,
    /// `jitter`: `"full"` (default) or `"decorrelated"`.
    pub jitter: Jitter,
    /// `retry_non_idempotent`: also retry POST and PATCH without `Idempotency-Key`. Default
    /// `false`: a retried POST can run twice.
    pub retry_non_idempotent: bool,
    /// `max_body_bytes`: largest body buffered for replay. Default `"64KiB"`.
    pub max_body_bytes: ByteSize,
    /// `[budget]`: the retry budget.
    pub budget: BudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            jitter: Jitter::Full,
            retry_non_idempotent: false,
            max_body_bytes: ByteSize::kib(64),
            budget: BudgetConfig::default(),
        }
    }
}

impl Validate for RetryConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(
            self.max_delay >= self.base_delay,
            "max_delay",
            "must be at least base_delay",
        );
        problems.check(
            (0.0..=1.0).contains(&self.budget.ratio),
            "budget.ratio",
            "must be between 0.0 and 1.0",
        );
        problems.check(
            self.budget.window >= Duration::from_secs(1) && self.budget.window <= Duration::from_secs(60),
            "budget.window",
            "must be between 1s and 60s",
        );
    }
}

impl RetryConfig {
    /// The delay before retry number `retry` (0-based), given the previous delay.
    fn backoff(&self, retry: u32, previous: Duration) -> Duration {
        match self.jitter {
            Jitter::Full => {
                let ceiling = self
                    .base_delay
                    .saturating_mul(2u32.saturating_pow(retry.min(31)))
                    .min(self.max_delay);
                ceiling.mul_f64(fastrand::f64())
            }
            Jitter::Decorrelated => {
                let low = self.base_delay.as_secs_f64();
                let high = (previous.max(self.base_delay).as_secs_f64() * 3.0).max(low);
                Duration::from_secs_f64(low + (high - low) * fastrand::f64()).min(self.max_delay)
            }
        }
    }
}

/// `true` for methods that may be sent twice without changing the outcome.
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    ) || headers.contains_key("idempotency-key")
}

fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate_parse(value)?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or_default())
}

fn httpdate_parse(value: &str) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(value).ok().or_else(|| {
        // IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT".
        let rest = value.split_once(", ")?.1.strip_suffix(" GMT")?;
        let mut parts = rest.split(' ');
        let (day, month, year, time) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = MONTHS.iter().position(|m| *m == month)? + 1;
        humantime::parse_rfc3339(&format!("{year}-{month:02}-{day:0>2}T{time}Z")).ok()
    })
}

#[derive(Debug)]
struct Shared {
    name: Arc<str>,
    config: RetryConfig,
    budget: TpsBudget,
}

/// Retries requests per [`RetryConfig`]. All services made by one layer share its budget.
///
/// ```
/// use chassis::resilience::{RetryConfig, RetryLayer};
///
/// let layer = RetryLayer::new("payments", RetryConfig::default()).unwrap();
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// A layer named `name` (the `client` label of its metric), or the problems with `config`.
    pub fn new(name: impl Into<Arc<str>>, config: RetryConfig) -> Result<Self, ConfigError> {
        crate::config::validate("retry", &config)?;
        let budget = TpsBudget::new(config.budget.window, config.budget.min_per_second, config.budget.ratio);
        Ok(Self {
            shared: Arc::new(Shared {
                name: name.into(),
                config,
                budget,
            }),
        })
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    shared: Arc<Shared>,
}

enum Reason {
    Error(String),
    Status(StatusCode),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Error(e) => write!(f, "error: {e}"),
            Reason::Status(s) => write!(f, "status {}", s.as_u16()),
        }
    }
}

impl<S, B> Service<Request<Body>> for Retry<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = ResponseFuture<Response<B>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        ResponseFuture {
            inner: Box::pin(retrying(inner, shared, request)),
        }
    }
}

/// The response future of [`Retry`]: every attempt and the waits between them.
pub struct ResponseFuture<T> {
    inner: BoxFuture<'static, Result<T, BoxError>>,
}

impl<T> std::fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

async fn retrying<S, B>(mut inner: S, shared: Arc<Shared>, request: Request<Body>) -> Result<Response<B>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    let config = &shared.config;
    shared.budget.deposit();
    let idempotent = config.retry_non_idempotent || is_idempotent(request.method(), request.headers());
    let size = request.body().size_hint().exact();
    let replayable = size.is_some_and(|n| n <= config.max_body_bytes.bytes());
    if config.max_retries == 0 || !idempotent || !replayable {
        if config.max_retries > 0 && !replayable {
            tracing::debug!(
                client = %shared.name,
                "request will not be retried: its body is streamed or larger than max_body_bytes"
            );
        }
        return inner
            .ready()
            .await
            .map_err(Into::into)?
            .call(request)
            .await
            .map_err(Into::into);
    }
    let (parts, body) = request.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map_err(BoxError::from)?
        .to_bytes();
    let mut retry = 0;
    let mut previous = Duration::ZERO;
    loop {
        let mut attempt = Request::new(Body::from(body.clone()));
        *attempt.method_mut() = parts.method.clone();
        *attempt.uri_mut() = parts.uri.clone();
        *attempt.version_mut() = parts.version;
        *attempt.headers_mut() = parts.headers.clone();
        attempt.extensions_mut().insert(ResendCount(retry));
        let result = inner
            .ready()
            .await
            .map_err(Into::into)?
            .call(attempt)
            .await
            .map_err(Into::into);
        let (reason, wait_hint) = match &result {
            Ok(response) if retryable_status(response.status()) => {
                (Reason::Status(response.status()), retry_after(response.headers()))
            }
            Ok(_) => return result,
            // The breaker knows the dependency is down; another attempt now only adds load.
            Err(error) if error.downcast_ref::<CircuitOpen>().is_some() => return result,
            Err(error) => (Reason::Error(error.to_string()), None),
        };
        let outcome = if retry >= config.max_retries {
            "attempts_exhausted"
        } else if wait_hint.is_some_and(|wait| wait > config.max_delay) {
            "not_retryable"
        } else if !shared.budget.withdraw() {
            "budget_exhausted"
        } else {
            ""
        };
        if !outcome.is_empty() {
            metrics::counter!(ATTEMPTS_TOTAL, "client" => shared.name.to_string(), "outcome" => outcome).increment(1);
            if outcome == "budget_exhausted" {
                tracing::warn!(client = %shared.name, %reason, "retry refused: the retry budget is spent");
            }
            return result;
        }
        let delay = wait_hint.unwrap_or_else(|| config.backoff(retry, previous));
        previous = delay;
        retry += 1;
        metrics::counter!(ATTEMPTS_TOTAL, "client" => shared.name.to_string(), "outcome" => "retried").increment(1);
        tracing::warn!(
            client = %shared.name,
            attempt = retry + 1,
            delay_ms = delay.as_millis() as u64,
            %reason,
            "retrying request"
        );
        drop(result);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A service answering with the given statuses in turn, counting calls.
    fn scripted(
        statuses: &'static [u16],
        calls: Arc<AtomicUsize>,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future = impl Send> + Clone + Send + 'static
    {
        tower::service_fn(move |request: Request<Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = http_body_util::BodyExt::collect(request.into_body()).await?.to_bytes();
                let status = statuses[n.min(statuses.len() - 1)];
                let mut response = Response::new(Body::from(body));
                *response.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok::<_, BoxError>(response)
            }
        })
    }

    fn config() -> RetryConfig {
        RetryConfig {
            max_retries: 3,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_and_replays_the_body() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = RetryLayer::new("t", config())
            .unwrap()
            .layer(scripted(&[503, 502, 200], calls.clone()));
        let request = Request::put("/x").body(Body::from("payload")).unwrap();
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "payload", "the body was sent again on every attempt");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_with_the_last_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = RetryLayer::new("t", config())
            .unwrap()
            .layer(scripted(&[500], calls.clone()));
        let response = service
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(calls.load(Ordering::SeqCst), 4, "1 attempt + 3 retries");
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_post_without_an_idempotency_key_nor_4xx() {
        let calls = Arc::new(AtomicUsize::new(0));
        let service = RetryLayer::new("t", config())
            .unwrap()
            .layer(scripted(&[503, 200], calls.clone()));
        let response = service
            .clone()
            .oneshot(Request::post("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let response = service
            .clone()
            .oneshot(
                Request::post("/")
                    .header("idempotency-key", "k1")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "a POST with Idempotency-Key is retried");

        let calls = Arc::new(AtomicUsize::new(0));
        let service = RetryLayer::new("t", config())
            .unwrap()
            .layer(scripted(&[404, 200], calls.clone()));
        let response = service
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn honours_retry_after_and_refuses_waits_beyond_max_delay() {
        let service = tower::service_fn(|_: Request<Body>| async {
            Ok::<_, BoxError>(
                Response::builder()
                    .status(429)
                    .header("retry-after", "2")
                    .body(Body::empty())
                    .unwrap(),
            )
        });
        let started = tokio::time::Instant::now();
        let response = RetryLayer::new(
            "t",
            RetryConfig {
                max_retries: 1,
                ..config()
            },
        )
        .unwrap()
        .layer(service)
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(started.elapsed(), Duration::from_secs(2), "waited exactly Retry-After");

        let started = tokio::time::Instant::now();
        let response = RetryLayer::new(
            "t",
            RetryConfig {
                max_delay: Duration::from_secs(1),
                ..config()
            },
        )
        .unwrap()
        .layer(service)
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "a 2s Retry-After is beyond max_delay: no wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_stops_a_retry_storm() {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = RetryLayer::new(
            "t",
            RetryConfig {
                max_retries: 1,
                budget: BudgetConfig {
                    ratio: 0.1,
                    min_per_second: 1,
                    window: Duration::from_secs(10),
                },
                ..config()
            },
        )
        .unwrap();
        let service = layer.layer(scripted(&[500], calls.clone()));
        for _ in 0..100 {
            service
                .clone()
                .oneshot(Request::get("/").body(Body::empty()).unwrap())
                .await
                .unwrap();
        }
        let retries = calls.load(Ordering::SeqCst) - 100;
        // 10% of 100 requests plus the floor of 1/s over the 10 s window.
        assert!(retries <= 25, "{retries} retries for 100 requests");
        assert!(retries >= 5, "the budget still allows some retries: {retries}");
    }

    #[test]
    fn full_jitter_stays_under_the_exponential_ceiling() {
        let config = config();
        for retry in 0..8 {
            for _ in 0..50 {
                let delay = config.backoff(retry, Duration::ZERO);
                let ceiling = (config.base_delay * 2u32.pow(retry)).min(config.max_delay);
                assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
            }
        }
        let decorrelated = RetryConfig {
            jitter: Jitter::Decorrelated,
            ..config
        };
        let delay = decorrelated.backoff(0, Duration::from_secs(1));
        assert!(delay >= decorrelated.base_delay && delay <= Duration::from_secs(3));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(header::RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(
            retry_after(&headers),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
    }
}
