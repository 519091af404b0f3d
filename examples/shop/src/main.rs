//! `cargo run -p shop` starts the whole shop in one process on the in-memory bus;
//! `cargo run -p shop -- --demo` also walks through the scenario: an order placed twice with one
//! key, the fan-out, a compensation by event, payments failing (the gateway's breaker opens and
//! the summary degrades), and the orchestrated checkout compensating when payments fail or hang.

use std::time::Duration;

use serde_json::{Value, json};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let demo = std::env::args().any(|a| a == "--demo");
    let system = match shop::Setup::default().start().await {
        Ok(system) => system,
        Err(error) => {
            eprintln!("error: the shop could not start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let gateway = system.gateway.http_addr();
    println!("gateway        http://{gateway}  (x-api-key: demo-key, or a HS256 JWT signed with demo-secret)");
    println!("orders         http://{}", system.orders.http_addr());
    println!("inventory      http://{}/stock", system.inventory.http_addr());
    println!("payments       http://{}", system.payments.http_addr());
    println!(
        "notifications  http://{}/notifications",
        system.notifications.http_addr()
    );
    println!("orchestrator   http://{}", system.orchestrator.http_addr());
    println!("\ntry: curl -H 'x-api-key: demo-key' -H 'idempotency-key: k1' -H 'content-type: application/json' \\");
    println!("       -d '{{\"item\":\"book\",\"quantity\":1,\"amount_cents\":1299}}' http://{gateway}/orders");
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

struct Demo {
    http: reqwest::Client,
    gateway: String,
    payments: String,
}

impl Demo {
    async fn get(&self, path: &str) -> Result<Value, reqwest::Error> {
        let url = format!("{}{path}", self.gateway);
        self.http
            .get(url)
            .header("x-api-key", "demo-key")
            .send()
            .await?
            .json()
            .await
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Result<reqwest::Response, reqwest::Error> {
        let url = format!("{}{path}", self.gateway);
        let request = self.http.post(url).header("x-api-key", "demo-key");
        request.header("idempotency-key", key).json(&body).send().await
    }

    async fn fault(&self, fault: Value) -> Result<(), reqwest::Error> {
        let url = format!("{}/admin/fault", self.payments);
        self.http.post(url).json(&fault).send().await?;
        Ok(())
    }

    /// Starts a checkout and waits for its saga to end.
    async fn checkout(&self, key: &str, item: &str) -> Result<Value, reqwest::Error> {
        let body = json!({ "item": item, "quantity": 1, "amount_cents": 2500 });
        let started: Value = self.post("/checkouts", key, body).await?.json().await?;
        let path = format!("/checkouts/{}", started["id"].as_str().unwrap_or_default());
        for _ in 0..300 {
            let checkout = self.get(&path).await?;
            if checkout["status"] != "running" && checkout["status"] != "compensating" {
                return Ok(checkout);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.get(&path).await
    }
}

async fn run_demo(system: &shop::System) -> Result<(), reqwest::Error> {
    let demo = Demo {
        http: reqwest::Client::new(),
        gateway: format!("http://{}", system.gateway.http_addr()),
        payments: format!("http://{}", system.payments.http_addr()),
    };
    let order = json!({ "item": "book", "quantity": 1, "amount_cents": 1299 });
    println!("\n1. POST /orders twice with Idempotency-Key demo-1: one order");
    for _ in 0..2 {
        let response = demo.post("/orders", "demo-1", order.clone()).await?;
        let replayed = response.headers().get("idempotent-replayed").is_some();
        println!(
            "   {} replayed={replayed} {}",
            response.status(),
            response.text().await?
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("\n2. OrderPlaced fanned out to inventory, payments and notifications; the summary:");
    println!("   {}", demo.get("/orders/1/summary").await?);

    println!("\n3. Choreography: 500 pens, more than in stock: StockRejected, so payments refunds");
    let response = demo
        .post(
            "/orders",
            "demo-2",
            json!({ "item": "pen", "quantity": 500, "amount_cents": 99 }),
        )
        .await?;
    println!("   {}", response.status());
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("   {}", demo.get("/orders/2").await?);

    println!("\n4. Orchestration: a checkout saga (reserve stock, charge, notify)");
    let checkout = demo.checkout("demo-3", "book").await?;
    println!("   {} {}", checkout["status"], checkout["checkout"]["id"]);

    println!("\n5. Payments hang: `charge` times out, so it is refunded (voided) and the stock released");
    demo.fault(json!({ "delay_ms": 5000 })).await?;
    let checkout = demo.checkout("demo-4", "book").await?;
    println!(
        "   {} at {}: {}",
        checkout["status"], checkout["failed_step"], checkout["error"]
    );

    println!("\n6. Payments fail: the gateway's breaker opens and the summary degrades");
    demo.fault(json!({ "failing": true })).await?;
    for _ in 0..4 {
        let summary = demo.get("/orders/1/summary").await?;
        println!("   partial={} payment={}", summary["partial"], summary["payment"]);
    }
    println!("\n7. ... and a checkout fails at `charge`: the saga releases the stock");
    let checkout = demo.checkout("demo-5", "book").await?;
    println!(
        "   {} at {}: {}",
        checkout["status"], checkout["failed_step"], checkout["error"]
    );
    demo.fault(json!({})).await?;
    println!(
        "   stock left: {}",
        reqwest::get(format!("http://{}/stock", system.inventory.http_addr()))
            .await?
            .text()
            .await?
    );

    let notifications: Value = reqwest::get(format!("http://{}/notifications", system.notifications.http_addr()))
        .await?
        .json()
        .await?;
    println!("\n8. Notifications sent: {notifications}");
    Ok(())
}
