//! Identity end to end over real sockets: a service verifies the signed identity header, hands
//! the identity to handlers, idempotency keys and rate limits, and answers forged, expired and
//! missing identities with 401 problems; every client error it answers is a problem.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::routing::{get, post};
use chassis::Context;
use chassis::idempotency::{IdempotencyConfig, IdempotencyLayer, MemoryStore};
use chassis::identity::{Identity, IdentityConfig, IdentitySigner};
use chassis::resilience::{RateLimitConfig, RateLimitKey, RateLimitLayer};
use chassis::testing::{options, spawn_with};
use serde_json::Value;

const SECRET: &str = "a shared secret of thirty-two bytes";

fn signer() -> IdentitySigner {
    IdentitySigner::new(&IdentityConfig::signed_with(SECRET)).unwrap()
}

async fn service() -> chassis::RunningService {
    let options = options().configure(|loader| loader.set("identity.secrets", vec![SECRET]));
    spawn_with(options, |_: Context<()>| async {
        let counter = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let idempotency = IdempotencyLayer::new(
            Arc::new(MemoryStore::default()),
            IdempotencyConfig::default().with_namespace("identity-test"),
        )?;
        let mut limit = RateLimitConfig::default();
        limit.requests = 2;
        limit.per = Duration::from_secs(60);
        limit.key = RateLimitKey::Identity;
        Ok(Router::new()
            .route("/me", get(|identity: Identity| async move { identity.scope() }))
            .route(
                "/json",
                post(|axum::Json(value): axum::Json<Value>| async move { value.to_string() }),
            )
            .route(
                "/orders",
                post(move || {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    async move { format!("order {n}") }
                })
                .layer(idempotency),
            )
            .route(
                "/limited",
                get(|| async { "ok" }).layer(RateLimitLayer::new("per-client", limit)?),
            ))
    })
    .await
}

async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_signed_identity_reaches_the_handler_and_a_bad_one_is_refused() {
    let service = service().await;
    let url = |path: &str| format!("http://{}{path}", service.http_addr());
    let http = reqwest::Client::new();
    let alice = signer().header_value(&Identity::new("web").with_subject("alice"));

    let me = http
        .get(url("/me"))
        .header("x-chassis-identity", alice.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(me.text().await.unwrap(), "web/alice");

    let anonymous = http.get(url("/me")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(
        problem(anonymous).await["type"],
        "urn:chassis:problem:identity-required"
    );

    let forged = alice.to_str().unwrap().replace("alice", "mallory");
    let old = signer().header_value_at(&Identity::new("web"), SystemTime::now() - Duration::from_secs(600));
    for (bad, why) in [(forged.as_str(), "signature"), (old.to_str().unwrap(), "signed")] {
        let refused = http
            .get(url("/me"))
            .header("x-chassis-identity", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        let problem = problem(refused).await;
        assert_eq!(problem["type"], "urn:chassis:problem:identity-invalid");
        assert!(problem["detail"].as_str().unwrap().contains(why), "{problem}");
    }
    service.stop().await;
}

#[tokio::test]
async fn keys_and_rate_limits_are_per_client() {
    let service = service().await;
    let url = |path: &str| format!("http://{}{path}", service.http_addr());
    let http = reqwest::Client::new();
    let (a, b) = (
        signer().header_value(&Identity::new("a")),
        signer().header_value(&Identity::new("b")),
    );
    let order = |identity: &http::HeaderValue| {
        http.post(url("/orders"))
            .header("x-chassis-identity", identity.clone())
            .header("idempotency-key", "k-1")
            .body("same body")
            .send()
    };
    assert_eq!(order(&a).await.unwrap().text().await.unwrap(), "order 1");
    let replayed = order(&a).await.unwrap();
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    assert_eq!(replayed.text().await.unwrap(), "order 1");
    let other = order(&b).await.unwrap();
    assert!(
        other.headers().get("idempotent-replayed").is_none(),
        "B never gets A's answer"
    );
    assert_eq!(other.text().await.unwrap(), "order 2");

    let limited = |identity: &http::HeaderValue| {
        http.get(url("/limited"))
            .header("x-chassis-identity", identity.clone())
            .send()
    };
    for _ in 0..2 {
        assert_eq!(limited(&a).await.unwrap().status(), 200);
    }
    assert_eq!(limited(&a).await.unwrap().status(), 429);
    assert_eq!(limited(&b).await.unwrap().status(), 200, "b has a bucket of its own");
    let anonymous = http.get(url("/limited")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "no shared bucket for anonymous requests");
    service.stop().await;
}

#[tokio::test]
async fn every_client_error_is_a_problem() {
    let service = service().await;
    let url = |path: &str| format!("http://{}{path}", service.http_addr());
    let http = reqwest::Client::new();
    let missing = http.get(url("/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(problem(missing).await["type"], "urn:chassis:problem:not-found");
    let wrong_method = http.delete(url("/me")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert!(wrong_method.headers().contains_key("allow"));
    assert_eq!(
        problem(wrong_method).await["type"],
        "urn:chassis:problem:method-not-allowed"
    );
    let bad_json = http
        .post(url("/json"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    let bad_json = problem(bad_json).await;
    assert_eq!(bad_json["type"], "urn:chassis:problem:bad-request");
    assert!(bad_json["detail"].as_str().unwrap().contains("JSON"), "{bad_json}");
    let wrong_type = http.post(url("/json")).body("{}").send().await.unwrap();
    assert_eq!(wrong_type.status(), 415);
    assert_eq!(
        problem(wrong_type).await["type"],
        "urn:chassis:problem:unsupported-media-type"
    );
    service.stop().await;
}
