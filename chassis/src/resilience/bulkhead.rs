//! Bulkhead: a cap on concurrent calls, with an optional bounded queue: [`BulkheadLayer`], its
//! service [`Bulkhead`] and [`ResponseFuture`].
//!
//! A call beyond `max_concurrent` waits in a queue of at most `max_queued` callers for at most
//! `max_wait`; beyond that it fails at once with [`BulkheadFull`], which the HTTP edge answers
//! `503` problem+json with `Retry-After: 1`. With `max_queued = 0` (the inbound default) this is
//! load shedding: work the service cannot start now is refused in microseconds instead of
//! piling up until everything times out.
//!
//! All services made by one [`BulkheadLayer`] share its permits, so a layer applied to a
//! whole router is one bulkhead for the router.
//!
//! Metric: `chassis_bulkhead_rejected_total{bulkhead}`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, Either, TryFuture};
use pin_project_lite::pin_project;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};

use crate::BoxError;
use crate::config::{ConfigError, Problems, Validate};
use crate::future::{Call, ErrInto, Rejection};

/// Name of the rejection counter.
pub const REJECTED_TOTAL: &str = "chassis_bulkhead_rejected_total";

/// Bulkhead settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BulkheadConfig {
    /// `max_concurrent`: calls running at once. Default `25` (Resilience4j's default).
    pub max_concurrent: usize,
    /// `max_queued`: calls allowed to wait for a slot. Default `0`: reject at once.
    pub max_queued: usize,
    /// `max_wait`: how long a queued call waits before it is rejected. Default `"0s"`; only
    /// used when `max_queued > 0`.
    #[serde(with = "crate::config::duration")]
    pub max_wait: Duration,
}

impl Validate for BulkheadConfig {
    fn validate(&self, problems: &mut Problems) {
        problems.check(self.max_concurrent > 0, "max_concurrent", "must be at least 1");
    }
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 25,
            max_queued: 0,
            max_wait: Duration::ZERO,
        }
    }
}

/// The bulkhead was full (and its queue too, or the wait ran out).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead {name:?} is full ({max_concurrent} calls running); try again shortly")]
pub struct BulkheadFull {
    name: String,
    max_concurrent: usize,
}

impl BulkheadFull {
    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Debug)]
struct Shared {
    name: String,
    slots: Slots,
    queued: AtomicUsize,
    config: BulkheadConfig,
}

/// How a call gets its slot.
#[derive(Debug)]
enum Slots {
    /// Without a queue nobody ever waits, so a count of running calls is all it takes: one
    /// compare-and-swap to enter and one subtraction to leave, no waiting list to lock.
    Counted { running: AtomicUsize },
    /// With a queue, tokio's semaphore hands freed slots to waiting calls in arrival order.
    Queued { semaphore: Arc<Semaphore> },
}

/// A call's slot, given back when the call ends (or its future is dropped).
enum Permit {
    Counted { _slot: CountedSlot },
    Queued { _permit: OwnedSemaphorePermit },
}

struct CountedSlot(Arc<Shared>);

impl Drop for CountedSlot {
    fn drop(&mut self) {
        if let Slots::Counted { running } = &self.0.slots {
            running.fetch_sub(1, Ordering::Release);
        }
    }
}

impl Shared {
    /// A place in the queue if there is room.
    fn join_queue(&self) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.max_queued).then_some(n + 1)
            })
            .is_ok()
    }

    /// A slot if one is free now.
    fn try_enter(self: &Arc<Self>) -> Option<Permit> {
        match &self.slots {
            Slots::Counted { running } => running
                .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                    (n < self.config.max_concurrent).then_some(n + 1)
                })
                .ok()
                .map(|_| Permit::Counted {
                    _slot: CountedSlot(self.clone()),
                }),
            Slots::Queued { semaphore } => semaphore
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|permit| Permit::Queued { _permit: permit }),
        }
    }

    fn rejected(&self) -> BoxError {
        metrics::counter!(REJECTED_TOTAL, "bulkhead" => self.name.clone()).increment(1);
        Box::new(BulkheadFull {
            name: self.name.clone(),
            max_concurrent: self.config.max_concurrent,
        })
    }
}

