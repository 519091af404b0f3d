//! One trace from the gateway through every service an order or a checkout touches, checked
//! at an OTLP receiver. (Its own test binary: telemetry is installed once per process.)

use std::collections::BTreeSet;

use chassis::testing::{OtlpReceiver, ReceivedSpan};
use serde_json::{Value, json};
use shop::{Backend, Setup};

const SERVER: i32 = 2;
const CONSUMER: i32 = 5;

fn in_trace(spans: &[ReceivedSpan], trace_id: &str) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect()
}

/// The groups whose consumers processed `message_type` within the trace.
fn consumers(spans: &[ReceivedSpan], message_type: &str) -> BTreeSet<String> {
    spans
        .iter()
        .filter(|s| s.kind == CONSUMER && s.name == format!("process {message_type}"))
        .map(|s| s.attributes["messaging.consumer.group.name"].clone())
        .collect()
}

fn servers(spans: &[ReceivedSpan], name: &str) -> usize {
    spans.iter().filter(|s| s.kind == SERVER && s.name == name).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_from_the_gateway_reaches_every_service_the_order_touched() {
    let receiver = OtlpReceiver::start().await;
    let setup = Setup {
        base_port: 0,
        backend: Backend::Memory,
        overrides: vec![("telemetry.otlp.endpoint".into(), receiver.endpoint())],
        ..Setup::default()
    };
    let system = setup.start().await.unwrap();
    let http = reqwest::Client::new();
    let gateway = format!("http://{}", system.gateway.http_addr());
    let traced = |path: &str, trace_id: &str, key: &str, body: Value| {
        http.post(format!("{gateway}{path}"))
            .header("x-api-key", "demo-key")
            .header("idempotency-key", key)
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .json(&body)
            .send()
    };

    let order_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let order = json!({ "item": "book", "quantity": 1, "amount_cents": 1299 });
    let placed: Value = traced("/orders", order_trace, "trace-order", order)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let checkout_trace = "5cf92f3577b34da6a3ce929d0e0e4737";
    let checkout = json!({ "item": "book", "quantity": 1, "amount_cents": 2500 });
    let started = traced("/checkouts", checkout_trace, "trace-checkout", checkout)
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let started: Value = started.json().await.unwrap();

    // Both flows finish; stopping flushes the exporter. A span that ends after the flush comes
    // with the next batch, so the spans are read once every one the test expects is in.
    chassis::testing::eventually("both flows to finish", async || {
        let order: Value = http
            .get(format!("{gateway}/orders/{}", placed["id"]))
            .header("x-api-key", "demo-key")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let checkout: Value = http
            .get(format!("{gateway}/checkouts/{}", started["id"].as_str().unwrap()))
            .header("x-api-key", "demo-key")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (order["status"] == "confirmed" && checkout["status"] == "completed").then_some(())
    })
    .await;
    system.stop().await;
    let all = chassis::testing::eventually("every expected span", async || {
        let all = receiver.spans();
        let order_spans = in_trace(&all, order_trace);
        let checkout_spans = in_trace(&all, checkout_trace);
        let complete = consumers(&order_spans, "shop.order.placed").len() == 3
            && consumers(&order_spans, "shop.stock.reserved").contains("orders")
            && consumers(&order_spans, "shop.payment.captured").contains("orders")
            && !consumers(&checkout_spans, "shop.notification.send").is_empty()
            && checkout_spans.iter().any(|s| s.name == "saga checkout");
        complete.then_some(all)
    })
    .await;

    let order_spans = in_trace(&all, order_trace);
    assert_eq!(
        servers(&order_spans, "POST /orders"),
        2,
        "the gateway's and the orders service's"
    );
    let fan_out = consumers(&order_spans, "shop.order.placed");
    assert_eq!(
        fan_out,
        BTreeSet::from(["inventory".into(), "notifications".into(), "payments".into()]),
        "every group of the fan-out"
    );
    assert!(consumers(&order_spans, "shop.stock.reserved").contains("orders"));
    assert!(consumers(&order_spans, "shop.payment.captured").contains("orders"));

    let checkout_spans = in_trace(&all, checkout_trace);
    assert_eq!(
        servers(&checkout_spans, "POST /checkouts"),
        2,
        "the gateway's and the orchestrator's"
    );
    assert_eq!(servers(&checkout_spans, "POST /reservations"), 1, "inventory");
    assert_eq!(servers(&checkout_spans, "POST /payments"), 1, "payments");
    // A command has one consumer group, named after the command.
    assert_eq!(
        consumers(&checkout_spans, "shop.notification.send"),
        BTreeSet::from(["shop.notification.send".into()]),
        "notifications handled the command"
    );
    assert!(
        checkout_spans.iter().any(|s| s.name == "saga checkout"),
        "the saga's own span: {checkout_spans:#?}"
    );
}
