//! One accepted connection: served with HTTP/1.1 or HTTP/2 (whichever the client speaks),
//! closed when it sits idle or sends its request head too slowly, and wound down at shutdown.
//!
//! The connection's [`Activity`] is shared by its IO (which notes the first byte of a request
//! head), its requests (counted in and out) and the watchdog in [`serve`] that closes it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use futures_util::task::AtomicWaker;
use http::{HeaderValue, Request, Version, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt as _};

use super::HttpConfig;

/// The connection limits of `[http]`, for both listeners.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Limits {
    /// How long a client may take to send a request head, counted from the connection's
    /// start for its first request and from the head's first byte for the next ones.
    pub(crate) header_read_timeout: Duration,
    /// How long a connection may sit idle between requests.
    pub(crate) keep_alive_timeout: Duration,
    /// Requests served on one connection before it is closed; 0 for no limit.
    pub(crate) max_requests: u32,
    /// Age at which a connection is wound down (its running requests finish); `None`: no limit.
    pub(crate) max_age: Option<Duration>,
}

impl Limits {
    pub(crate) fn of(http: &HttpConfig) -> Self {
        Self {
            header_read_timeout: http.header_read_timeout,
            keep_alive_timeout: http.keep_alive_timeout,
            max_requests: http.max_requests_per_connection,
            max_age: (!http.max_connection_age.is_zero()).then_some(http.max_connection_age),
        }
    }
}

/// Where a listener is in the service's life.
#[derive(Debug, Clone, Default)]
pub(crate) struct Phases {
    /// Readiness fails: responses close their connection and idle connections are closed.
    pub(crate) draining: CancellationToken,
    /// The listener is closed: connections without a request in progress are closed.
    pub(crate) stop: CancellationToken,
    /// The grace period ran out: every connection is closed.
    pub(crate) abandon: CancellationToken,
}

/// The phase of a listener as its connections watch it: read with one atomic load and woken
/// through a waker per connection. (Polling the phases' cancellation tokens instead would take
/// a mutex shared by every connection on every wake of every connection.)
#[derive(Debug, Default)]
pub(crate) struct PhaseWatch {
    /// 0 serving, 1 draining, 2 stopped, 3 abandoned.
    phase: AtomicU8,
    watchers: std::sync::Mutex<Vec<std::sync::Weak<AtomicWaker>>>,
}

const DRAINING: u8 = 1;
const STOPPED: u8 = 2;
const ABANDONED: u8 = 3;

impl PhaseWatch {
    fn phase(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// A waker slot for one connection, woken at every change of phase.
    fn watch(&self) -> Arc<AtomicWaker> {
        let waker = Arc::new(AtomicWaker::new());
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        watchers.retain(|w| w.strong_count() > 0);
        watchers.push(Arc::downgrade(&waker));
        waker
    }

    fn advance(&self, phase: u8) {
        self.phase.fetch_max(phase, Ordering::AcqRel);
        for waker in self.watchers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Some(waker) = waker.upgrade() {
                waker.wake();
            }
        }
    }
}

impl Phases {
    /// A watch of these phases, kept up to date by a task of its own for as long as a
    /// connection or the listener holds it.
    pub(crate) fn watch(&self) -> Arc<PhaseWatch> {
        let watch = Arc::new(PhaseWatch::default());
        let (phases, relayed) = (self.clone(), Arc::downgrade(&watch));
        tokio::spawn(async move {
            for (token, phase) in [
                (&phases.draining, DRAINING),
                (&phases.stop, STOPPED),
                (&phases.abandon, ABANDONED),
            ] {
                loop {
                    tokio::select! {
                        () = token.cancelled() => break,
                        // Nobody watches any more: the listener and its connections are gone.
                        () = tokio::time::sleep(Duration::from_secs(1)) => {
                            if relayed.strong_count() == 0 {
                                return;
                            }
                        }
                    }
                }
                match relayed.upgrade() {
                    Some(watch) => watch.advance(phase),
                    None => return,
                }
            }
        });
        watch
    }
}

