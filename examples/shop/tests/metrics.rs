//! Every service of the shop exposes metrics Prometheus accepts: `promtool check metrics` finds
//! no problem, lint included, once each has handled requests and messages.

use serde_json::json;
use shop::{Backend, Setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_passes_promtool() {
    let system = Setup {
        base_port: 0,
        backend: Backend::Memory,
        ..Setup::default()
    }
    .start()
    .await
    .expect("the shop starts");
    let http = reqwest::Client::new();
    let gateway = format!("http://{}", system.gateway.http_addr());
    let order = http
        .post(format!("{gateway}/orders"))
        .header("x-api-key", "demo-key")
        .header("idempotency-key", "metrics-1")
        .json(&json!({ "item": "book", "quantity": 1, "amount_cents": 100 }))
        .send()
        .await
        .unwrap();
    assert_eq!(order.status(), 201);
    let id = order.json::<serde_json::Value>().await.unwrap()["id"].clone();
    chassis::testing::eventually("the order to be confirmed", async || {
        let order: serde_json::Value = http
            .get(format!("{gateway}/orders/{id}"))
            .header("x-api-key", "demo-key")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (order["status"] == "confirmed").then_some(())
    })
    .await;
    for (name, service) in [
        ("gateway", &system.gateway),
        ("orders", &system.orders),
        ("inventory", &system.inventory),
        ("payments", &system.payments),
        ("notifications", &system.notifications),
        ("orchestrator", &system.orchestrator),
    ] {
        let text = http
            .get(format!("http://{}/metrics", service.admin_addr()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            text.contains("chassis_messages_consumed_total") || name == "gateway" || name == "orchestrator",
            "{name}: {text}"
        );
        if let Err(report) = chassis::testing::promtool_check(&text).await {
            panic!("{name}: {report}");
        }
    }
    system.stop().await;
}
