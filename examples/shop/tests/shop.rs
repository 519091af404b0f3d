//! The shop end to end over loopback HTTP: every scenario once on the in-memory bus and state,
//! once on RabbitMQ and once on NATS with PostgreSQL (selected by config alone), each in a
//! schema of its own.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chassis::testing::{backend, backend_url, delete_broker_namespace, postgres_schema, reachable};
use serde_json::{Value, json};
use shop::{Backend, Database, Setup, System};

/// Waits until `check` holds.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    chassis::testing::eventually(what, async || check().await.then_some(())).await;
}

fn token(secret: &str, sub: &str, expires_in: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    sign(secret, json!({ "sub": sub, "exp": now + expires_in }))
}

fn sign(secret: &str, claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

struct Shop {
    system: System,
    http: reqwest::Client,
    gateway: String,
    /// Makes idempotency keys unique to this run: the PostgreSQL store outlives it.
    run: String,
}

impl Shop {
    async fn get(&self, path: &str) -> reqwest::Response {
        let request = self.http.get(format!("{}{path}", self.gateway));
        request.header("x-api-key", "demo-key").send().await.unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        self.get(path).await.json().await.unwrap()
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        let request = self.http.post(format!("{}{path}", self.gateway));
        let request = request.header("x-api-key", "demo-key");
        let key = format!("{}-{key}", self.run);
        request.header("idempotency-key", key).json(&body).send().await.unwrap()
    }

    async fn service(&self, service: &chassis::RunningService, path: &str) -> Value {
        let url = format!("http://{}{path}", service.http_addr());
        self.http.get(url).send().await.unwrap().json().await.unwrap()
    }

    async fn fault(&self, fault: Value) {
        let url = format!("http://{}/admin/fault", self.system.payments.http_addr());
        let answer = self.http.post(url).json(&fault).send().await.unwrap();
        assert_eq!(answer.status(), 204);
    }

    /// Starts a checkout and waits for its saga to finish.
    async fn checkout(&self, key: &str, quantity: u32) -> Value {
        let body = json!({ "item": "book", "quantity": quantity, "amount_cents": 2500 });
        let started = self.post("/checkouts", key, body).await;
        assert_eq!(started.status(), 202);
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let mut finished = Value::Null;
        until("the checkout saga to finish", async || {
            finished = self.json(&location).await;
            !matches!(finished["status"].as_str(), Some("running" | "compensating"))
        })
        .await;
        finished
    }
}

async fn scenario(setup: Setup) {
    let rate = setup.requests_per_second as usize;
    let system = setup.start().await.expect("the shop starts");
    let shop = Shop {
        gateway: format!("http://{}", system.gateway.http_addr()),
        system,
        http: reqwest::Client::new(),
        run: uuid::Uuid::new_v4().to_string(),
    };
    let http = &shop.http;
    let gateway = &shop.gateway;

    // The gateway authenticates: API keys and JWT bearer tokens, nothing else.
    let anonymous = http.get(format!("{gateway}/orders/1")).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let bearer = |token: String| http.get(format!("{gateway}/orders/0")).bearer_auth(token).send();
    let accepted = bearer(token("demo-secret", "alice", 60)).await.unwrap();
    assert_eq!(
        accepted.status(),
        404,
        "authenticated, then routed: there is no order 0"
    );
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    for (forged, why) in [
        (token("wrong-secret", "mallory", 60), "signature is not valid"),
        (token("demo-secret", "alice", -3600), "has expired"),
        (token("demo-secret", "alice", -30), "has expired"),
        (
            sign(
                "demo-secret",
                json!({ "sub": "alice", "exp": now + 600, "nbf": now + 300 }),
            ),
            "not valid yet",
        ),
        (token("demo-secret", "alice\nbob", 60), "control characters"),
    ] {
        let refused = bearer(forged).await.unwrap();
        assert_eq!(refused.status(), 401);
        let problem: Value = refused.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(why), "{problem}");
        assert!(
            !detail.contains("Signature") && !detail.contains("Kind"),
            "no verifier internals: {problem}"
        );
    }

    // ... and rate-limits per client: one client's burst leaves the others alone. The limit is
    // `rate` a second with bursts of `rate`, so in the time the requests took at most
    // `rate + rate × elapsed` of them pass, however fast or slow this machine answers them.
    // Ten requests at a time, so that the burst outruns the limit on a slow machine too
    // without piling up on the services behind the gateway.
    let greedy = token("demo-secret", "greedy", 60);
    let (streams, each) = (10, 15);
    let sent = streams * each;
    let started = Instant::now();
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (http, url, greedy) = (http.clone(), format!("{gateway}/orders/0"), greedy.clone());
        burst.spawn(async move {
            let mut statuses = Vec::with_capacity(each);
            for _ in 0..each {
                let answer = http.get(&url).bearer_auth(&greedy).send().await.unwrap();
                statuses.push(answer.status().as_u16());
            }
            statuses
        });
    }
    let statuses = burst.join_all().await;
    let elapsed = started.elapsed();
    let mut passed = 0;
    for status in statuses.into_iter().flatten() {
        match status {
            404 => passed += 1,
            429 => {}
            other => panic!("a request of the burst was answered {other}"),
        }
    }
    let budget = rate + (rate as f64 * elapsed.as_secs_f64()).ceil() as usize;
    assert!(
        passed >= rate.min(sent),
        "a burst within the limit passes: {passed} of {sent}"
    );
    assert!(
        passed <= budget,
        "{passed} of {sent} passed in {elapsed:?}; the limit lets {budget} through"
    );
    assert_eq!(shop.get("/orders/0").await.status(), 404, "demo-key still passes");

    // One Idempotency-Key, two requests: one order.
    let order = json!({ "item": "book", "quantity": 2, "amount_cents": 1299 });
    let first = shop.post("/orders", "order-1", order.clone()).await;
    assert_eq!(first.status(), 201);
    assert_eq!(
        first.headers().get_all("content-type").iter().count(),
        1,
        "the gateway relays one content-type"
    );
    let first: Value = first.json().await.unwrap();
    let again = shop.post("/orders", "order-1", order).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first["id"], again["id"]);
    let id = first["id"].as_u64().unwrap();

    // The order is the client's own: another client using the same key gets an order of its
    // own, and cannot read or summarize the first one.
    let bob = token("demo-secret", "bob", 600);
    let post_as_bob = |key: &str, body: Value| {
        http.post(format!("{gateway}/orders"))
            .bearer_auth(&bob)
            .header("idempotency-key", format!("{}-{key}", shop.run))
            .json(&body)
            .send()
    };
    let bobs = post_as_bob(
        "order-1",
        json!({ "item": "book", "quantity": 2, "amount_cents": 1299 }),
    )
    .await
    .unwrap();
    assert_eq!(bobs.status(), 201, "the same key, another client: not a replay");
    assert!(bobs.headers().get("idempotent-replayed").is_none());
    let bobs: Value = bobs.json().await.unwrap();
    assert_ne!(bobs["id"], first["id"]);
    for path in [format!("/orders/{id}"), format!("/orders/{id}/summary")] {
        let peek = http
            .get(format!("{gateway}{path}"))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        assert_eq!(peek.status(), 404, "{path} is not bob's");
        assert_eq!(peek.headers()["content-type"], "application/problem+json");
    }
    // An identity header sent from outside is removed at the gateway, never trusted.
    let forged = "v1;c=jwt;s=bob;t=0;sig=00";
    let mallory = http
        .get(format!("{gateway}/orders/{}", bobs["id"]))
        .header("x-chassis-identity", forged)
        .header("x-api-key", "demo-key")
        .send()
        .await
        .unwrap();
    assert_eq!(mallory.status(), 404, "served as demo-key's client, not as bob");
    let no_credentials = http
        .get(format!("{gateway}/orders/{}", bobs["id"]))
        .header("x-chassis-identity", forged)
        .send()
        .await
        .unwrap();
    assert_eq!(no_credentials.status(), 401);

    // Fan-out and choreography: stock reserved and payment captured confirm the order.
    until("the order to be confirmed", async || {
        shop.json(&format!("/orders/{id}")).await["status"] == "confirmed"
    })
    .await;
    let summary = shop.json(&format!("/orders/{id}/summary")).await;
    assert_eq!(summary["partial"], false, "{summary}");
    assert_eq!(summary["payment"]["status"], "captured");
    assert_eq!(summary["stock"]["status"], "reserved");

    // Compensation by event: a rejected reservation cancels the order and refunds the payment.
    let too_many = json!({ "item": "pen", "quantity": 500, "amount_cents": 99 });
    let rejected: Value = shop.post("/orders", "order-2", too_many).await.json().await.unwrap();
    let rejected = rejected["id"].as_u64().unwrap();
    until("the order to be cancelled", async || {
        shop.json(&format!("/orders/{rejected}")).await["status"] == "cancelled"
    })
    .await;
    // The two events reach payments separately: a capture seen first is refunded, a rejection
    // seen first voids the payment so that the late capture takes nothing. Either way no money
    // stays taken.
    let mut payment = Value::Null;
    until("the payment to be refunded or voided", async || {
        payment = shop
            .service(&shop.system.payments, &format!("/payments/{rejected}"))
            .await;
        payment["status"] == "refunded" || payment["status"] == "voided"
    })
    .await;
    let refunded = payment["status"] == "refunded";
    if refunded {
        until("the order to be marked refunded", async || {
            shop.json(&format!("/orders/{rejected}")).await["refunded"] == true
        })
        .await;
    }

    // Orchestration: the checkout saga reserves, charges and notifies by command.
    let completed = shop.checkout("checkout-1", 1).await;
    assert_eq!(completed["status"], "completed", "{completed}");
    let checkout_id = completed["id"].as_str().unwrap().to_owned();
    let payment = shop
        .service(&shop.system.payments, &format!("/payments/{checkout_id}"))
        .await;
    assert_eq!(payment["status"], "captured");

    let notifications = shop.system.notifications.http_addr();
    until("every notification", async || {
        let sent: Vec<String> = http
            .get(format!("http://{notifications}/notifications"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let count = |prefix: String| sent.iter().filter(|n| n.starts_with(&prefix)).count();
        count(format!("order {id} placed")) == 1
            && count(format!("order {id} paid")) == 1
            && count(format!("order {rejected} cancelled")) == 1
            && count(format!("order {rejected} refunded")) == usize::from(refunded)
            && count(format!("checkout {checkout_id} confirmed")) == 1
    })
    .await;

    // Payments hang: the charge times out, so the saga voids it and releases the stock.
    let stock_before = shop.service(&shop.system.inventory, "/stock").await;
    shop.fault(json!({ "delay_ms": 2500 })).await;
    let summary = shop.json(&format!("/orders/{id}/summary")).await;
    assert_eq!(
        summary["partial"], true,
        "the gateway does not wait for a hanging part: {summary}"
    );
    let reason = summary["payment"]["unavailable"].as_str().unwrap();
    assert!(reason.contains("timed out"), "{reason}");
    let timed_out = shop.checkout("checkout-2", 1).await;
    assert_eq!(timed_out["status"], "compensated", "{timed_out}");
    assert_eq!(timed_out["failed_step"], "charge");
    assert!(
        timed_out["error"].as_str().unwrap().contains("timed out"),
        "{timed_out}"
    );
    shop.fault(json!({})).await;
    let voided_id = timed_out["id"].as_str().unwrap();
    let voided = shop
        .service(&shop.system.payments, &format!("/payments/{voided_id}"))
        .await;
    assert_eq!(voided["status"], "voided", "the late capture is refused: {voided}");
    let released = shop
        .service(&shop.system.inventory, &format!("/reservations/{voided_id}"))
        .await;
    assert_eq!(released["status"], "released");
    assert_eq!(shop.service(&shop.system.inventory, "/stock").await, stock_before);

    // Payments fail: the summary degrades, then the gateway's breaker opens and stops calling.
    shop.fault(json!({ "failing": true })).await;
    for _ in 0..3 {
        let summary = shop.json(&format!("/orders/{id}/summary")).await;
        assert_eq!(summary["partial"], true, "{summary}");
        assert_eq!(summary["stock"]["status"], "reserved", "the other parts still arrive");
    }
    let summary = shop.json(&format!("/orders/{id}/summary")).await;
    let reason = summary["payment"]["unavailable"].as_str().unwrap().to_owned();
    assert!(reason.contains("circuit breaker"), "the breaker is open: {reason}");

    // ... and a checkout fails at `charge`: the reservation is released, nothing charged.
    let failed = shop.checkout("checkout-3", 1).await;
    assert_eq!(failed["status"], "compensated", "{failed}");
    assert_eq!(failed["failed_step"], "charge");
    let failed_id = failed["id"].as_str().unwrap();
    let released = shop
        .service(&shop.system.inventory, &format!("/reservations/{failed_id}"))
        .await;
    assert_eq!(released["status"], "released");
    shop.fault(json!({})).await;
    assert_eq!(shop.service(&shop.system.inventory, "/stock").await, stock_before);

    shop.system.stop().await;
}

fn fast(backend: Backend) -> Setup {
    Setup {
        base_port: 0,
        backend,
        // Short enough for a quick run, long enough for a busy CI machine; the slow-payments
        // scenario below hangs for longer than both.
        call_timeout: Duration::from_secs(1),
        step_timeout: Duration::from_secs(1),
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_on_the_in_memory_bus() {
    scenario(fast(Backend::Memory)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_on_rabbitmq_and_postgresql() {
    let amqp = backend_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let postgres = backend_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    if backend("RabbitMQ", reachable(&amqp, 5672)).await.is_none()
        || backend("PostgreSQL", reachable(&postgres, 5432)).await.is_none()
    {
        return;
    }
    let postgres = postgres_schema(&postgres, "shop").await.unwrap();
    let namespace = format!("shop-test-{}", uuid::Uuid::new_v4());
    scenario(fast(Backend::Broker {
        transport: "amqp".into(),
        url: amqp.clone(),
        namespace: namespace.clone(),
        database: Database::Postgres(postgres),
    }))
    .await;
    delete_namespace("amqp", &amqp, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_on_nats_and_postgresql() {
    let nats = backend_url("NATS_URL", "nats://127.0.0.1:4222");
    let postgres = backend_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    if backend("NATS", reachable(&nats, 4222)).await.is_none()
        || backend("PostgreSQL", reachable(&postgres, 5432)).await.is_none()
    {
        return;
    }
    let postgres = postgres_schema(&postgres, "shop").await.unwrap();
    let namespace = format!("shop-test-{}", uuid::Uuid::new_v4().simple());
    scenario(fast(Backend::Broker {
        transport: "nats".into(),
        url: nats.clone(),
        namespace: namespace.clone(),
        database: Database::Postgres(postgres),
    }))
    .await;
    delete_namespace("nats", &nats, &namespace).await;
}

/// Deletes the broker objects of the run's namespace, so that runs do not pile up durable
/// queues and streams on a shared broker.
async fn delete_namespace(transport: &str, url: &str, namespace: &str) {
    let deleted = delete_broker_namespace(transport, url, namespace)
        .await
        .unwrap_or_else(|error| panic!("deleting {namespace} on {transport}: {error}"));
    assert!(deleted > 0, "the services declared {namespace}'s queues or streams");
}
