//! Idempotency against every store: the in-memory one, and the real Redis and PostgreSQL
//! servers (REDIS_URL, DATABASE_URL; under CI=true an unreachable server fails the test).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use chassis::Context;
use chassis::idempotency::{
    IdempotencyConfig, IdempotencyLayer, IdempotencyStore, IdempotentConsumer, MemoryStore, PostgresStore, Processed,
    RedisStore,
};
use chassis::testing::{backend, backend_url, idempotency_store_conformance, spawn};

async fn redis() -> Option<RedisStore> {
    let url = backend_url("REDIS_URL", "redis://127.0.0.1:6379");
    backend("Redis", RedisStore::connect(&url, "chassis-tests")).await
}

fn postgres_url() -> String {
    backend_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
}

async fn postgres() -> Option<PostgresStore> {
    let store = backend("PostgreSQL", PostgresStore::connect(&postgres_url())).await?;
    store.migrate().await.expect("migration");
    Some(store)
}

#[tokio::test]
async fn memory_store_conforms() {
    idempotency_store_conformance(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn redis_store_conforms() {
    if let Some(store) = redis().await {
        idempotency_store_conformance(Arc::new(store)).await;
    }
}

#[tokio::test]
async fn postgres_store_conforms() {
    if let Some(store) = postgres().await {
        idempotency_store_conformance(Arc::new(store)).await;
    }
}

/// A payment endpoint that counts its executions.
async fn payments_service(store: Arc<dyn IdempotencyStore>, executions: Arc<AtomicUsize>) -> chassis::RunningService {
    spawn(move |_: Context<()>| async move {
        let layer = IdempotencyLayer::new(store, IdempotencyConfig::default())?;
        let pay = move |body: String| {
            let executions = executions.clone();
            async move {
                let n = executions.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                if body == "fail" {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                (
                    StatusCode::CREATED,
                    [("location", format!("/payments/{n}")), ("x-not-stored", "1".into())],
                    format!("{{\"payment\":{n},\"body\":{body:?}}}"),
                )
                    .into_response()
            }
        };
        Ok(Router::new().route("/payments", post(pay)).layer(layer))
    })
    .await
}

async fn idempotent_http(store: Arc<dyn IdempotencyStore>) {
    let executions = Arc::new(AtomicUsize::new(0));
    let service = payments_service(store, executions.clone()).await;
    let url = format!("http://{}/payments", service.http_addr());
    let http = reqwest::Client::new();
    let key = uuid::Uuid::new_v4().to_string();

    // 50 concurrent requests with one key: one execution; the rest replay or get 409.
    let responses = futures_util::future::join_all((0..50).map(|_| {
        http.post(&url)
            .header("idempotency-key", format!("\"{key}\""))
            .body("50 EUR")
            .send()
    }))
    .await;
    assert_eq!(executions.load(Ordering::SeqCst), 1, "the handler ran exactly once");
    let mut first_body = None;
    for response in responses {
        let response = response.unwrap();
        match response.status().as_u16() {
            201 => {
                let body = response.text().await.unwrap();
                assert_eq!(
                    first_body.get_or_insert(body.clone()),
                    &body,
                    "every 201 is the same payment"
                );
            }
            409 => {
                assert!(response.headers().contains_key("retry-after"));
                assert_eq!(response.headers()["content-type"], "application/problem+json");
            }
            other => panic!("unexpected status {other}"),
        }
    }

    // Afterwards every retry is a replay.
    let replay = http
        .post(&url)
        .header("idempotency-key", format!("\"{key}\""))
        .body("50 EUR")
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 201);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.headers()["location"], "/payments/1");
    assert!(
        !replay.headers().contains_key("x-not-stored"),
        "only the chosen headers are stored"
    );
    assert!(replay.text().await.unwrap().contains("\"payment\":1"));
    assert_eq!(executions.load(Ordering::SeqCst), 1);

    // Same key, different payload: 422.
    let mismatch = http
        .post(&url)
        .header("idempotency-key", key.as_str())
        .body("5000 EUR")
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status(), 422);

    // No key: 400; a bad key: 400.
    assert_eq!(http.post(&url).body("x").send().await.unwrap().status(), 400);
    assert_eq!(
        http.post(&url)
            .header("idempotency-key", "a b")
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // A 5xx releases the key: the retry runs again.
    let failing = uuid::Uuid::new_v4().to_string();
    for _ in 0..2 {
        let response = http
            .post(&url)
            .header("idempotency-key", failing.as_str())
            .body("fail")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
    }
    assert_eq!(
        executions.load(Ordering::SeqCst),
        3,
        "each failed attempt ran; nothing was replayed"
    );
    service.stop().await;
}

#[tokio::test]
async fn http_layer_with_the_memory_store() {
    idempotent_http(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn http_layer_with_redis() {
    if let Some(store) = redis().await {
        idempotent_http(Arc::new(store)).await;
    }
}

#[tokio::test]
async fn http_layer_with_postgres() {
    if let Some(store) = postgres().await {
        idempotent_http(Arc::new(store)).await;
    }
}

/// After the store's connection is killed, requests either succeed once or fail with 503
/// without running the handler; never twice.
async fn survives_a_connection_drop(store: Arc<dyn IdempotencyStore>, kill: impl AsyncFnOnce()) {
    let executions = Arc::new(AtomicUsize::new(0));
    let service = payments_service(store, executions.clone()).await;
    let url = format!("http://{}/payments", service.http_addr());
    let http = reqwest::Client::new();
    let warm = http
        .post(&url)
        .header("idempotency-key", uuid::Uuid::new_v4().to_string())
        .body("warm")
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 201);
    kill().await;
    // A client retrying with one key until the store is back: 503s while it is not, then one
    // execution and replays.
    let key = uuid::Uuid::new_v4().to_string();
    let mut created = 0;
    chassis::testing::eventually("the store to recover", async || {
        let response = http
            .post(&url)
            .header("idempotency-key", key.as_str())
            .body("after")
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            201 => created += 1,
            503 => {
                let body = response.text().await.unwrap();
                assert!(body.contains("idempotency-store-unavailable"), "{body}");
            }
            other => panic!("unexpected status {other}"),
        }
        (created >= 2).then_some(())
    })
    .await;
    assert!(created >= 2, "the store recovered and the retries were replays");
    assert_eq!(
        executions.load(Ordering::SeqCst),
        2,
        "warm-up + one execution of the key, never two"
    );
    service.stop().await;
}

#[tokio::test]
async fn redis_connection_drop_never_runs_a_request_twice() {
    let Some(store) = redis().await else { return };
    let url = backend_url("REDIS_URL", "redis://127.0.0.1:6379");
    survives_a_connection_drop(Arc::new(store), async move || {
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.unwrap();
        let _: redis::Value = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut admin)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn postgres_connection_drop_never_runs_a_request_twice() {
    if postgres().await.is_none() {
        return;
    }
    // A pool of its own, so killing its connections cannot disturb the other tests.
    let options: sqlx::postgres::PgConnectOptions = postgres_url().parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options.application_name("chassis-drop-test"))
        .await
        .unwrap();
    survives_a_connection_drop(Arc::new(PostgresStore::from_pool(pool)), async move || {
        let admin = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&postgres_url())
            .await
            .unwrap();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'chassis-drop-test'",
        )
        .execute(&admin)
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_idempotent_consumer_skips_duplicates_in_every_store() {
    let mut stores: Vec<Arc<dyn IdempotencyStore>> = vec![Arc::new(MemoryStore::default())];
    if let Some(store) = redis().await {
        stores.push(Arc::new(store));
    }
    if let Some(store) = postgres().await {
        stores.push(Arc::new(store));
    }
    for store in stores {
        let name = store.name();
        let consumer = IdempotentConsumer::new(store, format!("billing-{}", uuid::Uuid::new_v4().simple()));
        let runs = AtomicUsize::new(0);
        let handler = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(())
        };
        assert_eq!(
            consumer.process("m1", handler).await.unwrap(),
            Processed::Done(()),
            "{name}"
        );
        assert_eq!(
            consumer.process("m1", handler).await.unwrap(),
            Processed::Duplicate,
            "{name}"
        );
        // A failed handler releases the id: the redelivery runs it.
        let failing = || async { Err::<(), _>(std::io::Error::other("db down")) };
        assert!(consumer.process("m2", failing).await.is_err());
        assert_eq!(
            consumer.process("m2", handler).await.unwrap(),
            Processed::Done(()),
            "{name}"
        );
        assert_eq!(runs.load(Ordering::SeqCst), 2, "{name}");
    }
}

#[tokio::test]
async fn postgres_records_the_message_in_the_handlers_transaction() {
    let Some(store) = postgres().await else { return };
    let pool = store.pool();
    sqlx::query("CREATE TABLE IF NOT EXISTS chassis_test_ledger (id TEXT PRIMARY KEY, amount INT)")
        .execute(pool)
        .await
        .unwrap();
    let message = uuid::Uuid::new_v4().to_string();
    for delivery in 0..3 {
        let mut tx = pool.begin().await.unwrap();
        if PostgresStore::record_message(&mut tx, "ledger", &message)
            .await
            .unwrap()
        {
            sqlx::query("INSERT INTO chassis_test_ledger (id, amount) VALUES ($1, 50)")
                .bind(&message)
                .execute(&mut *tx)
                .await
                .unwrap();
            if delivery == 0 {
                // The process "dies" before committing: nothing happened, the id is not recorded.
                drop(tx);
                continue;
            }
            tx.commit().await.unwrap();
        }
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM chassis_test_ledger WHERE id = $1")
        .bind(&message)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rows, 1, "three deliveries, one crash: the effect happened exactly once");
}

#[tokio::test]
async fn a_panicking_handler_releases_the_key_so_the_retry_runs() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let service = spawn(move |_: Context<()>| async move {
        let layer = IdempotencyLayer::new(Arc::new(MemoryStore::default()), IdempotencyConfig::default())?;
        let handler = move || {
            let counter = counter.clone();
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first attempt crashes");
                }
                StatusCode::CREATED
            }
        };
        Ok(Router::new().route("/jobs", post(handler)).layer(layer))
    })
    .await;
    let url = format!("http://{}/jobs", service.http_addr());
    let http = reqwest::Client::new();
    let send = || http.post(&url).header("idempotency-key", "job-1").send();
    assert_eq!(send().await.unwrap().status(), 500);
    // The release runs as the panic unwinds; a client retrying gets 409 until it has landed.
    let status = chassis::testing::eventually("the key to be released", async || {
        let status = send().await.unwrap().status().as_u16();
        (status != 409).then_some(status)
    })
    .await;
    assert_eq!(status, 201, "the retry ran the handler again");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(send().await.unwrap().status(), 201, "and is replayed from now on");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    service.stop().await;
}
