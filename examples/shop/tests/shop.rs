//! The shop end to end over loopback HTTP and the in-memory bus.

use std::time::Duration;

use serde_json::{Value, json};

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_end_to_end() {
    let system = shop::start(0).await.unwrap();
    let http = reqwest::Client::new();
    let gateway = format!("http://{}", system.gateway.http_addr());
    let get = |path: String| {
        let request = http.get(format!("{gateway}{path}")).header("x-api-key", "demo-key");
        async move { request.send().await.unwrap() }
    };
    let place = |key: &'static str, item: &'static str, quantity: u32| {
        http.post(format!("{gateway}/orders"))
            .header("x-api-key", "demo-key")
            .header("idempotency-key", key)
            .json(&json!({ "item": item, "quantity": quantity, "amount_cents": 1299 }))
            .send()
    };

    // The gateway authenticates.
    let anonymous = http.get(format!("{gateway}/orders/1")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);

    // One key, two requests: one order.
    let first = place("k-1", "book", 2).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = place("k-1", "book", 2).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["id"], 1);

    // Fan-out and choreography: stock reserved and payment captured confirm the order.
    eventually("order 1 confirmed", async || {
        let order: Value = get("/orders/1".into()).await.json().await.unwrap();
        order["status"] == "confirmed"
    })
    .await;
    let summary: Value = get("/orders/1/summary".into()).await.json().await.unwrap();
    assert_eq!(summary["partial"], false, "{summary}");
    assert_eq!(summary["payment"]["status"], "captured");
    assert_eq!(summary["stock"]["status"], "reserved");

    // Compensation: a rejected reservation cancels the order and refunds the payment.
    assert_eq!(place("k-2", "pen", 500).await.unwrap().status(), 201);
    eventually("order 2 cancelled and refunded", async || {
        let order: Value = get("/orders/2".into()).await.json().await.unwrap();
        order["status"] == "cancelled" && order["refunded"] == true
    })
    .await;
    let notifications: Vec<String> = http
        .get(format!("http://{}/notifications", system.notifications.http_addr()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for expected in [
        "order 1 placed",
        "order 1 paid",
        "order 2 cancelled",
        "order 2 refunded",
    ] {
        assert!(
            notifications.iter().any(|n| n.starts_with(expected)),
            "{expected}: {notifications:?}"
        );
    }
    assert_eq!(
        notifications.iter().filter(|n| n.starts_with("order 1 placed")).count(),
        1,
        "one order, one notification"
    );

    // Payments fail: the summary degrades, then the gateway's breaker opens and stops calling.
    http.post(format!("http://{}/admin/failure", system.payments.http_addr()))
        .json(&json!({ "failing": true }))
        .send()
        .await
        .unwrap();
    for _ in 0..3 {
        let summary: Value = get("/orders/1/summary".into()).await.json().await.unwrap();
        assert_eq!(summary["partial"], true, "{summary}");
        assert_eq!(summary["stock"]["status"], "reserved", "the other parts still arrive");
    }
    let summary: Value = get("/orders/1/summary".into()).await.json().await.unwrap();
    let reason = summary["payment"]["unavailable"].as_str().unwrap().to_owned();
    assert!(reason.contains("circuit breaker"), "the breaker is open: {reason}");

    system.stop().await;
}
