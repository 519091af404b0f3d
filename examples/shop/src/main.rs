//! `cargo run -p shop` starts the whole shop in one process; `cargo run -p shop -- --demo` also
//! walks through the scenario: an order placed twice with one key, the fan-out, a cancellation
//! compensated by a refund, and the gateway degrading while payments fail.

use std::time::Duration;

use serde_json::{Value, json};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let demo = std::env::args().any(|a| a == "--demo");
    let system = match shop::start(8080).await {
        Ok(system) => system,
        Err(error) => {
            eprintln!("error: the shop could not start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!(
        "gateway        http://{}  (x-api-key: demo-key)",
        system.gateway.http_addr()
    );
    println!("orders         http://{}", system.orders.http_addr());
    println!("inventory      http://{}", system.inventory.http_addr());
    println!("payments       http://{}", system.payments.http_addr());
    println!(
        "notifications  http://{}/notifications",
        system.notifications.http_addr()
    );
    if demo {
        if let Err(error) = run_demo(&system).await {
            eprintln!("demo failed: {error}");
        }
    } else {
        println!("Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
    }
    system.stop().await;
    std::process::ExitCode::SUCCESS
}

async fn run_demo(system: &shop::System) -> Result<(), reqwest::Error> {
    let http = reqwest::Client::new();
    let gateway = format!("http://{}", system.gateway.http_addr());
    let place = |key: &'static str, item: &'static str, quantity: u32| {
        http.post(format!("{gateway}/orders"))
            .header("x-api-key", "demo-key")
            .header("idempotency-key", key)
            .json(&json!({ "item": item, "quantity": quantity, "amount_cents": 1299 }))
            .send()
    };
    println!("\n1. POST /orders twice with Idempotency-Key demo-1: one order");
    for _ in 0..2 {
        let response = place("demo-1", "book", 1).await?;
        let replayed = response.headers().get("idempotent-replayed").is_some();
        println!(
            "   {} replayed={replayed} {}",
            response.status(),
            response.text().await?
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("\n2. OrderPlaced fanned out to inventory, payments and notifications; the order follows:");
    let summary: Value = http
        .get(format!("{gateway}/orders/1/summary"))
        .header("x-api-key", "demo-key")
        .send()
        .await?
        .json()
        .await?;
    println!("   {summary}");
    println!("\n3. 50 pens when there are fewer in stock: StockRejected, then the payment is refunded");
    let response = place("demo-2", "pen", 500).await?;
    println!("   {}", response.status());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let order: Value = http
        .get(format!("{gateway}/orders/2"))
        .header("x-api-key", "demo-key")
        .send()
        .await?
        .json()
        .await?;
    println!("   {order}");
    println!("\n4. Payments fail: the gateway's breaker opens and the summary degrades");
    http.post(format!("http://{}/admin/failure", system.payments.http_addr()))
        .json(&json!({ "failing": true }))
        .send()
        .await?;
    for _ in 0..4 {
        let summary: Value = http
            .get(format!("{gateway}/orders/1/summary"))
            .header("x-api-key", "demo-key")
            .send()
            .await?
            .json()
            .await?;
        println!("   partial={} payment={}", summary["partial"], summary["payment"]);
    }
    let notifications: Value = http
        .get(format!("http://{}/notifications", system.notifications.http_addr()))
        .send()
        .await?
        .json()
        .await?;
    println!("\n5. Notifications sent: {notifications}");
    Ok(())
}
