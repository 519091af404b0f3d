//! The runtime over real sockets: routes, admin endpoints, the inbound stack's answers and
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use chassis::runtime::{StartError, Stopped};
use chassis::testing::{options, spawn, spawn_with};
use chassis::{Context, RunningService};
use tokio::sync::{Notify, oneshot};

fn client() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

fn url(service: &RunningService, path: &str) -> String {
    format!("http://{}{path}", service.http_addr())
}

fn admin_url(service: &RunningService, path: &str) -> String {
    format!("http://{}{path}", service.admin_addr())
}

async fn json(response: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

async fn panics() -> &'static str {
    panic!("boom")
}

fn routes() -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user" }))
        .route("/panic", get(panics))
        .route(
            "/slow",
            get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }),
        )
        .route("/echo", post(|body: String| async move { body }))
}

#[tokio::test]
async fn inside_a_handler_the_current_span_is_the_request_span_unless_another_is_entered() {
    let service = spawn(|_: Context<()>| async {
        Ok(Router::new().route(
            "/spans",
            get(|| async {
                let name = |span: tracing::Span| span.metadata().map(|m| m.name()).unwrap_or("none");
                let outer = name(tracing::Span::current());
                let inner = tracing::info_span!("inner").in_scope(|| name(tracing::Span::current()));
                let again = name(tracing::Span::current());
                format!("{outer} {inner} {again}")
            }),
        ))
    })
    .await;
    let response = client().get(url(&service, "/spans")).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "HTTP request inner HTTP request");
    service.stop().await;
}

