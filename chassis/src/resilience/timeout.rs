//! A deadline for each call: [`TimeoutLayer`], its service [`Timeout`] and [`ResponseFuture`].
//!
//! Inbound, `http.request_timeout` bounds the whole request; a request still running when it
//! elapses is dropped and answered `503` problem+json (`urn:chassis:problem:timeout`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::BoxError;

/// The call did not complete within its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timed out after {}", crate::config::duration::format(.after))]
pub struct Elapsed {
    after: Duration,
}

impl Elapsed {
    /// A timeout of `after`.
    pub fn new(after: Duration) -> Self {
        Self { after }
    }

    /// The timeout that elapsed.
    pub fn after(&self) -> Duration {
        self.after
    }
}

/// Fails a call with [`Elapsed`] when it takes longer than the timeout.
///
/// ```
/// use std::time::Duration;
/// use chassis::resilience::TimeoutLayer;
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let slow = service_fn(|_: ()| async {
///     tokio::time::sleep(Duration::from_secs(5)).await;
///     Ok::<_, std::convert::Infallible>("done")
/// });
/// let svc = ServiceBuilder::new().layer(TimeoutLayer::new(Duration::from_secs(1))).service(slow);
/// let err = svc.oneshot(()).await.unwrap_err();
/// assert_eq!(err.to_string(), "timed out after 1s");
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A layer failing calls that take longer than `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R>,
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
    fn call(&mut self, request: R) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(request),
            sleep: None,
            timeout: self.timeout,
        }
    }
}

pin_project! {
    /// The response future of [`Timeout`].
    ///
    /// The timer starts at the first poll that finds the call still running: most calls through
    /// a server stack complete in their first poll and never need a clock read or a timer.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Duration,
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
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.timeout)));
        }
        let sleep = this.sleep.as_pin_mut().expect("set above");
        match sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Box::new(Elapsed::new(*this.timeout)))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    #[tokio::test(start_paused = true)]
    async fn a_fast_call_passes_and_a_slow_one_fails_at_the_deadline() {
        let svc = TimeoutLayer::new(Duration::from_millis(100)).layer(service_fn(|wait: u64| async move {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            Ok::<_, Infallible>(wait)
        }));
        assert_eq!(svc.clone().oneshot(99).await.unwrap(), 99);
        let started = tokio::time::Instant::now();
        let err = svc.oneshot(101).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        assert_eq!(
            err.downcast_ref::<Elapsed>().unwrap().after(),
            Duration::from_millis(100)
        );
    }
}
