//! The chassis' own database and broker calls are CLIENT and PRODUCER spans in the request's
//! trace, after OpenTelemetry's database and messaging conventions, checked at a real OTLP
//! receiver against the real PostgreSQL and Redis (DATABASE_URL, REDIS_URL; under CI=true an
//! unreachable server fails the test). Its own test binary: telemetry is installed once per
//! process.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use chassis::Context;
use chassis::idempotency::{IdempotencyConfig, IdempotencyLayer, PostgresStore, RedisStore};
use chassis::messaging::{Event, Incoming, Message, Publish};
use chassis::storage::Transaction;
use chassis::testing::{OtlpReceiver, ReceivedSpan, backend, backend_url, options, spawn_with};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;
const ERROR: i32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Shipped {
    n: i32,
}

impl Message for Shipped {
    const TYPE: &'static str = "spans.shipped";
}
impl Event for Shipped {}

fn postgres_url() -> String {
    backend_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
}

fn redis_url() -> String {
    backend_url("REDIS_URL", "redis://127.0.0.1:6379")
}

#[derive(Clone)]
struct Shop {
    pool: PgPool,
    outbox: chassis::outbox::Outbox,
}

/// Adds a message to the outbox in a transaction and commits.
async fn ship(State(shop): State<Shop>, Path(n): Path<i32>) -> StatusCode {
    let mut tx = shop.pool.begin().await.unwrap();
    shop.outbox
        .add_with(&mut tx, &Shipped { n }, Publish::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    StatusCode::CREATED
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_and_relay_calls_are_spans_in_the_request_trace() {
    let Some(pool) = backend("PostgreSQL", PgPool::connect(&postgres_url())).await else {
        return;
    };
    let Some(redis) = backend("Redis", RedisStore::connect(&redis_url(), "chassis-span-tests")).await else {
        return;
    };
    PostgresStore::from_pool(pool.clone()).migrate().await.unwrap();
    // A pool whose connections cannot see the chassis' tables: every statement fails with 42P01.
    let lost = PgPool::connect(&format!("{}?options=-csearch_path%3Dno_such_schema", postgres_url()))
        .await
        .unwrap();

    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let database = postgres_url();
    let options = options().configure(move |l| {
        l.set("telemetry.otlp.endpoint", endpoint)
            .set("service.name", "store-spans")
            .set("telemetry.sampling_ratio", 1.0)
            .set("postgres.url", database)
            .set("outbox.poll_interval", "200ms")
    });
    let service = spawn_with(options, move |ctx: Context<()>| async move {
        let config = IdempotencyConfig::default;
        let in_postgres = IdempotencyLayer::new(Arc::new(PostgresStore::from_pool(pool.clone())), config())?;
        let in_redis = IdempotencyLayer::new(Arc::new(redis), config())?;
        let lost = IdempotencyLayer::new(Arc::new(PostgresStore::from_pool(lost)), config())?;
        let applier = ctx
            .inbox()?
            .handler("applier", |_: Incoming<Shipped>, tx: Transaction| async move {
                drop(tx.lock().await?);
                Ok::<_, chassis::Error>(())
            });
        ctx.subscribe("applier", applier).await?;
        let shop = Shop {
            pool: ctx.postgres()?.clone(),
            outbox: ctx.outbox()?,
        };
        let created = || async { StatusCode::CREATED };
        Ok(Router::new()
            .route("/postgres", post(created).layer(in_postgres))
            .route("/redis", post(created).layer(in_redis))
            .route("/lost", post(created).layer(lost))
            .route("/ship/{n}", post(ship))
            .with_state(shop))
    })
    .await;

    let client = reqwest::Client::new();
    let base = format!("http://{}", service.http_addr());
    let key = uuid::Uuid::new_v4().to_string();
    for (path, status) in [("/postgres", 201), ("/redis", 201), ("/lost", 503)] {
        let response = client
            .post(format!("{base}{path}"))
            .header("idempotency-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "POST {path}");
    }
    assert_eq!(
        client.post(format!("{base}/ship/1")).send().await.unwrap().status(),
        201
    );

    let processed = receiver
        .wait_for(|s| s.kind == CLIENT && s.name == "INSERT chassis_processed_messages")
        .await;
    // Stopping flushes the rest of the batch.
    service.stop().await;
    let server = |path: &str| {
        let name = format!("POST {path}");
        receiver
            .spans()
            .into_iter()
            .find(|s| s.kind == SERVER && s.name == name)
            .unwrap_or_else(|| panic!("no server span {name}"))
    };
    let children = |parent: &ReceivedSpan| -> Vec<ReceivedSpan> {
        receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
            .collect()
    };

    // The idempotency record in PostgreSQL: a CLIENT span under the request's server span.
    let request = server("/postgres");
    let claimed = children(&request)
        .into_iter()
        .find(|s| s.name == "INSERT chassis_idempotency")
        .expect("the claim (made in a task of its own) is a child of the request's span");
    assert_eq!(claimed.kind, CLIENT);
    assert_eq!(claimed.attributes["db.system.name"], "postgresql");
    assert_eq!(claimed.attributes["db.operation.name"], "INSERT");
    assert_eq!(claimed.attributes["db.collection.name"], "chassis_idempotency");
    assert_eq!(claimed.attributes["db.namespace"], "test");
    assert_eq!(claimed.attributes["server.address"], "127.0.0.1");
    assert_eq!(claimed.attributes["server.port"], "5432");
    assert_eq!(claimed.attribute_types["server.port"], "int");
    assert_ne!(claimed.status_code, ERROR);
    assert!(
        children(&request)
            .iter()
            .any(|s| s.name == "UPDATE chassis_idempotency"),
        "the stored response is a span too: {:?}",
        children(&request)
    );

    // The same in Redis: its scripts, named after the command.
    let request = server("/redis");
    let scripts = children(&request);
    assert!(scripts.len() >= 2, "claim and complete: {scripts:?}");
    for script in &scripts {
        assert_eq!(script.kind, CLIENT);
        assert_eq!(script.name, "EVALSHA");
        assert_eq!(script.attributes["db.system.name"], "redis");
        assert_eq!(script.attributes["db.operation.name"], "EVALSHA");
        assert_eq!(script.attributes["db.namespace"], "0");
        assert_eq!(script.attributes["server.port"], "6379");
        assert_eq!(script.attribute_types["server.port"], "int");
    }

    // A failing statement: status ERROR with the database's own code.
    let request = server("/lost");
    let failed = children(&request)
        .into_iter()
        .find(|s| s.name == "INSERT chassis_idempotency")
        .expect("the failed claim is a span");
    assert_eq!(failed.status_code, ERROR);
    assert_eq!(failed.attributes["error.type"], "42P01");
    assert_eq!(failed.attributes["db.response.status_code"], "42P01");

    // The outbox: the row written under the `create` span, relayed under a PRODUCER span of the
    // same trace, consumed under a CONSUMER span whose inbox record is a CLIENT span.
    let request = server("/ship/{n}");
    let create = children(&request)
        .into_iter()
        .find(|s| s.name == "create spans.shipped")
        .expect("the outbox write is a child of the request's span");
    let written = children(&create)
        .into_iter()
        .find(|s| s.name == "INSERT chassis_outbox")
        .expect("the outbox row is a CLIENT span under `create`");
    assert_eq!(written.kind, CLIENT);
    assert_eq!(written.attributes["db.system.name"], "postgresql");
    let relayed = receiver
        .spans()
        .into_iter()
        .find(|s| s.kind == PRODUCER && s.trace_id == request.trace_id && s.parent_span_id == create.span_id)
        .expect("the relay's publish is in the request's trace, under `create`");
    assert!(relayed.name.starts_with("publish "), "{}", relayed.name);
    assert_eq!(relayed.attributes["messaging.operation.type"], "send");
    assert_eq!(relayed.attributes["messaging.system"], "memory");
    assert!(relayed.attributes.contains_key("messaging.message.id"));
    assert_ne!(relayed.status_code, ERROR);
    let process = receiver
        .spans()
        .into_iter()
        .find(|s| s.span_id == processed.parent_span_id)
        .expect("the inbox record has a parent");
    assert_eq!(process.kind, CONSUMER);
    assert_eq!(process.trace_id, request.trace_id);
    assert_eq!(processed.attributes["db.collection.name"], "chassis_processed_messages");
    assert!(
        children(&process).iter().any(|s| s.name == "COMMIT"),
        "the inbox's commit is a span: {:?}",
        children(&process)
    );
}