/// Why a connection ended (the `reason` label of `chassis_http_server_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// The client closed it, or it closed after a response that said `Connection: close`.
    Completed,
    /// The client did not send a complete request head within `http.header_read_timeout`.
    HeaderReadTimeout,
    /// It sat idle for `http.keep_alive_timeout`.
    KeepAliveTimeout,
    /// Closed at shutdown with no request in progress, or abandoned after the grace period.
    Shutdown,
    /// A protocol or IO error.
    Error,
}

impl Closed {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::KeepAliveTimeout => "keep_alive_timeout",
            Self::Shutdown => "shutdown",
            Self::Error => "error",
        }
    }
}

/// Marks an offset that has not happened.
const NONE: u64 = u64::MAX;

/// What a connection is doing: requests in progress and when it last had none.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    in_flight: AtomicU32,
    served: AtomicU32,
    /// Nanoseconds after `opened` at which the last request ended; [`NONE`] before the first.
    idle_since: AtomicU64,
    /// Nanoseconds after `opened` of the first byte read while no request was in progress;
    /// [`NONE`] when none was.
    head_started: AtomicU64,
    /// The connection speaks HTTP/2 (known from its first request).
    http2: AtomicBool,
}

impl Activity {
    pub(crate) fn new(opened: Instant) -> Self {
        Self {
            opened,
            in_flight: AtomicU32::new(0),
            served: AtomicU32::new(0),
            idle_since: AtomicU64::new(NONE),
            head_started: AtomicU64::new(NONE),
            http2: AtomicBool::new(false),
        }
    }

    fn offset(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.opened).as_nanos() as u64
    }

    fn at(&self, offset: u64) -> Instant {
        self.opened + Duration::from_nanos(offset)
    }

    /// A request head arrived; returns how many requests the connection has had, this one
    /// included.
    fn request_started(&self, version: Version) -> u32 {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn request_ended(&self, at: Instant) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.offset(at), Ordering::Relaxed);
        }
    }

    /// Bytes arrived.
    fn read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 && self.head_started.load(Ordering::Relaxed) == NONE {
            self.head_started.store(self.offset(Instant::now()), Ordering::Relaxed);
        }
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn served(&self) -> u32 {
        self.served.load(Ordering::Relaxed)
    }

    /// When the connection is to be closed for want of a request, and why; `None` while a
    /// request is in progress. `keep_alive` is the keep-alive timeout in force.
    pub(crate) fn deadline(&self, limits: &Limits, keep_alive: Duration) -> Option<(Instant, Closed)> {
        if self.in_flight() > 0 {
            return None;
        }
        if self.served() == 0 {
            return Some((self.opened + limits.header_read_timeout, Closed::HeaderReadTimeout));
        }
        match self.head_started.load(Ordering::Relaxed) {
            NONE => {
                let idle_since = self.at(self.idle_since.load(Ordering::Relaxed));
                Some((idle_since + keep_alive, Closed::KeepAliveTimeout))
            }
            started => Some((self.at(started) + limits.header_read_timeout, Closed::HeaderReadTimeout)),
        }
    }

    /// When the watchdog looks again: at the deadline, or sooner to notice what changed
    /// meanwhile without being told (a request that ended, a request head that began: within
    /// the shorter of the header-read and keep-alive timeouts), and at the maximum age. Nothing
    /// wakes the watchdog per request, which keeps requests free of its cost.
    pub(crate) fn next_check(&self, limits: &Limits, keep_alive: Duration, now: Instant) -> Instant {
        let mut next = now + limits.header_read_timeout.min(keep_alive);
        if let Some((deadline, _)) = self.deadline(limits, keep_alive) {
            next = next.min(deadline);
        }
        if let Some(age) = limits.max_age {
            let wind_down = self.opened + age;
            if wind_down > now {
                next = next.min(wind_down);
            }
        }
        next
    }

    /// Whether a connection of this age should be wound down.
    fn too_old(&self, limits: &Limits, now: Instant) -> bool {
        limits.max_age.is_some_and(|age| now >= self.opened + age)
    }
}

