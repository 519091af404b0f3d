//! Real backends in tests: which URL, whether an unreachable one fails the test, and waiting
//! for what they do.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// `true` when the environment variable `CI` is `true` or `1`: a backend a test needs must then
/// be reachable, and an unreachable one fails the test instead of skipping it.
///
/// ```
/// // CI servers set CI=true; on a developer's machine it is usually unset.
/// let _ = chassis::testing::backends_required();
/// ```
pub fn backends_required() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The URL of a backend: the environment variable `var` when set, `default` (the local server)
/// otherwise.
///
/// ```
/// let url = chassis::testing::backend_url("CHASSIS_DOC_EXAMPLE_URL", "redis://127.0.0.1:6379");
/// assert_eq!(url, "redis://127.0.0.1:6379");
/// ```
pub fn backend_url(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Connects to a backend a test needs: `Some` when `connect` succeeds; when it fails, a panic
/// naming `name` and the error if [`backends_required`], else a note on stderr and `None`, so the
/// test can skip.
///
/// ```no_run
/// # async fn demo() {
/// use chassis::idempotency::RedisStore;
/// use chassis::testing::{backend, backend_url};
///
/// let url = backend_url("REDIS_URL", "redis://127.0.0.1:6379");
/// let Some(store) = backend("Redis", RedisStore::connect(&url, "tests")).await else {
///     return;
/// };
/// # let _ = store;
/// # }
/// ```
pub async fn backend<T, E: Display>(name: &str, connect: impl Future<Output = Result<T, E>>) -> Option<T> {
    match connect.await {
        Ok(connected) => Some(connected),
        Err(error) if backends_required() => panic!("{name} is required when CI=true, and it is unreachable: {error}"),
        Err(error) => {
            eprintln!("skipping: {name} is unreachable ({error}); with CI=true this test fails instead");
            None
        }
    }
}

/// A loopback port nobody listens on right now, for a process a test starts with its ports in
/// its environment (another process may take it meanwhile: use port 0 where the code under
/// test can report the port it got).
///
/// ```
/// assert_ne!(chassis::testing::free_port(), 0);
/// ```
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// The `host:port` a backend URL names, `default_port` when it names none: what to connect to
/// or put a [`FaultProxy`](super::FaultProxy) in front of.
///
/// ```
/// use chassis::testing::host_port;
///
/// assert_eq!(host_port("amqp://guest:guest@127.0.0.1:5672/%2f", 5672), "127.0.0.1:5672");
/// assert_eq!(host_port("postgres://postgres@db/test?sslmode=disable", 5432), "db:5432");
/// ```
pub fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

/// Opens a TCP connection to the server `url` names: a test's check that a backend is there,
/// for [`backend`].
///
/// ```no_run
/// # async fn demo() {
/// use chassis::testing::{backend, backend_url, reachable};
///
/// let url = backend_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
/// if backend("RabbitMQ", reachable(&url, 5672)).await.is_none() {
///     return;
/// }
/// # }
/// ```
pub async fn reachable(url: &str, default_port: u16) -> std::io::Result<()> {
    tokio::net::TcpStream::connect(host_port(url, default_port))
        .await
        .map(drop)
}

/// Waits until `check` returns `Some`, checking every 10 ms, and returns its value; panics
/// naming `what` after 20 seconds. See [`eventually_within`].
///
/// ```
/// # async fn demo() {
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
///
/// let done = Arc::new(AtomicBool::new(false));
/// let flag = done.clone();
/// tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
/// chassis::testing::eventually("the task to run", async || done.load(Ordering::SeqCst).then_some(())).await;
/// # }
/// ```
pub async fn eventually<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_within(what, Duration::from_secs(20), check).await
}

/// [`eventually`] with a limit of `limit` instead of 20 seconds, for what takes long by design
/// (a system settling after faults).
///
/// ```
/// # async fn demo() {
/// use std::time::Duration;
///
/// chassis::testing::eventually_within("nothing", Duration::from_secs(1), async || Some(())).await;
/// # }
/// ```
pub async fn eventually_within<T>(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
