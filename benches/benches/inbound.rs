//! One request in-process through bare axum and through the chassis' inbound stack, side by
//! side. Telemetry is installed as a service would have it (OpenTelemetry spans sampled, no
//! exporter), so the trace layer's cost is measured, not skipped.

use chassis_benches::get_user as request;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Service, ServiceExt};

fn inbound(c: &mut Criterion) {
    let (_telemetry, bare, stack) = chassis_benches::inbound_pair();
    let runtime = chassis_benches::runtime();

    let mut group = c.benchmark_group("inbound");
    group.bench_function("bare_axum", |b| {
        b.to_async(&runtime).iter(|| {
            let svc = bare.clone();
            async move { svc.oneshot(request()).await.unwrap() }
        })
    });
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
