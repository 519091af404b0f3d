//! The scripted walk-through of `cargo run -p shop -- --demo`: one step per pattern, each
//! named, done through the gateway as a client would, and explained in a line or two.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chassis::messaging::{Kind, Message as _};
use serde_json::{Value, json};
use shop_contract::events::OrderPlaced;

type Failure = Box<dyn std::error::Error>;

struct Demo<'a> {
    system: &'a shop::System,
    http: reqwest::Client,
    gateway: String,
    step: std::cell::Cell<u32>,
}

impl Demo<'_> {
    fn step(&self, pattern: &str, what: &str) {
        let n = self.step.get() + 1;
        self.step.set(n);
        println!("\n{n}. {pattern}: {what}");
    }

    fn say(&self, line: impl std::fmt::Display) {
        println!("   {line}");
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        Ok(self
            .http
            .get(self.url(path))
            .header("x-api-key", "demo-key")
            .send()
            .await?
            .json()
            .await?)
    }

    /// `GET path` with `token` as the bearer token.
    async fn get_as(&self, path: &str, token: &str) -> Result<reqwest::Response, Failure> {
        Ok(self.http.get(self.url(path)).bearer_auth(token).send().await?)
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Result<reqwest::Response, Failure> {
        let request = self.http.post(self.url(path)).header("x-api-key", "demo-key");
        Ok(request.header("idempotency-key", key).json(&body).send().await?)
    }

    async fn service(&self, service: &chassis::RunningService, path: &str) -> Result<Value, Failure> {
        let url = format!("http://{}{path}", service.http_addr());
        Ok(self.http.get(url).send().await?.json().await?)
    }

    async fn fault(&self, fault: Value) -> Result<(), Failure> {
        let url = format!("http://{}/admin/fault", self.system.payments.http_addr());
        self.http.post(url).json(&fault).send().await?;
        Ok(())
    }

    /// Polls `path` through the gateway until `done` holds for its answer (at most 30 s).
    async fn until(&self, path: &str, done: impl Fn(&Value) -> bool) -> Result<Value, Failure> {
        poll(path, async || self.get(path).await, done).await
    }

    /// Starts a checkout and waits for its saga to end.
    async fn checkout(&self, key: &str) -> Result<Value, Failure> {
        let body = json!({ "item": "book", "quantity": 1, "amount_cents": 2500 });
        let started: Value = self.post("/checkouts", key, body).await?.json().await?;
        let path = format!("/checkouts/{}", started["id"].as_str().unwrap_or_default());
        self.until(&path, |c| c["status"] != "running" && c["status"] != "compensating")
            .await
    }

    async fn notifications(&self) -> Result<Vec<String>, Failure> {
        let notifications = self.service(&self.system.notifications, "/notifications").await?;
        Ok(serde_json::from_value(notifications)?)
    }
}