/// How long a keep-alive connection may sit idle while the service drains: long enough for a
/// client in the middle of a burst to send its next request (which is answered with
/// `Connection: close`), short enough to move idle clients away before the listener closes.
const DRAINING_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// How long, once the listener has closed, a connection without a request in progress may
/// still deliver one that was already on its way (sent just before the close, or accepted
/// from the listen queue at the close); then it is closed.
const LINGER_AT_STOP: Duration = Duration::from_millis(250);

/// Serves one connection until it ends, and says why it ended.
pub(crate) async fn serve<I, S>(io: I, service: S, limits: Arc<Limits>, phases: Arc<PhaseWatch>, tls: bool) -> Closed
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The watchdog below times request heads: hyper's own header timer would also run while
    // a keep-alive connection waits for its next request, closing it at the header timeout.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let service = Tracked {
        inner: service,
        // Plain HTTP is what a request without the extension means: its map stays empty.
        scheme: tls.then_some(crate::http::UrlScheme("https")),
        activity: activity.clone(),
        limits: limits.clone(),
        phases: phases.clone(),
    };
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let check = tokio::time::sleep_until(Instant::now());
    tokio::pin!(check);
    let mut wound_down = false;
    let mut stopped_at: Option<Instant> = None;
    let woken = phases.watch();
    loop {
        let now = Instant::now();
        let phase = phases.phase();
        if phase >= ABANDONED {
            return Closed::Shutdown;
        }
        if phase >= STOPPED && stopped_at.is_none() {
            stopped_at = Some(now);
        }
        let draining = phase >= DRAINING;
        let keep_alive = match draining {
            true => limits.keep_alive_timeout.min(DRAINING_KEEP_ALIVE),
            false => limits.keep_alive_timeout,
        };
        if let Some((deadline, reason)) = activity.deadline(&limits, keep_alive)
            && now >= deadline
        {
            return reason;
        }
        if let Some(stopped_at) = stopped_at
            && activity.in_flight() == 0
            && now >= stopped_at + LINGER_AT_STOP
        {
            return Closed::Shutdown;
        }
        // Winding down (a GOAWAY, or no keep-alive after the running request) only once the
        // protocol is known: before the first request it would close the connection at once.
        let served = activity.served() > 0;
        let enough = limits.max_requests > 0 && activity.served() >= limits.max_requests;
        let draining_http2 = draining && activity.http2.load(Ordering::Relaxed);
        if !wound_down && served && (stopped_at.is_some() || draining_http2 || enough || activity.too_old(&limits, now))
        {
            wound_down = true;
            connection.as_mut().graceful_shutdown();
        }
        let mut next = activity.next_check(&limits, keep_alive, now);
        if let Some(stopped_at) = stopped_at {
            next = next.min((stopped_at + LINGER_AT_STOP).max(now + Duration::from_millis(1)));
        }
        check.as_mut().reset(next);
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                return match result {
                    Ok(()) => Closed::Completed,
                    Err(error) => {
                        tracing::debug!(%error, "connection ended with an error");
                        Closed::Error
                    }
                };
            }
            () = std::future::poll_fn(|cx| {
                woken.register(cx.waker());
                match phases.phase() == phase {
                    true => Poll::Pending,
                    false => Poll::Ready(()),
                }
            }) => {}
            () = &mut check => {}
        }
    }
}

pin_project! {
    /// The connection's IO, noting when bytes arrive between requests.
    struct Watched<I> {
        #[pin]
        inner: I,
        activity: Arc<Activity>,
    }
}

impl<I: AsyncRead> AsyncRead for Watched<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        result
    }
}

