//! `POST` through the idempotency layer with the in-memory store, against the same route
//! without it: a new key each time (claim + store the response) and a repeated key (replay).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use chassis::idempotency::{IdempotencyLayer, MemoryStore};
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tower::ServiceExt;

fn request(key: Option<String>) -> Request<Body> {
    let mut builder = Request::post("/payments");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(Body::from(r#"{"amount":50}"#)).unwrap()
}

fn idempotency(c: &mut Criterion) {
    let runtime = chassis_benches::runtime();
    let handler = || async { (http::StatusCode::CREATED, r#"{"id":1}"#) };
    let bare: Router = Router::new().route("/payments", post(handler));
    let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new(10_000_000)), Default::default()).unwrap();
    let guarded: Router = Router::new().route("/payments", post(handler)).layer(layer);

    let mut group = c.benchmark_group("idempotency");
    group.bench_function("no_layer", |b| {
        b.to_async(&runtime).iter(|| bare.clone().oneshot(request(None)))
    });
    let next = AtomicU64::new(0);
    group.bench_function("memory_new_key", |b| {
        b.to_async(&runtime).iter(|| {
            let key = format!("k{}", next.fetch_add(1, Ordering::Relaxed));
            guarded.clone().oneshot(request(Some(key)))
        })
    });
    runtime
        .block_on(guarded.clone().oneshot(request(Some("same".into()))))
        .unwrap();
    group.bench_function("memory_replay", |b| {
        b.to_async(&runtime)
            .iter(|| guarded.clone().oneshot(request(Some("same".into()))))
    });
    group.finish();
}

criterion_group!(benches, idempotency);
criterion_main!(benches);
