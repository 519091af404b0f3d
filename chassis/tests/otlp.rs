//! Spans reach a real OTLP/HTTP receiver with the parent from the incoming `traceparent`.
//! (Its own test binary: telemetry is installed once per process.)

use axum::Router;
use axum::routing::get;
use chassis::Context;
use chassis::messaging::{Bus, Event, Incoming, Message};
use chassis::testing::{OtlpReceiver, options, spawn_with};
use http::StatusCode;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const ERROR: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_are_exported_with_the_incoming_parent_and_the_route_as_name() {
    let receiver = OtlpReceiver::start().await;
    let endpoint = receiver.endpoint();
    let options = options().configure(move |l| {
        l.set("telemetry.otlp.endpoint", endpoint)
            .set("service.name", "otlp-test")
            .set("telemetry.sampling_ratio", 1.0)
    });
    let service = spawn_with(options, |ctx: Context<()>| async move {
        // Every attempt fails: the message is dead-lettered.
        ctx.subscribe("doomed", |_: Incoming<Doomed>| async {
            Err::<(), _>("the card was declined")
        })
        .await?;
        Ok(Router::new()
            .route(
                "/users/{id}",
                get(|| async {
                    tracing::info!(user = 42, "looking the user up");
                    "user"
                }),
            )
            .route("/fail", get(|| async { StatusCode::BAD_GATEWAY }))
            .route(
                "/slow",
                get(|| async { tokio::time::sleep(std::time::Duration::from_secs(60)).await }),
            )
            .route(
                "/spawn",
                get(|| async {
                    use tracing::Instrument as _;
                    // Work handed to another task, instrumented with the request's span.
                    let work = async { tracing::info_span!("background work").in_scope(|| ()) };
                    tokio::spawn(work.in_current_span()).await.unwrap();
                    "spawned"
                }),
            )
            .route(
                "/doom",
                get(|axum::extract::State(bus): axum::extract::State<Bus>| async move {
                    bus.publish(&Doomed).await.unwrap();
                    "published"
                }),
            )
            .with_state(ctx.bus().clone()))
    })
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let client = reqwest::Client::new();
    let response = client
        .get(format!("http://{}/users/42", service.http_addr()))
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    client
        .get(format!("http://{}/fail", service.http_addr()))
        .send()
        .await
        .unwrap();
    let spawned_trace = "5cf92f3577b34da6a3ce929d0e0e4737";
    client
        .get(format!("http://{}/spawn", service.http_addr()))
        .header("traceparent", format!("00-{spawned_trace}-{parent_id}-01"))
        .send()
        .await
        .unwrap();
    let doomed_trace = "6df92f3577b34da6a3ce929d0e0e4738";
    client
        .get(format!("http://{}/doom", service.http_addr()))
        .header("traceparent", format!("00-{doomed_trace}-{parent_id}-01"))
        .send()
        .await
        .unwrap();
    // A client that gives up: the request is still traced and counted.
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(
        impatient
            .get(format!("http://{}/slow", service.http_addr()))
            .send()
            .await
            .is_err()
    );
    let metrics = format!("http://{}/metrics", service.admin_addr());
    chassis::testing::eventually("the abandoned request to be counted", async || {
        let text = client.get(&metrics).send().await.ok()?.text().await.ok()?;
        text.lines()
            .any(|l| {
                l.starts_with("http_server_request_duration_seconds_count{")
                    && l.contains("http_route=\"/slow\"")
                    && l.contains("error_type=\"client_closed\"")
            })
            .then_some(())
    })
    .await;
    // A call through the chassis client: a CLIENT span.
    let mut config = chassis::client::ClientConfig::new(format!("http://{}", service.http_addr()));
    config.retry.max_retries = 0;
    let outbound =
        chassis::client::Client::new("self", config, &chassis::resilience::CircuitBreakerRegistry::new()).unwrap();
    assert_eq!(outbound.get("/users/7").await.unwrap().status(), 200);
    // A retried call: one CLIENT span per attempt.
    let mut config = chassis::client::ClientConfig::new(format!("http://{}", service.http_addr()));
    config.retry.max_retries = 1;
    config.retry.base_delay = std::time::Duration::from_millis(1);
    let retrying =
        chassis::client::Client::new("retrying", config, &chassis::resilience::CircuitBreakerRegistry::new()).unwrap();
    assert_eq!(retrying.get("/fail").await.unwrap().status(), 502);
    let dead_lettered = format!("http://{}/dead-letters/doomed", service.admin_addr());
    chassis::testing::eventually("the message to be dead-lettered", async || {
        let letters: Vec<serde_json::Value> = client.get(&dead_lettered).send().await.ok()?.json().await.ok()?;
        (!letters.is_empty()).then_some(())
    })
    .await;
    let scraped = client.get(&metrics).send().await.unwrap().text().await.unwrap();
    // Stopping flushes the batch and exports a last collection of the metrics.
    service.stop().await;

    // The handler's log line, exported as a log record in the request's trace.
    let logged = receiver.wait_for_log(|l| l.body == "looking the user up").await;
    assert_eq!(logged.trace_id, trace_id);
    assert_eq!(logged.span_id.len(), 16);
    assert_ne!(logged.span_id, parent_id);
    assert_eq!(logged.severity_text, "INFO");
    assert_eq!(logged.severity_number, 9);
    assert_eq!(logged.attributes["user"], "42");
    assert_eq!(logged.attribute_types["user"], "int");
    assert_eq!(logged.resource["service.name"], "otlp-test");
    assert!(logged.resource.contains_key("service.instance.id"));
    let server_span = receiver.wait_for(|s| s.kind == SERVER && s.trace_id == trace_id).await;
    assert_eq!(logged.span_id, server_span.span_id, "logged inside the server span");

    let resent = receiver
        .wait_for(|s| s.kind == CLIENT && s.attributes.contains_key("http.request.resend_count"))
        .await;
    assert_eq!(resent.attributes["http.request.resend_count"], "1");
    assert_eq!(resent.attribute_types["http.request.resend_count"], "int");
    let attempts = receiver
        .spans()
        .into_iter()
        .filter(|s| s.kind == CLIENT && s.attributes.get("client").is_some_and(|c| c == "retrying"))
        .count();
    assert_eq!(attempts, 2, "one span per attempt");
    let abandoned = receiver.wait_for(|s| s.name == "GET /slow").await;
    assert_eq!(abandoned.attributes["error.type"], "client_closed");
    assert_eq!(abandoned.attributes["http.route"], "/slow");
    let client_span = receiver.wait_for(|s| s.kind == CLIENT).await;
    for (attribute, kind) in [
        ("http.response.status_code", "int"),
        ("server.port", "int"),
        ("http.request.method", "string"),
    ] {
        assert_eq!(
            client_span.attribute_types.get(attribute).copied(),
            Some(kind),
            "{attribute}: {client_span:?}"
        );
    }
    let span = receiver.wait_for(|s| s.name == "GET /users/{id}").await;
    assert_eq!(span.trace_id, trace_id, "the span continues the caller's trace");
    assert_eq!(span.parent_span_id, parent_id, "the caller's span is the parent");
    assert_eq!(span.kind, SERVER);
    assert_eq!(span.service_name, "otlp-test");
    assert!(!span.resource["service.instance.id"].is_empty(), "{:?}", span.resource);
    assert_eq!(
        span.attribute_types["http.response.status_code"], "int",
        "an integer, as semconv types it"
    );
    assert_eq!(span.attributes["http.route"], "/users/{id}");
    assert_eq!(span.attributes["http.request.method"], "GET");
    assert_eq!(span.attributes["http.response.status_code"], "200");
    assert_eq!(span.attributes["url.path"], "/users/42");
    assert!(span.attributes.contains_key("request_id"));

    let server = receiver.wait_for(|s| s.name == "GET /spawn").await;
    let background = receiver.wait_for(|s| s.name == "background work").await;
    assert_eq!(
        background.trace_id, spawned_trace,
        "spawned work stays in the request's trace"
    );
    assert_eq!(
        background.parent_span_id, server.span_id,
        "as a child of the server span"
    );

    let failed = receiver.wait_for(|s| s.name == "GET /fail").await;
    assert_eq!(failed.parent_span_id, "", "no traceparent: a new root");
    assert_ne!(failed.trace_id, trace_id);
    assert_eq!(failed.status_code, ERROR, "5xx marks the server span as an error");

    let process = receiver.wait_for(|s| s.name == "process test.doomed").await;
    assert_eq!(
        process.trace_id, doomed_trace,
        "the consumer continues the publisher's trace"
    );
    assert_eq!(
        process.status_code, ERROR,
        "a dead-lettered message marks its span as an error"
    );
    assert_eq!(process.attributes["error.type"], "dead_lettered");
    assert_eq!(process.attributes["messaging.operation.name"], "process");
    assert_eq!(process.attributes["messaging.destination.name"], "test.doomed");
    assert_eq!(process.attribute_types["messaging.message.delivery_count"], "int");
    let publish = receiver.wait_for(|s| s.name == "publish test.doomed").await;
    assert_eq!(publish.attributes["messaging.operation.type"], "send");

    // Metrics: the same series as /metrics, under the conventions' names and types.
    let duration = receiver
        .wait_for_metric(|m| {
            m.name == "http.server.request.duration"
                && m.attributes.get("http.route").is_some_and(|r| r == "/users/{id}")
        })
        .await;
    assert_eq!(duration.kind, "histogram");
    assert_eq!(duration.unit, "s");
    assert_eq!(duration.bounds, chassis::metrics::DEFAULT_DURATION_BUCKETS);
    assert_eq!(duration.attributes["http.request.method"], "GET");
    assert_eq!(duration.attributes["http.response.status_code"], "200");
    assert_eq!(duration.attribute_types["http.response.status_code"], "int");
    assert_eq!(duration.resource["service.name"], "otlp-test");
    assert_eq!(
        duration.resource["service.instance.id"], logged.resource["service.instance.id"],
        "one resource for every signal"
    );
    let scraped_count = scraped
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds_count{") && l.contains("http_route=\"/users/{id}\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .expect("the route's count on /metrics");
    assert_eq!(
        duration.count, scraped_count,
        "OTLP and /metrics count the same requests"
    );
    let abandoned = receiver
        .wait_for_metric(|m| {
            m.name == "http.server.request.duration" && m.attributes.get("http.route").is_some_and(|r| r == "/slow")
        })
        .await;
    assert_eq!(abandoned.attributes["error.type"], "client_closed");
    assert!(!abandoned.attributes.contains_key("http.response.status_code"));
    let active = receiver
        .wait_for_metric(|m| m.name == "http.server.active_requests")
        .await;
    assert_eq!(
        (active.kind, active.monotonic, active.unit.as_str()),
        ("sum", false, "{request}")
    );
    let consumed = receiver
        .wait_for_metric(|m| m.name == "chassis_messages_dead_lettered")
        .await;
    assert_eq!(
        (consumed.kind, consumed.monotonic),
        ("sum", true),
        "a counter: {consumed:?}"
    );
    assert_eq!(consumed.value, 1.0);
    let cpu = receiver.wait_for_metric(|m| m.name == "process.cpu.time").await;
    assert_eq!((cpu.kind, cpu.monotonic, cpu.unit.as_str()), ("sum", true, "s"));
    assert!(cpu.value > 0.0, "{cpu:?}");
    let workers = receiver.wait_for_metric(|m| m.name == "tokio_workers").await;
    assert_eq!((workers.kind, workers.value), ("gauge", 2.0));
    let build = receiver.wait_for_metric(|m| m.name == "chassis_build_info").await;
    assert_eq!(build.attributes["service"], "otlp-test");
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Doomed;

impl Message for Doomed {
    const TYPE: &'static str = "test.doomed";
}

impl Event for Doomed {}
