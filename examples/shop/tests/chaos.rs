//! The shop's delivery promises under faults, checked in PostgreSQL: 1,000 orders placed through
//! the gateway, each retried by its client with the same `Idempotency-Key` until it is accepted
//! (some first attempts abandoned mid-flight), while the broker becomes unreachable twice for
//! longer than the publish timeout, every PostgreSQL connection is cut once and the orders
//! relay's session is killed once. Once the system settles:
//!
//! - every accepted order exists once, and no order exists that was not accepted;
//! - each subscriber (inventory, payments, notifications) applied each `OrderPlaced` exactly
//!   once: one reservation, one payment, one "placed" notification per order (notifications are
//!   plain inserts, so a second application would show);
//! - every order reached its end (confirmed, or cancelled with the payment refunded or voided);
//! - nothing is left in any outbox, nothing was dead-lettered.
//!
//! Runs over RabbitMQ and over NATS, each in a schema and namespace of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chassis::messaging::{INBOX_TOTAL, Message as _};
use chassis::outbox::RELAY_APPLICATION_NAME;
use chassis::testing::{
    Fault, FaultProxy, backend, backend_url, delete_broker_namespace, eventually_within, host_port, postgres_schema,
    reachable,
};
use serde_json::{Value, json};
use shop::{Backend, Database, Setup, System};
use shop_contract::events::OrderPlaced;
use sqlx::PgPool;

/// Orders placed per run.
const ORDERS: usize = 1_000;
/// Clients placing them at once.
const CLIENTS: usize = 8;
/// Pens in stock: the first 100 orders of one pen are confirmed, the rest cancelled.
const PENS: i64 = 100;
/// The services' `messaging.publish_timeout`; each outage lasts longer.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
const OUTAGE: Duration = Duration::from_secs(5);

/// What the clients saw.
#[derive(Default)]
struct Placed {
    /// Key → the order id of its 201.
    accepted: BTreeMap<usize, u64>,
    /// Attempts answered with an error status (the client was told it failed and retried).
    failed_answers: usize,
    /// Attempts the client abandoned before an answer (timeout, connection error).
    abandoned: usize,
    /// 201s that were replays of an earlier attempt's effect.
    replayed: usize,
}

struct Chaos {
    system: System,
    http: reqwest::Client,
    gateway: String,
    run: String,
    broker: FaultProxy,
    database: FaultProxy,
    pool: PgPool,
}

