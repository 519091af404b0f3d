//! An orchestrator that dies in the middle of a checkout: the next one, on the same PostgreSQL
//! store, resumes the saga from the step that was running and finishes it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Downstream {
    /// While set, reservations never answer: the orchestrator's call hangs.
    hang: Arc<AtomicBool>,
    /// The idempotency keys of the reservations asked for.
    reservations: Arc<Mutex<Vec<String>>>,
}

async fn reserve(State(d): State<Downstream>, headers: HeaderMap, Json(_): Json<Value>) -> StatusCode {
    let key = headers["idempotency-key"].to_str().unwrap().to_owned();
    d.reservations.lock().unwrap().push(key);
    if d.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    StatusCode::CREATED
}

/// Inventory and payments in one plain axum app.
async fn downstream() -> (SocketAddr, Downstream) {
    let state = Downstream::default();
    state.hang.store(true, Ordering::SeqCst);
    let app = axum::Router::new()
        .route("/reservations", post(reserve))
        .route("/payments", post(|| async { StatusCode::CREATED }))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

/// The secret the orchestrator checks identities with; the test signs them as the gateway would.
const IDENTITY_SECRET: &str = "the test's identity secret, 32 bytes+";

fn identity_header() -> (http::HeaderName, http::HeaderValue) {
    let config = chassis::identity::IdentityConfig::signed_with(IDENTITY_SECRET);
    let signer = chassis::identity::IdentitySigner::new(&config).unwrap();
    let value = signer.header_value(&chassis::identity::Identity::new("restart-test"));
    (signer.header().clone(), value)
}

async fn orchestrator(downstream: SocketAddr, postgres: String, resume_after: &'static str) -> chassis::RunningService {
    let options = chassis::testing::options().configure(move |loader| {
        loader
            .set("identity.secrets", vec![IDENTITY_SECRET])
            .set("postgres.url", postgres)
            .set("step_timeout", "60s")
            .set("resume_after", resume_after)
            .set("shutdown.grace_period", "100ms")
            .set("clients.inventory.base_url", format!("http://{downstream}"))
            .set("clients.inventory.attempt_timeout", "60s")
            .set("clients.inventory.timeout", "60s")
            .set("clients.payments.base_url", format!("http://{downstream}"))
    });
    chassis::testing::spawn_with(options, shop_orchestrator::service).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_survives_the_death_of_its_orchestrator() {
    let postgres = chassis::testing::backend_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    if chassis::testing::backend("PostgreSQL", chassis::saga::PostgresSagaStore::connect(&postgres))
        .await
        .is_none()
    {
        return;
    }
    let (addr, downstream) = downstream().await;
    let http = reqwest::Client::new();

    // The first orchestrator starts a checkout; reserving stock hangs.
    let first = orchestrator(addr, postgres.clone(), "10m").await;
    let started: Value = http
        .post(format!("http://{}/checkouts", first.http_addr()))
        .header(identity_header().0, identity_header().1)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .json(&json!({ "item": "book", "quantity": 1, "amount_cents": 100 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = started["id"].as_str().unwrap().to_owned();
    chassis::testing::eventually("the reservation to start", async || {
        (!downstream.reservations.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    // It dies: the grace period runs out with the saga still waiting on inventory.
    assert_eq!(first.stop().await, chassis::runtime::Stopped::GracePeriodExceeded);

    // Inventory recovers; a new orchestrator notices the stalled checkout and finishes it.
    downstream.hang.store(false, Ordering::SeqCst);
    let second = orchestrator(addr, postgres, "1s").await;
    chassis::testing::eventually("the resumed checkout to complete", async || {
        let checkout: Value = http
            .get(format!("http://{}/checkouts/{id}", second.http_addr()))
            .header(identity_header().0, identity_header().1)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (checkout["status"] == "completed").then_some(())
    })
    .await;
    let keys = downstream.reservations.lock().unwrap().clone();
    assert_eq!(keys.len(), 2, "the step that was running ran again: {keys:?}");
    assert_eq!(
        keys[0], keys[1],
        "with the same idempotency key, so inventory replays it"
    );
    assert_eq!(keys[0], format!("checkout:{id}:reserve-stock"));
    second.stop().await;
}
