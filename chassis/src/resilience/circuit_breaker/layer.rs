//! The breaker as a tower layer: [`CircuitBreakerLayer`], its service [`CircuitBreaker`] and
//! [`ResponseFuture`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{Breaker, Classify, Permit, ServerErrors, Verdict};
use crate::BoxError;
use crate::future::{Call, Rejection};

/// Guards a service with a [`Breaker`]: calls are rejected with
/// [`CircuitOpen`](super::CircuitOpen) while it is open, and each result is reported as the
/// classifier reads it.
///
/// ```
/// use chassis::resilience::{CircuitBreakerConfig, CircuitBreakerLayer, CircuitBreakerRegistry};
/// use chassis::resilience::circuit_breaker::IgnoreClientErrors;
///
/// let registry = CircuitBreakerRegistry::new();
/// let breaker = registry.get_or_create("payments", &CircuitBreakerConfig::default()).unwrap();
/// let layer = CircuitBreakerLayer::new(breaker).classify(IgnoreClientErrors);
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ServerErrors> {
    breaker: Breaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// Guards with `breaker`, classifying errors and 5xx responses as failures.
    pub fn new(breaker: Breaker) -> Self {
        Self {
            breaker,
            classifier: ServerErrors,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses another classifier: [`Errors`](super::Errors) for non-HTTP services,
    /// [`IgnoreClientErrors`](super::IgnoreClientErrors), or a closure
    /// `|result: &Result<T, E>| -> Verdict`.
    pub fn classify<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S, C = ServerErrors> {
    inner: S,
    breaker: Breaker,
    classifier: C,
}

impl<S, C, R> Service<R> for CircuitBreaker<S, C>
where
    S: Service<R>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let call = match self.breaker.try_acquire() {
            Ok(permit) => Call::called(Recorded {
                future: self.inner.call(request),
                permit: Some(permit),
                classifier: self.classifier.clone(),
            }),
            Err(open) => Call::answered(Rejection(Box::new(open))),
        };
        ResponseFuture { call }
    }
}

pin_project! {
    /// The response future of [`CircuitBreaker`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        call: Call<Recorded<F, C>, Rejection>,
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().call.poll(cx)
    }
}

pin_project! {
    /// The admitted call, its result reported to the breaker.
    struct Recorded<F, C> {
        #[pin]
        future: F,
        permit: Option<Permit>,
        classifier: C,
    }
}

impl<F, C, T, E> Future for Recorded<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.future.poll(cx));
        if let Some(permit) = this.permit.take() {
            match this.classifier.classify(&result) {
                Verdict::Success => permit.record_result(true),
                Verdict::Failure => permit.record_result(false),
                Verdict::Ignore => drop(permit),
            }
        }
        Poll::Ready(result.map_err(Into::into))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tower::ServiceExt as _;

    use super::*;
    use crate::resilience::circuit_breaker::{CircuitBreakerConfig, Errors, IgnoreClientErrors, State};

    fn config() -> CircuitBreakerConfig {
        CircuitBreakerConfig {
            window_size: 10,
            minimum_calls: 4,
            failure_rate_threshold: 0.5,
            open_duration: Duration::from_secs(10),
            half_open_calls: 2,
            ..Default::default()
        }
    }

    fn call(breaker: &Breaker, success: bool) {
        breaker.try_acquire().unwrap().record_result(success);
    }

    #[tokio::test(start_paused = true)]
    async fn ignored_results_count_neither_way() {
        let breaker = Breaker::new("t", config()).unwrap();
        let statuses = [404u16, 404, 404, 404, 500, 500, 500];
        let service = CircuitBreakerLayer::new(breaker.clone())
            .classify(IgnoreClientErrors)
            .layer(tower::service_fn(move |i: usize| async move {
                let response = http::Response::builder().status(statuses[i]).body(()).unwrap();
                Ok::<_, std::io::Error>(response)
            }));
        for i in 0..4 {
            service.clone().oneshot(i).await.unwrap();
        }
        assert_eq!(breaker.snapshot().calls, 0, "4xx answers are not recorded");
        for i in 4..7 {
            service.clone().oneshot(i).await.unwrap();
        }
        assert_eq!(breaker.snapshot().calls, 3);
        assert_eq!(breaker.state(), State::Closed, "three calls are below minimum_calls");
    }

    /// Waits until `done` holds, for at most ten seconds; only a broken breaker makes it wait
    /// that long.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_callers_never_get_more_probes_and_never_leave_it_stuck() {
        use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
        let breaker = Breaker::new(
            "concurrent",
            CircuitBreakerConfig {
                consecutive_failures: 1,
                open_duration: Duration::from_millis(20),
                half_open_calls: 3,
                ..config()
            },
        )
        .unwrap();
        // Probes hold until the gate opens, so the breaker stays half-open while every caller tries.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let in_flight = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let (active, max, held) = (in_flight.clone(), peak.clone(), gate.clone());
        let service = CircuitBreakerLayer::new(breaker.clone())
            .classify(Errors)
            .layer(tower::service_fn(move |_: ()| {
                let (active, max, held) = (active.clone(), max.clone(), held.clone());
                async move {
                    // Counted out on drop too: a cancelled caller's probe stops running (and
                    // gives its slot back) without reaching the end.
                    struct Running(Arc<AtomicU32>);
                    impl Drop for Running {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, SeqCst);
                        }
                    }
                    let now = active.fetch_add(1, SeqCst) + 1;
                    let _running = Running(active);
                    max.fetch_max(now, SeqCst);
                    let _permit = held.acquire().await;
                    Ok::<_, std::io::Error>(())
                }
            }));
        call(&breaker, false);
        until("the open duration to pass", || breaker.try_acquire().map(drop).is_ok()).await;
        let rejected = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (service, rejected) = (service.clone(), rejected.clone());
                tokio::spawn(async move {
                    if service.oneshot(()).await.is_err() {
                        rejected.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        // Every caller has tried: it was rejected, or it is one of the probes now held.
        until("every caller to try", || {
            rejected.load(SeqCst) + in_flight.load(SeqCst) == 64
        })
        .await;
        assert_eq!(breaker.state(), State::HalfOpen);
        assert_eq!(in_flight.load(SeqCst), 3, "exactly half_open_calls probes");
        assert_eq!(peak.load(SeqCst), 3, "never more probes at once");
        // The probes' callers go away: their slots must come back.
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        until("the cancelled probes to stop", || in_flight.load(SeqCst) == 0).await;
        gate.add_permits(1_000);
        for _ in 0..3 {
            service.clone().oneshot(()).await.expect("a probe slot is free again");
        }
        assert_eq!(breaker.state(), State::Closed, "not stuck in half-open");
    }
}
