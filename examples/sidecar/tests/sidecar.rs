//! The sidecar in front of a plain axum app (no chassis inside), over loopback HTTP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Hits {
    flaky: Arc<AtomicU32>,
    down: Arc<AtomicU32>,
    post: Arc<AtomicU32>,
}

/// What the app saw.
async fn echo(request: Request) -> impl IntoResponse {
    let method = request.method().to_string();
    let uri = request.uri().to_string();
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
    let mut response_headers = HeaderMap::new();
    response_headers.insert("x-app", "yes".parse().unwrap());
    response_headers.insert("keep-alive", "timeout=5".parse().unwrap());
    let seen = json!({ "method": method, "uri": uri, "headers": headers, "body": String::from_utf8_lossy(&body) });
    (StatusCode::CREATED, response_headers, Json(seen))
}

/// 503 on the first call, then 200.
async fn flaky(State(hits): State<Hits>) -> StatusCode {
    match hits.flaky.fetch_add(1, Ordering::SeqCst) {
        0 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    }
}

async fn down(State(hits): State<Hits>) -> StatusCode {
    hits.down.fetch_add(1, Ordering::SeqCst);
    StatusCode::INTERNAL_SERVER_ERROR
}

async fn post_once(State(hits): State<Hits>, _body: Bytes) -> StatusCode {
    hits.post.fetch_add(1, Ordering::SeqCst);
    StatusCode::SERVICE_UNAVAILABLE
}

/// The app behind the sidecar: plain axum, nothing of the chassis.
async fn app() -> (SocketAddr, Hits) {
    let hits = Hits::default();
    let router = axum::Router::new()
        .route("/echo/{*rest}", any(echo))
        .route("/flaky", get(flaky))
        .route("/down", get(down))
        .route("/payments", post(post_once))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (addr, hits)
}

async fn sidecar(app: SocketAddr, requests_per_second: u32) -> chassis::RunningService {
    let options = chassis::testing::options().configure(move |loader| {
        loader
            .set("clients.app.base_url", format!("http://{app}"))
            .set("clients.app.retry.base_delay", "1ms")
            .set("clients.app.retry.max_retries", 1)
            .set("clients.app.circuit_breaker.consecutive_failures", 5)
            .set("clients.app.circuit_breaker.open_duration", "60s")
            .set("rate_limit.requests", requests_per_second)
            .set("rate_limit.per", "60s")
    });
    chassis::testing::spawn_with(options, sidecar::service).await
}

#[tokio::test]
async fn forwards_requests_and_answers_end_to_end() {
    let (app, _) = app().await;
    let proxy = sidecar(app, 1000).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answer = reqwest::Client::new()
        .put(format!("http://{}/echo/a/b?x=1&y=2", proxy.http_addr()))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .header("connection", "x-private")
        .header("x-private", "not for the app")
        .header("x-custom", "for the app")
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201, "the app's status");
    assert_eq!(answer.headers()["x-app"], "yes", "the app's headers");
    assert!(
        answer.headers().get("keep-alive").is_none(),
        "hop-by-hop headers stay behind"
    );
    assert!(
        answer.headers().get("x-request-id").is_some(),
        "the sidecar's edge answers"
    );
    let seen: Value = answer.json().await.unwrap();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["uri"], "/echo/a/b?x=1&y=2");
    assert_eq!(seen["body"], "the body");
    let headers = &seen["headers"];
    assert_eq!(headers["x-custom"], "for the app");
    assert!(
        headers.get("x-private").is_none(),
        "headers named by Connection are dropped"
    );
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-host"], proxy.http_addr().to_string());
    let traceparent = headers["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "the trace goes on: {traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "with the sidecar's span as parent"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn retries_idempotent_requests_only() {
    let (app, hits) = app().await;
    let proxy = sidecar(app, 1000).await;
    let http = reqwest::Client::new();
    let flaky = http
        .get(format!("http://{}/flaky", proxy.http_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(flaky.status(), 200, "the 503 was retried");
    assert_eq!(hits.flaky.load(Ordering::SeqCst), 2);

    let payment = http
        .post(format!("http://{}/payments", proxy.http_addr()))
        .body("50 EUR");
    assert_eq!(payment.send().await.unwrap().status(), 503);
    assert_eq!(
        hits.post.load(Ordering::SeqCst),
        1,
        "a POST without Idempotency-Key is sent once"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn the_breaker_stops_calling_a_failing_app() {
    let (app, hits) = app().await;
    let proxy = sidecar(app, 1000).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/down", proxy.http_addr());
    // Two attempts per request (one retry): the fifth failure opens the breaker.
    for _ in 0..2 {
        assert_eq!(http.get(&url).send().await.unwrap().status(), 500, "the app's answer");
    }
    let opened = http.get(&url).send().await.unwrap();
    assert_eq!(opened.status(), 503, "the retry after the fifth failure is refused");
    let calls = hits.down.load(Ordering::SeqCst);
    assert_eq!(calls, 5);
    for _ in 0..3 {
        let rejected = http.get(&url).send().await.unwrap();
        assert_eq!(rejected.status(), 503);
        assert!(rejected.headers().get("retry-after").is_some());
        let problem: Value = rejected.json().await.unwrap();
        assert_eq!(problem["type"], "urn:chassis:problem:circuit-open", "{problem}");
    }
    assert_eq!(hits.down.load(Ordering::SeqCst), calls, "the app was not called again");

    let breakers: Value = http
        .get(format!("http://{}/circuit-breakers", proxy.admin_addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(breakers.to_string().contains("\"open\""), "{breakers}");
    proxy.stop().await;
}

#[tokio::test]
async fn rate_limits_and_reports_metrics() {
    let (app, _) = app().await;
    let proxy = sidecar(app, 2).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/echo/x", proxy.http_addr());
    let statuses = statuses(&http, &url, 3).await;
    assert_eq!(statuses, [201, 201, 429]);

    let metrics = http
        .get(format!("http://{}/metrics", proxy.admin_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let server = metrics
        .lines()
        .find(|l| l.starts_with("http_server_request_duration_seconds_count") && l.contains("/{*path}"))
        .unwrap_or_else(|| panic!("no server series for the proxied route:\n{metrics}"));
    assert!(!server.contains("/echo/x"), "the raw path is never a label: {server}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_client_request_duration_seconds_count") && l.contains("client=\"app\"")),
        "the calls to the app are measured:\n{metrics}"
    );
    proxy.stop().await;
}

async fn statuses(http: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        statuses.push(http.get(url).send().await.unwrap().status().as_u16());
    }
    statuses
}

#[tokio::test]
async fn an_unreachable_app_is_a_bad_gateway() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = sidecar(closed, 1000).await;
    let answer = reqwest::get(format!("http://{}/anything", proxy.http_addr()))
        .await
        .unwrap();
    assert_eq!(answer.status(), 502);
    let problem: Value = answer.json().await.unwrap();
    assert_eq!(problem["type"], "urn:chassis:problem:app-unreachable", "{problem}");
    proxy.stop().await;
}