/// Caps concurrent calls; see the [module docs](self).
///
/// ```
/// use chassis::resilience::{BulkheadConfig, BulkheadLayer};
///
/// let mut config = BulkheadConfig::default();
/// config.max_concurrent = 100;
/// let layer = BulkheadLayer::new("payments", config.clone()).unwrap();
/// assert_eq!(layer.available(), 100);
///
/// config.max_concurrent = 0;
/// assert!(BulkheadLayer::new("payments", config).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    shared: Arc<Shared>,
}

impl BulkheadLayer {
    /// A bulkhead named `name` (the metric label), or the problems with `config`.
    pub fn new(name: impl Into<String>, config: BulkheadConfig) -> Result<Self, ConfigError> {
        crate::config::validate("bulkhead", &config)?;
        Ok(Self {
            shared: Arc::new(Shared {
                name: name.into(),
                slots: match config.max_queued {
                    0 => Slots::Counted {
                        running: AtomicUsize::new(0),
                    },
                    _ => Slots::Queued {
                        semaphore: Arc::new(Semaphore::new(config.max_concurrent)),
                    },
                },
                queued: AtomicUsize::new(0),
                config,
            }),
        })
    }

    /// Free slots right now.
    pub fn available(&self) -> usize {
        match &self.shared.slots {
            Slots::Counted { running } => self
                .shared
                .config
                .max_concurrent
                .saturating_sub(running.load(Ordering::Relaxed)),
            Slots::Queued { semaphore } => semaphore.available_permits(),
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`BulkheadLayer`].
#[derive(Debug, Clone)]
pub struct Bulkhead<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, R> Service<R> for Bulkhead<S>
where
    S: Service<R> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    R: Send + 'static,
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
        if let Some(permit) = self.shared.try_enter() {
            let admitted = Admitted {
                future: ErrInto::new(self.inner.call(request)),
                _permit: permit,
            };
            return ResponseFuture {
                call: Call::called(Either::Left(admitted)),
            };
        }
        let semaphore = match &self.shared.slots {
            Slots::Queued { semaphore } if self.shared.join_queue() => semaphore.clone(),
            _ => {
                return ResponseFuture {
                    call: Call::answered(Rejection(self.shared.rejected())),
                };
            }
        };
        let shared = self.shared.clone();
        // Take the service that was made ready, leave a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let queued = Box::pin(async move {
            let acquired = tokio::time::timeout(shared.config.max_wait, semaphore.acquire_owned()).await;
            shared.queued.fetch_sub(1, Ordering::AcqRel);
            let _permit = match acquired {
                Ok(Ok(permit)) => permit,
                _ => return Err(shared.rejected()),
            };
            inner.oneshot(request).await.map_err(Into::into)
        });
        ResponseFuture {
            call: Call::called(Either::Right(queued)),
        }
    }
}

