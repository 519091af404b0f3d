//! The outbound client between two real services over loopback: the breaker opens on a failing
//! callee and fails fast, closes after the probe once the callee recovers; retries replay a
//! request; the callee continues the caller's trace.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chassis::Context;
use chassis::client::ClientError;
use chassis::http::Problem;
use chassis::resilience::circuit_breaker::CircuitOpen;
use chassis::testing::{options, spawn, spawn_with};

#[derive(Clone, Default)]
struct Callee {
    failing: Arc<AtomicBool>,
    fail_once: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    traceparent: Arc<Mutex<Option<String>>>,
}

async fn work(State(callee): State<Callee>, headers: HeaderMap) -> Response {
    callee.hits.fetch_add(1, Ordering::SeqCst);
    *callee.traceparent.lock().unwrap() = headers.get("traceparent").map(|v| v.to_str().unwrap().to_owned());
    if callee.failing.load(Ordering::SeqCst) || callee.fail_once.swap(false, Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    "done".into_response()
}

async fn proxy(State(client): State<chassis::client::Client>) -> Response {
    match client.get("/work").await {
        Ok(response) => {
            let status = response.status();
            (status, client.bytes(response).await.unwrap()).into_response()
        }
        Err(ClientError::Request { source, .. }) if source.downcast_ref::<CircuitOpen>().is_some() => Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "callee-unavailable",
            "Callee unavailable",
        )
        .into_response(),
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}

async fn start_pair(retries: u32) -> (Callee, chassis::RunningService, chassis::RunningService) {
    let callee = Callee::default();
    let state = callee.clone();
    let callee_service =
        spawn(move |_: Context<()>| async move { Ok(Router::new().route("/work", get(work)).with_state(state)) }).await;
    let base_url = format!("http://{}", callee_service.http_addr());
    let caller_options = options().configure(move |l| {
        l.set("clients.callee.base_url", base_url)
            .set("clients.callee.retry.max_retries", retries)
            .set("clients.callee.retry.base_delay", "1ms")
            .set("clients.callee.retry.max_delay", "5ms")
            .set("clients.callee.circuit_breaker.consecutive_failures", 3)
            .set("clients.callee.circuit_breaker.open_duration", "300ms")
            .set("clients.callee.circuit_breaker.half_open_calls", 1)
    });
    let caller = spawn_with(caller_options, |ctx: Context<()>| async move {
        let client = ctx.client("callee")?;
        Ok(Router::new().route("/proxy", get(proxy)).with_state(client))
    })
    .await;
    (callee, callee_service, caller)
}

#[tokio::test]
async fn the_breaker_opens_on_a_failing_callee_fails_fast_and_closes_after_recovery() {
    let (callee, callee_service, caller) = start_pair(0).await;
    let http = reqwest::Client::new();
    let proxy = format!("http://{}/proxy", caller.http_addr());
    let trace_id = "0af7651916cd43dd8448eb211c80319c";

    let response = http
        .get(&proxy)
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");
    let seen = callee
        .traceparent
        .lock()
        .unwrap()
        .clone()
        .expect("the callee got a traceparent");
    assert!(
        seen.contains(trace_id),
        "the callee continues the caller's trace: {seen}"
    );
    assert!(
        !seen.contains("b7ad6b7169203331"),
        "its parent is the caller's client span: {seen}"
    );

    callee.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(http.get(&proxy).send().await.unwrap().status(), 503);
    }
    assert_eq!(callee.hits.load(Ordering::SeqCst), 4);
    // Open: the caller answers at once without calling the callee.
    let fast = http.get(&proxy).send().await.unwrap();
    assert_eq!(fast.status(), 503);
    assert!(fast.text().await.unwrap().contains("callee-unavailable"));
    assert_eq!(callee.hits.load(Ordering::SeqCst), 4, "an open breaker does not call");
    let readiness: serde_json::Value = http
        .get(format!("http://{}/health/ready", caller.admin_addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        readiness["status"], "warn",
        "an open breaker shows in readiness: {readiness}"
    );

    callee.failing.store(false, Ordering::SeqCst);
    // Rejected at once while open; once the open duration is over, the probe goes through.
    chassis::testing::eventually("the breaker to let a probe through", async || {
        (http.get(&proxy).send().await.unwrap().status() == 200).then_some(())
    })
    .await;
    assert_eq!(
        callee.hits.load(Ordering::SeqCst),
        5,
        "only the probe reached the callee"
    );
    assert_eq!(http.get(&proxy).send().await.unwrap().status(), 200);
    assert_eq!(callee.hits.load(Ordering::SeqCst), 6);

    caller.stop().await;
    callee_service.stop().await;
}

#[tokio::test]
async fn a_transient_failure_is_retried_by_the_client() {
    let (callee, callee_service, caller) = start_pair(2).await;
    callee.fail_once.store(true, Ordering::SeqCst);
    let response = reqwest::get(format!("http://{}/proxy", caller.http_addr()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(callee.hits.load(Ordering::SeqCst), 2, "one failure, one retry");
    caller.stop().await;
    callee_service.stop().await;
}

#[tokio::test]
async fn an_unknown_client_name_says_which_are_configured() {
    let error = chassis::start(options(), |ctx: Context<()>| async move {
        ctx.client("nope")?;
        Ok(Router::new())
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("[clients.nope]"), "{error}");
}