/// Polls `fetch` until `done` holds for its answer (at most 30 s); `what` names it in the error.
async fn poll(
    what: &str,
    fetch: impl AsyncFn() -> Result<Value, Failure>,
    done: impl Fn(&Value) -> bool,
) -> Result<Value, Failure> {
    for _ in 0..300 {
        let value = fetch().await?;
        if done(&value) {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("{what} did not settle").into())
}

fn token(sub: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = json!({ "sub": sub, "exp": now + 600 });
    let key = jsonwebtoken::EncodingKey::from_secret(b"demo-secret");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap_or_default()
}

async fn detail(response: reqwest::Response) -> Result<String, Failure> {
    let status = response.status().as_u16();
    let problem: Value = response.json().await?;
    Ok(format!("{status} {}", problem["detail"].as_str().unwrap_or_default()))
}

/// Runs every step; `logs` says whether the services' logs are shown alongside.
pub async fn run(system: &shop::System, logs: bool) -> Result<(), Failure> {
    let demo = Demo {
        system,
        http: reqwest::Client::new(),
        gateway: format!("http://{}", system.gateway.http_addr()),
        step: Default::default(),
    };
    if !logs {
        println!("\n(the services' logs are off; `--logs` shows them)");
    }
    // The bus is tapped like one more subscriber group, to deliver an event twice in step 5.
    let bus = system.bus.clone().ok_or("the demo runs on the in-memory bus")?;
    let mut tap = chassis::messaging::Transport::subscribe(&bus, Kind::Event, OrderPlaced::TYPE, "demo-tap").await?;

    demo.step("API gateway", "every request is authenticated at the front door");
    let anonymous = demo.http.get(demo.url("/orders/1")).send().await?;
    demo.say(format!("no credentials      -> {}", detail(anonymous).await?));
    let expired = demo.get_as("/orders/1", "not.a.jwt").await?;
    demo.say(format!("a broken JWT        -> {}", detail(expired).await?));
    let alice = demo.get_as("/orders/1", &token("alice")).await?;
    demo.say(format!(
        "alice's JWT         -> {} (authenticated; alice has no order 1)",
        alice.status().as_u16()
    ));

    demo.step(
        "API gateway",
        "rate limit per client: one client's burst does not slow the others",
    );
    let greedy = token("greedy");
    let mut limited = 0;
    for _ in 0..80 {
        let answer = demo.get_as("/orders/1", &greedy).await?;
        limited += usize::from(answer.status() == 429);
    }
    let other = demo.get_as("/orders/1", &token("alice")).await?;
    demo.say(format!(
        "greedy: {limited} of 80 requests answered 429; alice meanwhile: {}",
        other.status().as_u16()
    ));

    demo.step(
        "Idempotency-Key",
        "a request retried with the same key takes effect once",
    );
    let order = json!({ "item": "book", "quantity": 1, "amount_cents": 1299 });
    let mut id = 0;
    for attempt in ["sent", "retried"] {
        let response = demo.post("/orders", "demo-1", order.clone()).await?;
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let placed: Value = response.json().await?;
        id = placed["id"].as_u64().unwrap_or_default();
        demo.say(format!("{attempt}: order {id}, replayed from the store: {replayed}"));
    }

    demo.step(
        "Fan-out",
        "OrderPlaced goes to inventory, payments and notifications, like SNS topics",
    );
    let order_path = format!("/orders/{id}");
    demo.until(&order_path, |o| o["status"] == "confirmed").await?;
    let summary = demo.get(&format!("/orders/{id}/summary")).await?;
    demo.say(format!(
        "stock {}, payment {}, order {} (the gateway aggregated three services)",
        summary["stock"]["status"], summary["payment"]["status"], summary["order"]["status"]
    ));

    demo.step(
        "Idempotent consumer",
        "the bus delivers the same OrderPlaced again; nobody applies it twice",
    );
    let delivery = tokio::time::timeout(Duration::from_secs(5), tap.next())
        .await?
        .ok_or("the tap ended")??;
    let message = delivery.message.clone();
    delivery.ack().await?;
    chassis::messaging::Transport::publish(&bus, Kind::Event, OrderPlaced::TYPE, message).await?;
    let metrics = demo
        .http
        .get(format!("http://{}/metrics", system.notifications.admin_addr()));
    let mut duplicates = 0;
    for _ in 0..100 {
        let text = metrics.try_clone().ok_or("a request")?.send().await?.text().await?;
        duplicates = text
            .lines()
            .filter(|l| l.starts_with("chassis_idempotent_consumer_messages_total") && l.contains("duplicate"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64;
        if duplicates > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let placed = demo.notifications().await?;
    let once = placed
        .iter()
        .filter(|n| n.starts_with(&format!("order {id} placed")))
        .count();
    demo.say(format!(
        "the subscribers skipped {duplicates} duplicate deliveries; \"order {id} placed\" was sent {once} time"
    ));

    demo.step(
        "Choreography",
        "500 pens, more than in stock: inventory says StockRejected, payments refunds or voids",
    );
    let pens = json!({ "item": "pen", "quantity": 500, "amount_cents": 99 });
    let placed: Value = demo.post("/orders", "demo-2", pens).await?.json().await?;
    let pens_path = format!("/orders/{}", placed["id"]);
    let cancelled = demo.until(&pens_path, |o| o["status"] == "cancelled").await?;
    // OrderPlaced and StockRejected reach payments separately: a capture seen first is
    // refunded; a rejection seen first voids the payment, so the late capture takes nothing.
    let payment_path = format!("/payments/{}", placed["id"]);
    let payment = poll(
        &payment_path,
        async || demo.service(&demo.system.payments, &payment_path).await,
        |p| p["status"] == "refunded" || p["status"] == "voided",
    )
    .await?;
    let outcome = if payment["status"] == "refunded" {
        demo.until(&pens_path, |o| o["refunded"] == true).await?;
        "payment refunded"
    } else {
        "payment voided before it was captured"
    };
    demo.say(format!(
        "order {}: cancelled ({}), {outcome}",
        placed["id"], cancelled["reason"]
    ));

    demo.step(
        "Orchestration",
        "a checkout saga: reserve stock, charge, notify, each by command",
    );
    let checkout = demo.checkout("demo-3").await?;
    demo.say(format!("checkout {}: {}", checkout["id"], checkout["status"]));

    demo.step(
        "Saga compensation",
        "payments hang: `charge` times out, so it is voided and the stock released",
    );
    demo.fault(json!({ "delay_ms": 5000 })).await?;
    let checkout = demo.checkout("demo-4").await?;
    demo.say(format!(
        "{} at {}: {}",
        checkout["status"], checkout["failed_step"], checkout["error"]
    ));

    demo.step(
        "Circuit breaker",
        "payments fail: the gateway stops calling it, the summary degrades",
    );
    demo.fault(json!({ "failing": true })).await?;
    for call in 1..=4 {
        let summary = demo.get(&format!("/orders/{id}/summary")).await?;
        let reason = summary["payment"]["unavailable"].as_str().unwrap_or_default();
        let state = if reason.contains("circuit breaker") {
            "breaker open, not called"
        } else {
            "called, failed"
        };
        demo.say(format!(
            "summary {call}: partial={} payment {state}",
            summary["partial"]
        ));
    }
    demo.fault(json!({})).await?;

    demo.step(
        "Sidecar",
        "an app without the chassis gets its edge from a sidecar in front of it",
    );
    sidecar(&demo, logs).await?;

    let sent = demo.notifications().await?;
    demo.step("Notifications", &format!("{} sent, each once", sent.len()));
    for notification in sent {
        demo.say(notification);
    }
    Ok(())
}

/// A plain axum app behind the sidecar: it sees the trace context the sidecar adds, and when
/// it goes away the sidecar answers for it.
async fn sidecar(demo: &Demo<'_>, logs: bool) -> Result<(), Failure> {
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            format!(
                "hello from the app; traceparent {}",
                if headers.contains_key("traceparent") {
                    "received"
                } else {
                    "missing"
                }
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = listener.local_addr()?;
    let app_task = tokio::spawn(async move { axum::serve(listener, app).await });
    let options = chassis::Options::new().service_defaults("sidecar", env!("CARGO_PKG_VERSION"));
    let options = options.configure(move |loader| {
        let loader = loader
            .set("http.host", "127.0.0.1")
            .set("http.port", 0)
            .set("admin.host", "127.0.0.1")
            .set("admin.port", 0)
            .set("shutdown.readiness_delay", "0s")
            .set("egress.port", 0)
            .set("clients.app.base_url", format!("http://{app_addr}"))
            .set("clients.app.retry.max_retries", 0)
            // A new connection per call, so the app's going away shows at once.
            .set("clients.app.pool_max_idle", 0);
        if logs {
            loader
        } else {
            loader.set("telemetry.log_level", "off")
        }
    });
    let proxy = chassis::start(options, sidecar::service).await?;
    let answer = demo.http.get(format!("http://{}/", proxy.http_addr())).send().await?;
    let request_id = answer.headers().get("x-request-id").is_some();
    demo.say(format!(
        "through the sidecar: {} (request id added: {request_id})",
        answer.text().await?
    ));
    app_task.abort();
    let _ = app_task.await;
    let answer = demo.http.get(format!("http://{}/", proxy.http_addr())).send().await?;
    demo.say(format!("the app is down     -> {}", detail(answer).await?));
    proxy.stop().await;
    Ok(())
}