pin_project! {
    /// The response future of [`Bulkhead`].
    pub struct ResponseFuture<F: TryFuture> {
        #[pin]
        call: Call<Either<Admitted<ErrInto<F>>, BoxFuture<'static, Result<F::Ok, BoxError>>>, Rejection>,
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

pin_project! {
    /// A call admitted at once, holding its slot until it ends.
    struct Admitted<F> {
        #[pin]
        future: F,
        _permit: Permit,
    }
}

impl<F: Future> Future for Admitted<F> {
    type Output = F::Output;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tokio::sync::oneshot;
    use tower::service_fn;

    fn config(max_concurrent: usize, max_queued: usize, max_wait_ms: u64) -> BulkheadConfig {
        BulkheadConfig {
            max_concurrent,
            max_queued,
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }

    /// A service whose calls finish when the test says so.
    fn gated()
    -> impl Service<oneshot::Receiver<()>, Response = (), Error = Infallible, Future: Send> + Clone + Send + 'static
    {
        service_fn(|gate: oneshot::Receiver<()>| async move {
            let _ = gate.await;
            Ok::<_, Infallible>(())
        })
    }

    #[tokio::test]
    async fn rejects_beyond_the_limit_without_a_queue() {
        let layer = BulkheadLayer::new("t", config(2, 0, 0)).unwrap();
        let svc = layer.layer(gated());
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        let a = tokio::spawn(svc.clone().oneshot(rx1));
        let b = tokio::spawn(svc.clone().oneshot(rx2));
        tokio::task::yield_now().await;
        while layer.available() > 0 {
            tokio::task::yield_now().await;
        }
        let (_tx3, rx3) = oneshot::channel();
        let err = svc.clone().oneshot(rx3).await.unwrap_err();
        assert!(err.downcast_ref::<BulkheadFull>().is_some(), "{err}");

        tx1.send(()).unwrap();
        a.await.unwrap().unwrap();
        assert_eq!(layer.available(), 1, "a finished call frees its slot");
        tx2.send(()).unwrap();
        b.await.unwrap().unwrap();
    }

    #[test]
    fn concurrent_calls_from_many_threads_never_exceed_the_limit() {
        use std::sync::atomic::AtomicUsize;
        const LIMIT: usize = 3;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        let layer = BulkheadLayer::new("t", config(LIMIT, 0, 0)).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let svc = layer.layer(service_fn({
            let (running, most) = (running.clone(), most.clone());
            move |()| {
                let (running, most) = (running.clone(), most.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(())
                }
            }
        }));
        let (admitted, rejected) = runtime.block_on(async {
            let calls: Vec<_> = (0..2_000).map(|_| tokio::spawn(svc.clone().oneshot(()))).collect();
            let (mut admitted, mut rejected) = (0, 0);
            for call in calls {
                match call.await.unwrap() {
                    Ok(()) => admitted += 1,
                    Err(error) => {
                        assert!(error.downcast_ref::<BulkheadFull>().is_some(), "{error}");
                        rejected += 1;
                    }
                }
            }
            (admitted, rejected)
        });
        assert!(
            most.load(Ordering::SeqCst) <= LIMIT,
            "{} ran at once",
            most.load(Ordering::SeqCst)
        );
        assert!(admitted > 0 && admitted + rejected == 2_000);
        assert_eq!(layer.available(), LIMIT, "every slot is given back");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_calls_wait_for_a_slot_then_time_out() {
        let layer = BulkheadLayer::new("t", config(1, 1, 100)).unwrap();
        let svc = layer.layer(gated());
        let (tx1, rx1) = oneshot::channel();
        let running = tokio::spawn(svc.clone().oneshot(rx1));
        while layer.available() > 0 {
            tokio::task::yield_now().await;
        }
        // One waits in the queue; the next is over the queue bound and fails at once.
        let (tx2, rx2) = oneshot::channel();
        let queued = tokio::spawn(svc.clone().oneshot(rx2));
        tokio::task::yield_now().await;
        let (_tx3, rx3) = oneshot::channel();
        assert!(svc.clone().oneshot(rx3).await.is_err());

        // The slot frees before max_wait: the queued call runs.
        tx1.send(()).unwrap();
        running.await.unwrap().unwrap();
        tx2.send(()).unwrap();
        queued.await.unwrap().unwrap();

        // Now hold the slot past max_wait: the queued call is rejected after exactly 100ms.
        let (_hold, rx4) = oneshot::channel();
        let _blocker = tokio::spawn(svc.clone().oneshot(rx4));
        while layer.available() > 0 {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        let (_tx5, rx5) = oneshot::channel();
        assert!(svc.oneshot(rx5).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }
}