impl<I: AsyncWrite> AsyncWrite for Watched<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection's service: counts requests in and out, and tells HTTP/1 clients to close
/// the connection when it is draining, old, or has served its last request.
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    scheme: Option<crate::http::UrlScheme>,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
    phases: Arc<PhaseWatch>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody>;
    type Error = Infallible;
    type Future = TrackedFuture<tower::util::Oneshot<S, Request<Body>>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(scheme) = self.scheme {
            request.extensions_mut().insert(scheme);
        }
        let served = self.activity.request_started(request.version());
        let guard = RequestGuard(self.activity.clone());
        let close = request.version() <= Version::HTTP_11
            && (self.phases.phase() >= DRAINING
                || (self.limits.max_requests > 0 && served >= self.limits.max_requests)
                || (self.limits.max_age.is_some() && self.activity.too_old(&self.limits, Instant::now())));
        TrackedFuture {
            inner: self.inner.clone().oneshot(request.map(Body::new)),
            guard: Some(guard),
            close,
        }
    }
}

/// Counts a request out when its response body is done or dropped.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_ended(Instant::now());
    }
}

pin_project! {
    struct TrackedFuture<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
        close: bool,
    }
}

impl<F: Future<Output = Result<Response, Infallible>>> Future for TrackedFuture<F> {
    type Output = Result<http::Response<TrackedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = std::task::ready!(this.inner.poll(cx));
        if *this.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|body| TrackedBody {
            inner: body,
            _guard: guard,
        })))
    }
}

pin_project! {
    /// A response body that counts its request out when it is dropped.
    struct TrackedBody {
        #[pin]
        inner: Body,
        _guard: Option<RequestGuard>,
    }
}

impl HttpBody for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP_ALIVE: Duration = Duration::from_secs(75);

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            max_requests: 0,
            max_age: Some(Duration::from_secs(600)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_has_the_header_timeout_from_its_start_however_it_trickles() {
        let opened = Instant::now();
        let activity = Activity::new(opened);
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.read();
        tokio::time::advance(Duration::from_secs(3)).await;
        activity.read();
        assert_eq!(
            activity.deadline(&limits(), KEEP_ALIVE),
            Some((opened + Duration::from_secs(10), Closed::HeaderReadTimeout))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_has_the_keep_alive_timeout_then_the_header_timeout() {
        let opened = Instant::now();
        let activity = Activity::new(opened);
        activity.request_started(Version::HTTP_11);
        assert_eq!(
            activity.deadline(&limits(), KEEP_ALIVE),
            None,
            "no deadline while a request runs"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        activity.request_ended(Instant::now());
        let idle = Instant::now();
        assert_eq!(
            activity.deadline(&limits(), KEEP_ALIVE),
            Some((idle + Duration::from_secs(75), Closed::KeepAliveTimeout))
        );
        assert_eq!(
            activity.next_check(&limits(), KEEP_ALIVE, idle),
            idle + Duration::from_secs(10),
            "looks again within a header timeout, to notice a slow head"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        activity.read();
        let head = Instant::now();
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.read();
        assert_eq!(
            activity.deadline(&limits(), KEEP_ALIVE),
            Some((head + Duration::from_secs(10), Closed::HeaderReadTimeout)),
            "timed from the head's first byte, not reset by later ones"
        );
        activity.request_started(Version::HTTP_11);
        assert_eq!(activity.deadline(&limits(), KEEP_ALIVE), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_looks_again_at_the_maximum_age() {
        let opened = Instant::now();
        let activity = Activity::new(opened);
        activity.request_started(Version::HTTP_11);
        let limits = Limits {
            max_age: Some(Duration::from_secs(4)),
            ..limits()
        };
        assert_eq!(
            activity.next_check(&limits, KEEP_ALIVE, opened),
            opened + Duration::from_secs(4)
        );
        assert!(!activity.too_old(&limits, opened + Duration::from_secs(3)));
        assert!(activity.too_old(&limits, opened + Duration::from_secs(4)));
    }
}
