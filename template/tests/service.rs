//! Starts the service on free ports and checks a route, readiness and metrics.
{%- if downstream_client %}

const DOWNSTREAM: &str = "http://127.0.0.1:9";
{%- endif %}

#[tokio::test]
async fn serves_routes_health_and_metrics() {
    // The name and version the binary reports, as `#[chassis::main]` sets them.
    let options = chassis::testing::options()
        .service_defaults(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"));
{%- if downstream_client %}
    // Nothing listens there: the sample client is configured, not called.
    let options = options.configure(|l| l.set("clients.downstream.base_url", DOWNSTREAM));
{%- endif %}
    let service = chassis::testing::spawn_with(options, {{crate_name}}::init).await;
    let http = reqwest::Client::new();

    let hello = http
        .get(format!("http://{}/hello/world", service.http_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200);
    let body = hello.text().await.unwrap();
    assert_eq!(body, r#"{"message":"Hello, world!"}"#);

    let order = |key: &'static str| {
        http.post(format!("http://{}/orders", service.http_addr()))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(r#"{"item":"book"}"#)
            .send()
    };
    let first = order("order-1").await.unwrap();
    assert_eq!(first.status(), 201);
    let again = order("order-1").await.unwrap();
    // A retry is answered from the store, not executed again.
    assert_eq!(again.headers()["idempotent-replayed"], "true");

    let ready = http
        .get(format!("http://{}/health/ready", service.admin_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let metrics = http
        .get(format!("http://{}/metrics", service.admin_addr()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_server_request_duration_seconds_bucket{"));

    service.stop().await;
}
