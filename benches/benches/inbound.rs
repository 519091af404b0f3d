//! One request in-process through bare axum and through the chassis' inbound stack, side by
//! side. Telemetry is installed as a service would have it (OpenTelemetry spans sampled, no
//! exporter), so the trace layer's cost is measured, not skipped.

use axum::body::Body;
use chassis::config::ConfigLoader;
use chassis::runtime::InboundService;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use tower::{Service, ServiceExt};

fn request() -> Request<Body> {
    Request::get("/users/42").body(Body::empty()).unwrap()
}

fn inbound(c: &mut Criterion) {
    let config = ConfigLoader::new()
        .set("telemetry.log_level", "warn")
        .load::<()>()
        .expect("bench config");
    let _telemetry = chassis::telemetry::init(&config.chassis.service, &config.chassis.telemetry).unwrap();
    chassis::metrics::install(&config.chassis.metrics, &config.chassis.service).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("inbound");
    let bare = chassis_benches::routes();
    group.bench_function("bare_axum", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = bare.clone();
            async move { svc.oneshot(request()).await.unwrap() }
        })
    });
    let stack = InboundService::new(chassis_benches::routes(), &config.chassis);
    group.bench_function("chassis_stack", |b| {
        b.to_async(&runtime).iter(|| {
            let mut svc = stack.clone();
            async move { svc.call(request()).await.unwrap() }
        })
    });
    group.finish();
}

criterion_group!(benches, inbound);
criterion_main!(benches);