#[tokio::test]
async fn serves_routes_with_a_request_id_and_answers_unmatched_paths() {
    let service = spawn(|_: Context<()>| async { Ok(routes()) }).await;
    let response = client().get(url(&service, "/users/7")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a generated UUID: {id}");

    let response = client()
        .get(url(&service, "/users/7"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["x-request-id"],
        "abc-123",
        "a valid incoming id is kept"
    );

    let response = client().get(url(&service, "/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    service.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_gets_a_500_problem_and_the_service_keeps_serving() {
    let service = spawn(|_: Context<()>| async { Ok(routes()) }).await;
    let response = client().get(url(&service, "/panic")).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let body = json(response).await;
    assert_eq!(body["status"], 500);
    assert_eq!(body["type"], "urn:chassis:problem:internal");
    assert!(
        !body.to_string().contains("boom"),
        "panic messages are not leaked: {body}"
    );

    let response = client().get(url(&service, "/users/1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    service.stop().await;
}

#[tokio::test]
async fn a_request_over_the_timeout_gets_a_503_timeout_problem() {
    let options = options().configure(|l| l.set("http.request_timeout", "50ms"));
    let service = spawn_with(options, |_: Context<()>| async { Ok(routes()) }).await;
    let response = client().get(url(&service, "/slow")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body = json(response).await;
    assert_eq!(body["type"], "urn:chassis:problem:timeout");
    service.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_a_413_problem_without_reaching_the_handler() {
    let options = options().configure(|l| l.set("http.body_limit", "1KiB"));
    let service = spawn_with(options, |_: Context<()>| async { Ok(routes()) }).await;
    let response = client()
        .post(url(&service, "/echo"))
        .body("x".repeat(2048))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    let response = client()
        .post(url(&service, "/echo"))
        .body("small")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "small");
    service.stop().await;
}

#[tokio::test]
async fn requests_beyond_max_concurrent_requests_are_shed_with_retry_after() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (e, r) = (entered.clone(), release.clone());
    let options = options().configure(|l| l.set("http.max_concurrent_requests", 1));
    let service = spawn_with(options, move |_: Context<()>| async move {
        Ok(Router::new().route(
            "/hold",
            get(move || async move {
                e.notify_one();
                r.notified().await;
                "released"
            }),
        ))
    })
    .await;
    let held = tokio::spawn(client().get(url(&service, "/hold")).send());
    entered.notified().await;

    let shed = client().get(url(&service, "/hold")).send().await.unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(json(shed).await["type"], "urn:chassis:problem:overloaded");

    release.notify_one();
    assert_eq!(held.await.unwrap().unwrap().text().await.unwrap(), "released");
    service.stop().await;
}

#[tokio::test]
async fn health_probes_live_on_the_admin_listener() {
    let service = spawn(|_: Context<()>| async { Ok(routes()) }).await;
    assert_ne!(service.http_addr(), service.admin_addr());
    for probe in ["live", "ready", "startup"] {
        let response = client()
            .get(admin_url(&service, &format!("/health/{probe}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{probe}");
        assert_eq!(response.headers()["content-type"], "application/health+json");
        assert_eq!(json(response).await["status"], "pass");
    }
    let on_main = client().get(url(&service, "/health/ready")).send().await.unwrap();
    assert_eq!(on_main.status(), 404, "not exposed on the public port");
    service.stop().await;
}

#[tokio::test]
async fn metrics_use_route_templates_and_leave_admin_requests_out() {
    let options = options().configure(|l| l.set("admin.shared", true).set("service.name", "metrics-test"));
    // Metrics are process-wide: this test's routes are its own.
    let service = spawn_with(options, |_: Context<()>| async {
        Ok(Router::new().route("/orders/{id}", get(|| async { "order" })))
    })
    .await;
    assert_eq!(service.http_addr(), service.admin_addr());
    for id in 0..3 {
        client()
            .get(url(&service, &format!("/orders/{id}")))
            .send()
            .await
            .unwrap();
    }
    client().get(url(&service, "/scanner/probe.php")).send().await.unwrap();
    client().get(url(&service, "/health/ready")).send().await.unwrap();

    let response = client().get(url(&service, "/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    let count = |route: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("http_server_request_duration_seconds_count")
                    && l.contains(&format!("http_route=\"{route}\""))
                    && l.contains("http_request_method=\"GET\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    assert_eq!(count("/orders/{id}"), Some(3), "{text}");
    assert!(count("unmatched").is_some_and(|n| n >= 1), "{text}");
    assert!(!text.contains("/orders/0"), "raw paths never become labels");
    assert!(!text.contains("probe.php"));
    assert!(!text.contains("/health/"), "admin requests are not counted");
    assert!(
        text.contains("http_server_request_duration_seconds_bucket{"),
        "a histogram, not a summary"
    );
    assert!(text.contains("chassis_build_info{"), "{text}");
    assert!(text.contains("service=\"metrics-test\""));

    // The exposition is valid for Prometheus itself, lint included.
    chassis::testing::promtool_check(&text).await.unwrap();
    service.stop().await;
}

/// What Prometheus 2.42 sends by default: OpenMetrics first.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A Prometheus server scraping one target every second, with exemplar storage on; killed on drop.
struct Prometheus {
    url: String,
    _process: tokio::process::Child,
    _data: tempfile::TempDir,
}

impl Prometheus {
    /// `None` when `prometheus` (Debian package `prometheus`) is not installed and backends are
    /// not required; with `CI=true` a missing server fails the test.
    async fn scrape(target: std::net::SocketAddr) -> Option<Self> {
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: service\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = chassis::testing::free_port();
        let spawned = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        let process = match spawned {
            Ok(process) => process,
            Err(error) if chassis::testing::backends_required() => {
                panic!("prometheus is required when CI=true ({error}); install the Debian package prometheus")
            }
            Err(error) => {
                eprintln!("skipping: prometheus cannot be run ({error})");
                return None;
            }
        };
        Some(Self {
            url: format!("http://127.0.0.1:{port}"),
            _process: process,
            _data: data,
        })
    }

    async fn api(&self, path: &str) -> Option<serde_json::Value> {
        let response = client().get(format!("{}{path}", self.url)).send().await.ok()?;
        response.json().await.ok()
    }
}

#[tokio::test]
async fn prometheus_scrapes_openmetrics_and_keeps_the_exemplar_linking_a_bucket_to_its_trace() {
    let options = options().configure(|l| l.set("service.name", "exemplar-test"));
    let service = spawn_with(options, |_: Context<()>| async {
        Ok(Router::new().route("/exemplary/{id}", get(|| async { "found" })))
    })
    .await;
    let response = client()
        .get(admin_url(&service, "/metrics"))
        .header("accept", PROMETHEUS_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        chassis::metrics::OPENMETRICS_TEXT,
        "OpenMetrics, as asked"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total "),
        "a counter's family is named without _total, its sample with it: {text}"
    );

    let Some(prometheus) = Prometheus::scrape(service.admin_addr()).await else {
        return;
    };
    // Prometheus takes the exposition: the target is up, with no scrape error.
    chassis::testing::eventually("Prometheus to scrape the service", async || {
        let targets = prometheus.api("/api/v1/targets").await?;
        let target = &targets["data"]["activeTargets"][0];
        (target["health"] == "up").then_some(())
    })
    .await;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let response = client()
        .get(url(&service, "/exemplary/7"))
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let exemplar = chassis::testing::eventually("Prometheus to store the request's exemplar", async || {
        let found = prometheus
            .api("/api/v1/query_exemplars?query=http_server_request_duration_seconds_bucket&start=0&end=4102444800")
            .await?;
        found["data"]
            .as_array()?
            .iter()
            .filter(|series| series["seriesLabels"]["http_route"] == "/exemplary/{id}")
            .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
            .find(|exemplar| exemplar["labels"]["trace_id"] == trace_id)
    })
    .await;
    assert_eq!(
        exemplar["labels"]["span_id"].as_str().map(str::len),
        Some(16),
        "{exemplar}"
    );
    let targets = prometheus.api("/api/v1/targets").await.unwrap();
    assert_eq!(targets["data"]["activeTargets"][0]["lastError"], "", "{targets}");
    service.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_fails_readiness_and_refuses_new_connections() {
    let entered = Arc::new(Notify::new());
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
    let e = entered.clone();
    let service = spawn(move |_: Context<()>| async move {
        Ok(Router::new().route(
            "/work",
            get(move || async move {
                e.notify_one();
                let rx = release_rx.lock().await.take().unwrap();
                let _ = rx.await;
                "finished"
            }),
        ))
    })
    .await;
    let http_addr = service.http_addr();
    let admin = admin_url(&service, "/health/ready");
    let in_flight = tokio::spawn(client().get(url(&service, "/work")).send());
    entered.notified().await;

    let health = service.health().clone();
    let stopping = tokio::spawn(service.stop());
    // Readiness fails as soon as shutdown begins, while the request is still running.
    chassis::testing::eventually("readiness to fail", async || {
        (client().get(&admin).send().await.unwrap().status() == 503).then_some(())
    })
    .await;
    assert_eq!(health.lifecycle(), chassis::health::Lifecycle::Draining);
    // The listener is closed: new connections are refused.
    chassis::testing::eventually("the main listener to close", async || {
        tokio::net::TcpStream::connect(http_addr).await.is_err().then_some(())
    })
    .await;
    assert!(!stopping.is_finished(), "shutdown waits for the in-flight request");

    release_tx.send(()).unwrap();
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "finished");
    assert_eq!(stopping.await.unwrap(), Stopped::Drained);
}

#[tokio::test]
async fn shutdown_gives_up_after_the_grace_period() {
    let entered = Arc::new(Notify::new());
    let e = entered.clone();
    let options = options().configure(|l| l.set("shutdown.grace_period", "100ms"));
    let service = spawn_with(options, move |ctx: Context<()>| async move {
        // A background task that ignores the shutdown token.
        ctx.spawn(std::future::pending::<()>());
        Ok(Router::new().route(
            "/",
            get(move || async move {
                e.notify_one();
                std::future::pending::<()>().await
            }),
        ))
    })
    .await;
    let _stuck = tokio::spawn(client().get(url(&service, "/")).send());
    entered.notified().await;
    assert_eq!(service.stop().await, Stopped::GracePeriodExceeded);
}

#[tokio::test]
async fn background_tasks_see_the_shutdown_token_and_are_awaited() {
    let (done_tx, done_rx) = oneshot::channel();
    let service = spawn(move |ctx: Context<()>| async move {
        let token = ctx.shutdown_token();
        ctx.spawn(async move {
            token.cancelled().await;
            // Finishing work after the signal is what the grace period is for.
            tokio::task::yield_now().await;
            done_tx.send(()).unwrap();
        });
        Ok(Router::new())
    })
    .await;
    assert_eq!(service.stop().await, Stopped::Drained);
    done_rx
        .await
        .expect("the task ran to completion before stop() returned");
}

#[tokio::test]
async fn start_up_failures_are_typed_and_say_what_to_fix() {
    let error = chassis::start(options(), |_: Context<()>| async {
        Err(chassis::Error::msg("no database"))
    })
    .await
    .unwrap_err();
    assert!(matches!(error, StartError::Init(_)));
    assert!(error.to_string().contains("no database"), "{error}");

    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = chassis::start(
        options().configure(|l| l.set("http.port", port)),
        |_: Context<()>| async { Ok(Router::new()) },
    )
    .await
    .unwrap_err();
    assert!(matches!(error, StartError::Bind { .. }), "{error}");
    assert!(error.to_string().contains("http.port"), "{error}");

    let error = chassis::start(
        options().configure(|l| l.set("http.request_timeout", "soon")),
        |_: Context<()>| async { Ok(Router::new()) },
    )
    .await
    .unwrap_err();
    assert!(matches!(error, StartError::Config(_)), "{error}");
    assert!(error.to_string().contains("http.request_timeout"), "{error}");
}

#[tokio::test]
async fn a_configured_rate_limit_answers_429_with_ratelimit_headers() {
    let options = options().configure(|l| {
        l.set("http.rate_limit.requests", 1)
            .set("http.rate_limit.per", "60s")
            .set("http.rate_limit.key", "client_ip")
    });
    let service = spawn_with(options, |_: Context<()>| async { Ok(routes()) }).await;
    let first = client().get(url(&service, "/users/1")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-policy"], "\"http_server\";q=1;w=60");
    let second = client().get(url(&service, "/users/1")).send().await.unwrap();
    assert_eq!(second.status(), 429);
    assert!(second.headers().contains_key("retry-after"));
    assert_eq!(json(second).await["type"], "urn:chassis:problem:rate-limited");
    service.stop().await;
}

#[tokio::test]
async fn readiness_shows_only_the_dependencies_the_service_uses() {
    let checks = async |service: &RunningService| {
        let report = json(client().get(admin_url(service, "/health/ready")).send().await.unwrap()).await;
        report["checks"]
            .as_object()
            .map(|c| c.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let plain = spawn(|_: Context<()>| async { Ok(routes()) }).await;
    let names = checks(&plain).await;
    assert!(
        !names.iter().any(|n| n.starts_with("messaging:")),
        "no messaging in {names:?}"
    );
    plain.stop().await;

    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Pinged;
    impl chassis::messaging::Message for Pinged {
        const TYPE: &'static str = "runtime-test.pinged";
    }
    impl chassis::messaging::Event for Pinged {}
    let subscribing = spawn(|ctx: Context<()>| async move {
        ctx.subscribe("runtime-test", |_: chassis::messaging::Incoming<Pinged>| async {
            Ok::<_, std::convert::Infallible>(())
        })
        .await?;
        Ok(routes())
    })
    .await;
    let names = checks(&subscribing).await;
    assert!(names.iter().any(|n| n == "messaging:memory"), "{names:?}");
    assert!(names.iter().any(|n| n == "messaging:consumers"), "{names:?}");
    subscribing.stop().await;
}

#[tokio::test]
async fn the_log_filter_changes_while_the_service_runs() {
    let service = spawn(|_: Context<()>| async { Ok(routes()) }).await;
    let url = admin_url(&service, "/log-filter");
    let before = json(client().get(&url).send().await.unwrap()).await;
    assert!(before["filter"].is_string(), "{before}");

    let changed = client()
        .put(&url)
        .json(&serde_json::json!({ "filter": "warn,runtime=debug" }))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), 200);
    assert_eq!(
        json(client().get(&url).send().await.unwrap()).await["filter"],
        "warn,runtime=debug"
    );
    // DEBUG is below every other filter of the subscriber: only the new log filter enables it.
    assert!(
        tracing::enabled!(target: "runtime", tracing::Level::DEBUG),
        "the new filter is in force"
    );

    let refused = client()
        .put(&url)
        .json(&serde_json::json!({ "filter": "info,[not a directive" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(
        json(client().get(&url).send().await.unwrap()).await["filter"],
        "warn,runtime=debug"
    );
    let restored = client().put(&url).json(&before).send().await.unwrap();
    assert_eq!(restored.status(), 200);
    service.stop().await;
}
