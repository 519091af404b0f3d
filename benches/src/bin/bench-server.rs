//! Serves the benchmark routes for a load run: `bench-server bare 3000` serves them with plain
//! `axum::serve`; `bench-server chassis 3001` serves them through `chassis::run` with its
//! defaults (request id, trace with OpenTelemetry spans, metrics, load shedding, timeout, body
//! limit, catch panic); `bench-server stack 3002` serves the same inbound stack with plain
//! `axum::serve`, to tell the stack's cost from the runtime's; `bench-server otlp-sink 4318`
//! accepts OTLP exports, counts their spans and drops them, for runs with span export on. Logs go to stderr at WARN so the
//! load run measures the stack, not the terminal.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(3000);
    match mode.as_str() {
        "bare" => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
                axum::serve(listener, chassis_benches::routes()).await.expect("serve");
            });
            ExitCode::SUCCESS
        }
        // The inbound stack served like `bare` (plain `axum::serve`, no chassis runtime): tells
        // the stack's cost apart from the runtime's.
        "stack" => {
            let (config, ()) = chassis::config::ConfigLoader::new()
                .set("telemetry.log_level", "warn")
                .load::<chassis::runtime::ChassisConfig, ()>()
                .expect("config");
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(async move {
                let _telemetry = chassis::telemetry::init(&config.service, &config.telemetry).expect("telemetry");
                chassis::metrics::install(&config.metrics, &config.service).expect("metrics");
                let stack = chassis::runtime::Inbound::new(chassis_benches::routes(), &config);
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
                let make = tower::service_fn(move |_: axum::serve::IncomingStream<'_, tokio::net::TcpListener>| {
                    std::future::ready(Ok::<_, std::convert::Infallible>(stack.clone()))
                });
                axum::serve(listener, make).await.expect("serve");
            });
            ExitCode::SUCCESS
        }
        // An OTLP/HTTP endpoint that accepts and drops every export, for runs of the chassis
        // with span export on (`APP__TELEMETRY__OTLP__ENDPOINT=http://127.0.0.1:4318`). At
        // SIGTERM it prints how many spans it received, to compare with the requests served.
        "otlp-sink" => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(async move {
                use std::sync::atomic::{AtomicU64, Ordering};
                static SPANS: AtomicU64 = AtomicU64::new(0);
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
                let traces = |body: axum::body::Bytes| async move {
                    if let Some(spans) = chassis_benches::count_spans(&body) {
                        SPANS.fetch_add(spans, Ordering::Relaxed);
                    }
                };
                let sink = axum::Router::new()
                    .route("/v1/traces", axum::routing::post(traces))
                    .route("/v1/logs", axum::routing::post(|_: axum::body::Bytes| async {}));
                let mut terminate =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                axum::serve(listener, sink)
                    .with_graceful_shutdown(async move {
                        terminate.recv().await;
                    })
                    .await
                    .expect("serve");
                eprintln!("otlp-sink received {} spans", SPANS.load(Ordering::Relaxed));
            });
            ExitCode::SUCCESS
        }
        "chassis" => {
            let options = chassis::Options::new()
                .service_defaults("bench", "0.0.0")
                .configure(|loader| {
                    loader
                        .set("http.host", "127.0.0.1")
                        .set("http.port", port)
                        .set("admin.port", 0)
                        .set("telemetry.log_level", "warn")
                        .set("shutdown.readiness_delay", "0s")
                });
            chassis::run(options, |_: chassis::Context<()>| async {
                Ok(chassis_benches::routes())
            })
        }
        "idempotency-none"
        | "idempotency-memory"
        | "idempotency-redis"
        | "idempotency-postgres"
        | "idempotency-transactional" => {
            let store = mode.trim_start_matches("idempotency-").to_owned();
            let options = chassis::Options::new()
                .service_defaults("bench", "0.0.0")
                .configure(|loader| {
                    loader
                        .set("http.host", "127.0.0.1")
                        .set("http.port", port)
                        .set("admin.port", 0)
                        .set("telemetry.log_level", "warn")
                        .set("shutdown.readiness_delay", "0s")
                });
            chassis::run(options, move |_: chassis::Context<()>| async move {
                use std::sync::Arc;
                let store: Arc<dyn chassis::idempotency::IdempotencyStore> = match store.as_str() {
                    "none" => return Ok(chassis_benches::payments()),
                    "memory" => Arc::new(chassis::idempotency::MemoryStore::new(10_000_000)),
                    "redis" => {
                        Arc::new(chassis::idempotency::RedisStore::connect("redis://127.0.0.1:6379", "bench").await?)
                    }
                    "transactional" => {
                        // The claim, the stored response (and the handler's writes, had it any)
                        // commit in one transaction.
                        let store =
                            chassis::idempotency::PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test")
                                .await?;
                        store.migrate().await?;
                        let layer = chassis::idempotency::IdempotencyLayer::transactional(store, Default::default())?;
                        return Ok(chassis_benches::payments().layer(layer));
                    }
                    _ => {
                        let store =
                            chassis::idempotency::PostgresStore::connect("postgres://postgres@127.0.0.1:5432/test")
                                .await?;
                        store.migrate().await?;
                        Arc::new(store)
                    }
                };
                let layer = chassis::idempotency::IdempotencyLayer::new(store, Default::default())?;
                Ok(chassis_benches::payments().layer(layer))
            })
        }
        _ => {
            eprintln!(
                "usage: bench-server <bare|stack|chassis|otlp-sink|idempotency-none|idempotency-memory|idempotency-redis|idempotency-postgres|idempotency-transactional> [port]"
            );
            ExitCode::FAILURE
        }
    }
}
