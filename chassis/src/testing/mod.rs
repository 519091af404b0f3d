//! Helpers for tests of services and of the chassis itself (feature `testing`): start a service
//! on free loopback ports, decide whether a test's backend is required, wait for something to
//! happen, and capture exported spans with an in-process OTLP receiver.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! # async fn demo() {
//! let service = chassis::testing::spawn(|_ctx: chassis::Context<()>| async {
//!     Ok(Router::new().route("/", get(|| async { "hi" })))
//! })
//! .await;
//! let url = format!("http://{}/", service.http_addr());
//! # let _ = url;
//! service.stop().await;
//! # }
//! ```

mod backend;
mod broker;
mod otlp;
mod pki;
#[cfg(feature = "postgres")]
mod postgres;
mod promtool;
mod proxy;

use std::future::Future;

use axum::Router;
use serde::de::DeserializeOwned;

pub use backend::{
    backend, backend_url, backends_required, eventually, eventually_within, free_port, host_port, reachable,
};
pub use broker::delete_broker_namespace;
pub use otlp::{OtlpReceiver, ReceivedLog, ReceivedMetric, ReceivedSpan};
pub use pki::{IssuedCertificate, TestPki};
#[cfg(feature = "postgres")]
pub use postgres::postgres_schema;
pub use promtool::promtool_check;
pub use proxy::{Fault, FaultProxy};

use crate::runtime::{Context, Options, RunningService};

/// Options for a test: both listeners on `127.0.0.1` with free ports, no readiness delay at
/// shutdown. Adjust further with [`Options::configure`].
pub fn options() -> Options {
    Options::new().configure(|loader| {
        loader
            .set("http.host", "127.0.0.1")
            .set("http.port", 0)
            .set("admin.host", "127.0.0.1")
            .set("admin.port", 0)
            .set("shutdown.readiness_delay", "0s")
    })
}

/// Starts a service with [`options`] and panics with the start-up error if it cannot start.
pub async fn spawn<T, F, Fut>(init: F) -> RunningService
where
    T: DeserializeOwned + Send + Sync + 'static,
    F: FnOnce(Context<T>) -> Fut,
    Fut: Future<Output = crate::Result<Router>>,
{
    spawn_with(options(), init).await
}

/// Starts a service with the given options and panics with the start-up error if it cannot
/// start.
pub async fn spawn_with<T, F, Fut>(options: Options, init: F) -> RunningService
where
    T: DeserializeOwned + Send + Sync + 'static,
    F: FnOnce(Context<T>) -> Fut,
    Fut: Future<Output = crate::Result<Router>>,
{
    match crate::runtime::start(options, init).await {
        Ok(service) => service,
        Err(error) => panic!("the service under test could not start: {error}"),
    }
}

/// The behaviour every [`IdempotencyStore`](crate::idempotency::IdempotencyStore) must have,
/// as one test: atomic claims, in-flight conflicts, fingerprint mismatches, replay after
/// completion, release, lease expiry of a crashed claim, TTL expiry, and stale tokens that
/// change nothing. Run it against your own store implementation too.
///
/// Uses real time (about a second): the leases it checks are judged by the store's clock.
pub async fn idempotency_store_conformance(store: std::sync::Arc<dyn crate::idempotency::IdempotencyStore>) {
    use std::time::Duration;

    use crate::idempotency::{Begin, StoredResponse};

    let run = uuid::Uuid::new_v4().simple().to_string();
    let key = |name: &str| format!("conformance:{run}:{name}");
    let lease = Duration::from_secs(30);
    let ttl = Duration::from_secs(60);
    let response = StoredResponse {
        status: 201,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: b"{\"id\":1}".to_vec(),
    };
    let name = store.name();

    // Claim, conflict, mismatch.
    let Begin::Claimed { token } = store.begin(&key("a"), "fp1", lease).await.unwrap() else {
        panic!("{name}: a new key is claimed");
    };
    assert!(
        matches!(
            store.begin(&key("a"), "fp1", lease).await.unwrap(),
            Begin::InFlight { .. }
        ),
        "{name}: in flight"
    );
    assert_eq!(
        store.begin(&key("a"), "fp2", lease).await.unwrap(),
        Begin::Mismatch,
        "{name}: other fingerprint"
    );

    // A stale token changes nothing; the owner's completion is replayed.
    store
        .complete(&key("a"), "not-the-token", &response, ttl)
        .await
        .unwrap();
    assert!(
        matches!(
            store.begin(&key("a"), "fp1", lease).await.unwrap(),
            Begin::InFlight { .. }
        ),
        "{name}: stale complete ignored"
    );
    store.complete(&key("a"), &token, &response, ttl).await.unwrap();
    assert_eq!(
        store.begin(&key("a"), "fp1", lease).await.unwrap(),
        Begin::Completed(response.clone()),
        "{name}: replay"
    );
    assert_eq!(
        store.begin(&key("a"), "fp2", lease).await.unwrap(),
        Begin::Mismatch,
        "{name}: mismatch after completion"
    );
    store.release(&key("a"), &token).await.unwrap();
    assert_eq!(
        store.begin(&key("a"), "fp1", lease).await.unwrap(),
        Begin::Completed(response.clone()),
        "{name}: completed keys are not released"
    );

    // Release frees the key, only for the owner.
    let Begin::Claimed { token } = store.begin(&key("b"), "fp", lease).await.unwrap() else {
        panic!("{name}: claim b");
    };
    store.release(&key("b"), "not-the-token").await.unwrap();
    assert!(
        matches!(
            store.begin(&key("b"), "fp", lease).await.unwrap(),
            Begin::InFlight { .. }
        ),
        "{name}: stale release ignored"
    );
    store.release(&key("b"), &token).await.unwrap();
    assert!(
        matches!(
            store.begin(&key("b"), "fp", lease).await.unwrap(),
            Begin::Claimed { .. }
        ),
        "{name}: released key is claimed again"
    );

    // A crashed claim frees itself after its lease; the crashed owner's late completion is ignored.
    let short = Duration::from_millis(300);
    let Begin::Claimed { token: crashed } = store.begin(&key("c"), "fp", short).await.unwrap() else {
        panic!("{name}: claim c");
    };
    tokio::time::sleep(Duration::from_millis(450)).await;
    let Begin::Claimed { token: second } = store.begin(&key("c"), "fp", lease).await.unwrap() else {
        panic!("{name}: the lease ran out, the key is claimable");
    };
    assert_ne!(crashed, second);
    store.complete(&key("c"), &crashed, &response, ttl).await.unwrap();
    assert!(
        matches!(
            store.begin(&key("c"), "fp", lease).await.unwrap(),
            Begin::InFlight { .. }
        ),
        "{name}: late completion ignored"
    );

    // Completed keys expire after their TTL and are new again.
    let Begin::Claimed { token } = store.begin(&key("d"), "fp", lease).await.unwrap() else {
        panic!("{name}: claim d");
    };
    store.complete(&key("d"), &token, &response, short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        matches!(
            store.begin(&key("d"), "other", lease).await.unwrap(),
            Begin::Claimed { .. }
        ),
        "{name}: expired key is new"
    );

    // Of concurrent claimers exactly one wins.
    let claims = futures_util::future::join_all((0..50).map(|_| {
        let store = store.clone();
        let key = key("e");
        async move { store.begin(&key, "fp", lease).await.unwrap() }
    }))
    .await;
    let won = claims.iter().filter(|b| matches!(b, Begin::Claimed { .. })).count();
    assert_eq!(won, 1, "{name}: exactly one of 50 concurrent claims wins");
}