impl Chaos {
    /// Places order `key` until it is accepted; the first attempt of every tenth order gives
    /// up after a few milliseconds, as an impatient client does.
    async fn place(&self, key: usize, placed: &std::sync::Mutex<Placed>) {
        let body = json!({ "item": "pen", "quantity": 1, "amount_cents": 100 + key });
        for attempt in 1.. {
            let patience = if key.is_multiple_of(10) && attempt == 1 {
                Duration::from_millis(3)
            } else {
                Duration::from_secs(10)
            };
            let answer = self
                .http
                .post(format!("{}/orders", self.gateway))
                .header("x-api-key", "demo-key")
                .header("idempotency-key", format!("{}-{key}", self.run))
                .json(&body)
                .timeout(patience)
                .send()
                .await;
            match answer {
                Ok(answer) if answer.status() == 201 => {
                    let replayed = answer.headers().contains_key("idempotent-replayed");
                    let order: Value = answer.json().await.unwrap();
                    let mut placed = placed.lock().unwrap();
                    placed.accepted.insert(key, order["id"].as_u64().unwrap());
                    placed.replayed += usize::from(replayed);
                    return;
                }
                Ok(answer) => {
                    let status = answer.status();
                    assert!(
                        status.is_server_error() || status == 409 || status == 429,
                        "order {key}: unexpected {status}: {}",
                        answer.text().await.unwrap_or_default()
                    );
                    placed.lock().unwrap().failed_answers += 1;
                }
                Err(_) => placed.lock().unwrap().abandoned += 1,
            }
            assert!(attempt < 200, "order {key} was never accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes the broker unreachable for longer than the publish timeout.
    async fn broker_outage(&self) {
        self.broker.set(Fault::Unreachable);
        tokio::time::sleep(OUTAGE).await;
        self.broker.set(Fault::None);
    }

    /// Terminates the orders relay's database session, as a crash or a failover would.
    async fn kill_relay(&self) {
        let killed: Vec<(bool,)> =
            sqlx::query_as("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                .bind(format!("{RELAY_APPLICATION_NAME} {}/orders", self.run))
                .fetch_all(&self.pool)
                .await
                .unwrap();
        assert_eq!(killed, vec![(true,)], "the orders relay had one session to kill");
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// The services' metric `name` with `label`, summed over every series (one process holds
    /// every service, so their metrics share one endpoint).
    async fn metric(&self, name: &str, label: &str) -> f64 {
        let url = format!("http://{}/metrics", self.system.orders.admin_addr());
        let text = self.http.get(url).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|line| line.starts_with(name) && line.contains(label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Dead letters of `group`, through the admin endpoint of `service`.
    async fn dead_letters(&self, service: &chassis::RunningService, group: &str) -> usize {
        let url = format!("http://{}/dead-letters/{group}?limit=10000", service.admin_addr());
        let letters: Vec<Value> = self.http.get(url).send().await.unwrap().json().await.unwrap();
        letters.len()
    }
}

/// One chaos run at a time: two shops at once would need more PostgreSQL connections than a
/// default server allows (100).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn chaos(name: &str, transport: &str, broker_url: String, default_port: u16) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let postgres = backend_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    if backend(name, reachable(&broker_url, default_port)).await.is_none()
        || backend("PostgreSQL", reachable(&postgres, 5432)).await.is_none()
    {
        return;
    }
    let schema_url = postgres_schema(&postgres, "chaos").await.unwrap();
    let pool = PgPool::connect(&schema_url).await.unwrap();
    let broker = FaultProxy::start(host_port(&broker_url, default_port)).await;
    let database = FaultProxy::start(host_port(&postgres, 5432)).await;
    // Short enough for the relay's application name (at most 63 bytes) to hold it whole.
    let run = format!("chaos-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let setup = Setup {
        base_port: 0,
        backend: Backend::Broker {
            transport: transport.into(),
            url: broker.url(&broker_url),
            namespace: run.clone(),
            database: Database::Postgres(database.url(&schema_url)),
        },
        call_timeout: Duration::from_secs(5),
        requests_per_second: 100_000,
        overrides: vec![
            (
                "messaging.publish_timeout".into(),
                format!("{}ms", PUBLISH_TIMEOUT.as_millis()),
            ),
            ("outbox.retry_max_delay".into(), "1s".into()),
            ("startup.connect_timeout".into(), "10s".into()),
        ],
        ..Setup::default()
    };
    let system = setup.start().await.expect("the shop starts");
    sqlx::query("UPDATE shop_stock SET quantity = $1 WHERE item = 'pen'")
        .bind(PENS)
        .execute(&pool)
        .await
        .unwrap();
    let chaos = Arc::new(Chaos {
        gateway: format!("http://{}", system.gateway.http_addr()),
        system,
        http: reqwest::Client::new(),
        run,
        broker,
        database,
        pool,
    });

    // The metrics are the process' own: count from here.
    let duplicates_before = chaos.metric(INBOX_TOTAL, "outcome=\"duplicate\"").await;

    // The clients, each taking the next order until all are placed.
    let placed = Arc::new(std::sync::Mutex::new(Placed::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (chaos, placed, next) = (chaos.clone(), placed.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let key = next.fetch_add(1, Ordering::SeqCst);
                    if key >= ORDERS {
                        return;
                    }
                    chaos.place(key, &placed).await;
                }
            })
        })
        .collect();

    // The faults, each once the clients got that far.
    let progress = async |share: usize| {
        let target = ORDERS * share / 100;
        eventually_within("the clients to make progress", Duration::from_secs(300), async || {
            (placed.lock().unwrap().accepted.len() >= target).then_some(())
        })
        .await;
    };
    progress(15).await;
    chaos.broker_outage().await;
    progress(40).await;
    chaos.kill_relay().await;
    progress(55).await;
    chaos.database.cut();
    progress(70).await;
    chaos.broker_outage().await;
    for client in clients {
        client.await.unwrap();
    }
    let placed = std::mem::take(&mut *placed.lock().unwrap());
    let accepted: BTreeSet<u64> = placed.accepted.values().copied().collect();
    assert_eq!(placed.accepted.len(), ORDERS, "every order was accepted in the end");
    assert_eq!(accepted.len(), ORDERS, "no two keys were answered with the same order");

    // Settled: nothing left to publish anywhere, every order at its end, every notification out.
    let orders = ORDERS as i64;
    eventually_within("the shop to settle", Duration::from_secs(300), async || {
        let unsent = chaos.scalar("SELECT count(*) FROM chassis_outbox WHERE sent_at IS NULL").await;
        let open = chaos
            .scalar("SELECT count(*) FROM shop_orders WHERE status = 'pending' OR (status = 'cancelled' AND paid AND NOT refunded)")
            .await;
        // One notification per order placed, paid, cancelled and refunded.
        let expected = chaos
            .scalar(
                "SELECT count(*) + count(*) FILTER (WHERE paid) + count(*) FILTER (WHERE status = 'cancelled')
                      + count(*) FILTER (WHERE refunded)
                 FROM shop_orders",
            )
            .await;
        let sent = chaos.scalar("SELECT count(*) FROM shop_notifications").await;
        // Every subscriber of OrderPlaced got to each one.
        let applied = chaos
            .scalar(&format!(
                "SELECT count(*) FROM chassis_processed_messages WHERE consumer LIKE '%:{}'",
                OrderPlaced::TYPE
            ))
            .await;
        (unsent == 0 && open == 0 && sent >= expected && applied >= 3 * orders).then_some(())
    })
    .await;

    // Every accepted order exists once; no order exists that was not accepted.
    let rows: Vec<i64> = sqlx::query_scalar("SELECT id FROM shop_orders ORDER BY id")
        .fetch_all(&chaos.pool)
        .await
        .unwrap();
    let rows: BTreeSet<u64> = rows.into_iter().map(|id| id as u64).collect();
    assert_eq!(rows, accepted, "the orders table holds exactly the accepted orders");

    // Each subscriber applied each OrderPlaced once.
    let once_per_order = [
        ("reservations", "SELECT count(DISTINCT id) FROM shop_reservations"),
        ("payments", "SELECT count(DISTINCT id) FROM shop_payments"),
        (
            "placed notifications",
            "SELECT count(DISTINCT text) FROM shop_notifications WHERE text LIKE '% placed: %'",
        ),
    ];
    for (what, distinct) in once_per_order {
        assert_eq!(chaos.scalar(distinct).await, orders, "{what}: one per order");
    }
    let notified_twice = chaos
        .scalar("SELECT count(*) FROM (SELECT text FROM shop_notifications GROUP BY text HAVING count(*) > 1) t")
        .await;
    assert_eq!(notified_twice, 0, "no notification was sent twice");
    for group in ["inventory", "payments", "notifications"] {
        let consumer = format!("{group}:{}", OrderPlaced::TYPE);
        let processed = chaos
            .scalar(&format!(
                "SELECT count(*) FROM chassis_processed_messages WHERE consumer = '{consumer}'"
            ))
            .await;
        assert_eq!(processed, orders, "{consumer} recorded each OrderPlaced once");
    }

    // The choreography reached a consistent end: stock and payments agree with the orders.
    let confirmed = chaos
        .scalar("SELECT count(*) FROM shop_orders WHERE status = 'confirmed'")
        .await;
    let reserved = chaos
        .scalar("SELECT count(*) FROM shop_reservations WHERE status = 'reserved'")
        .await;
    let pens_left = chaos
        .scalar("SELECT quantity::bigint FROM shop_stock WHERE item = 'pen'")
        .await;
    assert_eq!(reserved, PENS - pens_left, "the stock taken is the stock reserved");
    assert_eq!(confirmed, reserved, "an order is confirmed when its pen was reserved");
    let captured = chaos
        .scalar("SELECT count(*) FROM shop_payments WHERE status = 'captured'")
        .await;
    assert_eq!(captured, confirmed, "exactly the confirmed orders keep their payment");

    // What went through the broker.
    let published = chaos
        .scalar(&format!(
            "SELECT count(*) FROM chassis_outbox WHERE origin = '{}/orders'",
            chaos.run
        ))
        .await;
    assert_eq!(published, orders, "one OrderPlaced per order went through the outbox");
    let events = chaos.scalar("SELECT count(*) FROM chassis_outbox").await;
    let duplicates = chaos.metric(INBOX_TOTAL, "outcome=\"duplicate\"").await - duplicates_before;
    let system = &chaos.system;
    let mut dead_letters = 0;
    for (service, group) in [
        (&system.inventory, "inventory"),
        (&system.payments, "payments"),
        (&system.notifications, "notifications"),
        (&system.orders, "orders"),
    ] {
        dead_letters += chaos.dead_letters(service, group).await;
    }
    println!(
        "{name}: {ORDERS} orders ({confirmed} confirmed), {} attempts answered with an error, {} abandoned, \
         {} accepted on a replay; {events} events published through the outboxes, {duplicates} duplicate \
         deliveries absorbed by the inboxes, {dead_letters} dead letters",
        placed.failed_answers, placed.abandoned, placed.replayed
    );
    assert_eq!(dead_letters, 0, "nothing was dead-lettered");

    let chaos = Arc::into_inner(chaos).expect("the clients are done");
    chaos.system.stop().await;
    // Straight to the broker, past the proxy: the run's durable queues and streams go.
    delete_broker_namespace(transport, &broker_url, &chaos.run)
        .await
        .expect("the run's namespace deleted from the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_order_lost_or_doubled_through_outages_over_rabbitmq() {
    let url = backend_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    chaos("RabbitMQ", "amqp", url, 5672).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_order_lost_or_doubled_through_outages_over_nats() {
    let url = backend_url("NATS_URL", "nats://127.0.0.1:4222");
    chaos("NATS", "nats", url, 4222).await;
}
