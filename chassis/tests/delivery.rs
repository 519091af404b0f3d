//! The delivery guarantees against the real servers (DATABASE_URL, NATS_URL, AMQP_URL; under
//! CI=true an unreachable server fails the test), with faults injected from outside the
//! client: a TCP proxy in front of the broker, a PostgreSQL session terminated by the server,
//! a consumer deleted on the broker, cancelled requests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use chassis::messaging::{Bus, Event, Incoming, Kind, Message, MessagingConfig, Transport};
use chassis::runtime::{Options, RunningService, StartError};
use chassis::storage::Transaction;
use chassis::testing::{Fault, FaultProxy, backend, backend_url, delete_broker_namespace, eventually, reachable};
use serde::{Deserialize, Serialize};
use sqlx::{AssertSqlSafe, PgPool};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Placed {
    n: i32,
}

impl Message for Placed {
    const TYPE: &'static str = "delivery.placed";
}
impl Event for Placed {}

fn postgres_url() -> String {
    backend_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
}

fn nats_url() -> String {
    backend_url("NATS_URL", "nats://127.0.0.1:4222")
}

/// The URL of `transport`'s broker, or `None` when it is unreachable and the test may skip.
async fn broker(transport: &str) -> Option<String> {
    let (name, url, port) = match transport {
        "nats" => ("NATS", nats_url(), 4222),
        _ => ("RabbitMQ", amqp_url(), 5672),
    };
    backend(name, reachable(&url, port)).await.map(|()| url)
}

fn amqp_url() -> String {
    backend_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// The `host:port` of a URL.
fn authority(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit('@').next().unwrap_or(host).to_owned()
}

async fn postgres() -> Option<PgPool> {
    backend("PostgreSQL", PgPool::connect(&postgres_url())).await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Deletes what a test's services declared on `transport`'s broker under `namespace`, so that
/// runs leave no durable queues or streams behind on a shared broker.
async fn delete_namespace(transport: &str, url: &str, namespace: &str) {
    delete_broker_namespace(transport, url, namespace)
        .await
        .unwrap_or_else(|error| panic!("deleting {namespace} on {transport}: {error}"));
}

/// Runs `check` against a transport connected to the broker of `transport` (`"nats"` or
/// `"amqp"`) with [`strict`] settings in a namespace of its own, then deletes the namespace.
async fn on_broker<F: Future<Output = ()>>(
    transport: &str,
    check: impl FnOnce(Arc<dyn Transport>, MessagingConfig) -> F,
) {
    let Some(url) = broker(transport).await else { return };
    let config = strict(&unique("t"));
    let connected: Arc<dyn Transport> = match transport {
        "nats" => Arc::new(chassis::messaging::NatsTransport::connect(&url, &config).await.unwrap()),
        _ => Arc::new(chassis::messaging::AmqpTransport::connect(&url, &config).await.unwrap()),
    };
    check(connected, config.clone()).await;
    delete_namespace(transport, &url, &config.namespace).await;
}

/// Test options for a service on `transport` at `url`, with PostgreSQL.
fn options(transport: &str, url: &str, namespace: &str) -> Options {
    let (transport, url, namespace, postgres) = (
        transport.to_owned(),
        url.to_owned(),
        namespace.to_owned(),
        postgres_url(),
    );
    chassis::testing::options().configure(move |loader| {
        loader
            .set("postgres.url", postgres)
            .set("messaging.transport", transport)
            .set("messaging.url", url)
            .set("messaging.namespace", namespace)
            .set("messaging.ack_wait", "2s")
            .set("messaging.retry_base_delay", "20ms")
            .set("messaging.retry_max_delay", "100ms")
            .set("outbox.poll_interval", "200ms")
            .set("outbox.retry_base_delay", "50ms")
            .set("outbox.retry_max_delay", "500ms")
            .set("outbox.lag_warning", "1s")
            .set("shutdown.grace_period", "5s")
    })
}

/// A service whose `POST /place/{n}` writes row `n` and an outbox message in one transaction
/// (`POST /abandon/{n}` does the same and rolls back), and whose consumer applies each message
/// through the inbox to `{table}_applied`.
async fn outbox_service(options: Options, table: &str) -> RunningService {
    let table = table.to_owned();
    chassis::testing::spawn_with(options, move |ctx: chassis::Context<()>| async move {
        let pool = ctx.postgres()?.clone();
        for ddl in [
            format!("CREATE TABLE IF NOT EXISTS {table} (n INTEGER PRIMARY KEY)"),
            format!("CREATE TABLE IF NOT EXISTS {table}_applied (n INTEGER NOT NULL, message_id TEXT NOT NULL)"),
        ] {
            sqlx::query(AssertSqlSafe(ddl)).execute(&pool).await?;
        }
        let applied = format!("INSERT INTO {table}_applied (n, message_id) VALUES ($1, $2)");
        let handler = ctx
            .inbox()?
            .handler("applier", move |incoming: Incoming<Placed>, tx: Transaction| {
                let applied = applied.clone();
                async move {
                    let mut connection = tx.lock().await?;
                    sqlx::query(AssertSqlSafe(applied))
                        .bind(incoming.message.n)
                        .bind(&incoming.envelope.id)
                        .execute(&mut *connection)
                        .await?;
                    Ok::<_, chassis::Error>(())
                }
            });
        ctx.subscribe("applier", handler).await?;
        let state = Shop {
            pool,
            outbox: ctx.outbox()?,
            insert: Arc::from(format!("INSERT INTO {table} (n) VALUES ($1)")),
        };
        Ok(Router::new()
            .route("/place/{n}", post(place))
            .route("/abandon/{n}", post(abandon))
            .with_state(state))
    })
    .await
}

#[derive(Clone)]
struct Shop {
    pool: PgPool,
    outbox: chassis::outbox::Outbox,
    insert: Arc<str>,
}

async fn write(shop: &Shop, n: i32) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StatusCode> {
    let unavailable = |error: sqlx::Error| {
        eprintln!("writing order {n} failed: {error}");
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut tx = shop.pool.begin().await.map_err(unavailable)?;
    sqlx::query(AssertSqlSafe(shop.insert.to_string()))
        .bind(n)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    shop.outbox
        .add_with(
            &mut tx,
            &Placed { n },
            chassis::messaging::Publish {
                subject: Some("orders".into()),
                caused_by: None,
            },
        )
        .await
        .map_err(|error| {
            eprintln!("adding order {n} to the outbox failed: {error}");
            StatusCode::SERVICE_UNAVAILABLE
        })?;
    Ok(tx)
}

async fn place(State(shop): State<Shop>, Path(n): Path<i32>) -> StatusCode {
    match write(&shop, n).await {
        Ok(tx) => match tx.commit().await {
            Ok(()) => StatusCode::CREATED,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        },
        Err(status) => status,
    }
}

async fn abandon(State(shop): State<Shop>, Path(n): Path<i32>) -> StatusCode {
    match write(&shop, n).await {
        Ok(tx) => match tx.rollback().await {
            Ok(()) => StatusCode::OK,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        },
        Err(status) => status,
    }
}

/// How many times each `n` was applied, for `n` in `range`.
async fn applied(pool: &PgPool, table: &str, range: std::ops::Range<i32>) -> Vec<i64> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT n, count(*) FROM {table}_applied GROUP BY n ORDER BY n"
    )))
    .fetch_all(pool)
    .await
    .unwrap();
    range
        .map(|n| rows.iter().find(|(m, _)| *m == n).map_or(0, |(_, c)| *c))
        .collect()
}

async fn send_post(url: String) -> u16 {
    reqwest::Client::new()
        .post(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn drop_tables(pool: &PgPool, table: &str) {
    for t in [table.to_owned(), format!("{table}_applied")] {
        let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {t}")))
            .execute(pool)
            .await;
    }
}

/// Committed messages are published and applied once; rolled-back ones never.
async fn committed_only(transport: &str, url: &str) {
    let Some(pool) = postgres().await else { return };
    let (table, namespace) = (unique("outbox_commit"), unique("t"));
    let service = outbox_service(options(transport, url, &namespace), &table).await;
    let base = format!("http://{}", service.http_addr());
    for n in 0..20 {
        assert_eq!(send_post(format!("{base}/place/{n}")).await, 201);
    }
    assert_eq!(send_post(format!("{base}/abandon/100")).await, 200);
    // A marker committed after the rolled-back message: once it is applied, the rolled-back one
    // would have been too.
    assert_eq!(send_post(format!("{base}/place/21")).await, 201);
    eventually("every committed message to be applied", async || {
        (applied(&pool, &table, 0..22).await.iter().filter(|c| **c == 1).count() == 21).then_some(())
    })
    .await;
    assert_eq!(
        applied(&pool, &table, 100..101).await,
        [0],
        "the rolled-back message was never published"
    );
    assert_eq!(applied(&pool, &table, 0..22).await[20], 0, "20 was never written");
    service.stop().await;
    drop_tables(&pool, &table).await;
    delete_namespace(transport, url, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_publishes_committed_messages_only_over_memory() {
    committed_only("memory", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_publishes_committed_messages_only_over_nats() {
    let Some(url) = broker("nats").await else { return };
    committed_only("nats", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_publishes_committed_messages_only_over_rabbitmq() {
    let Some(url) = broker("amqp").await else { return };
    committed_only("amqp", &url).await;
}

/// Two replicas write orders while the broker is unreachable twice and the relay's PostgreSQL
/// session is killed: every committed message is applied exactly once in the end.
async fn survives_outages(transport: &str, url: &str) {
    let Some(pool) = postgres().await else { return };
    let proxy = FaultProxy::start(authority(url)).await;
    let proxied = proxy.url(url);
    let (table, namespace) = (unique("outbox_outage"), unique("t"));
    let a = outbox_service(options(transport, &proxied, &namespace), &table).await;
    let b = outbox_service(options(transport, &proxied, &namespace), &table).await;
    let (base_a, base_b) = (format!("http://{}", a.http_addr()), format!("http://{}", b.http_addr()));
    let place = |n: i32| {
        let base = if n % 2 == 0 { base_a.clone() } else { base_b.clone() };
        async move { assert_eq!(send_post(format!("{base}/place/{n}")).await, 201, "order {n}") }
    };
    for n in 0..30 {
        place(n).await;
    }
    proxy.set(Fault::Unreachable);
    // Orders keep being accepted: they only need PostgreSQL.
    for n in 30..60 {
        place(n).await;
    }
    let ready = |service: &RunningService| format!("http://{}/health/ready", service.admin_addr());
    eventually("readiness to warn about the outbox's lag", async || {
        let report: serde_json::Value = reqwest::get(ready(&a)).await.ok()?.json().await.ok()?;
        (report["checks"]["outbox:lag"][0]["status"] == "warn").then_some(())
    })
    .await;
    proxy.set(Fault::None);
    // The relay's session dies under it (as with a crash or a failover); the other replica, or
    // this one once reconnected, takes over.
    let killed: Vec<(bool,)> =
        sqlx::query_as("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1")
            .bind(format!("{} {namespace}/%", chassis::outbox::RELAY_APPLICATION_NAME))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(!killed.is_empty(), "a relay session was running");
    for n in 60..80 {
        place(n).await;
    }
    proxy.set(Fault::Unreachable);
    for n in 80..90 {
        place(n).await;
    }
    proxy.cut();
    proxy.set(Fault::None);
    for n in 90..100 {
        place(n).await;
    }
    eventually("every order to be applied", async || {
        (!applied(&pool, &table, 0..100).await.contains(&0)).then_some(())
    })
    .await;
    let counts = applied(&pool, &table, 0..100).await;
    assert!(counts.iter().all(|c| *c == 1), "applied exactly once each: {counts:?}");
    let unsent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM chassis_outbox WHERE origin LIKE $1 AND sent_at IS NULL")
            .bind(format!("{namespace}/%"))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unsent, 0, "nothing is left pending");
    a.stop().await;
    b.stop().await;
    drop_tables(&pool, &table).await;
    delete_namespace(transport, url, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_and_inbox_survive_broker_outages_and_a_killed_relay_over_nats() {
    let Some(url) = broker("nats").await else { return };
    survives_outages("nats", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_and_inbox_survive_broker_outages_and_a_killed_relay_over_rabbitmq() {
    let Some(url) = broker("amqp").await else { return };
    survives_outages("amqp", &url).await;
}

/// The payments service of the idempotency tests: `POST /payments` writes a row in the
/// request's transaction; `x-fail: 1` answers 500 after writing, `x-hold: 1` waits for the
/// test to let it finish.
async fn payments(table: &str, gate: Arc<tokio::sync::Semaphore>, entered: Arc<tokio::sync::Notify>) -> RunningService {
    let table = table.to_owned();
    let options = options("memory", "", &unique("t"));
    chassis::testing::spawn_with(options, move |ctx: chassis::Context<()>| async move {
        let pool = ctx.postgres()?.clone();
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {table} (id BIGSERIAL PRIMARY KEY, key TEXT NOT NULL)"
        )))
        .execute(&pool)
        .await?;
        let insert: Arc<str> = Arc::from(format!("INSERT INTO {table} (key) VALUES ($1)"));
        let store = chassis::idempotency::PostgresStore::from_pool(pool);
        let layer = chassis::idempotency::IdempotencyLayer::transactional(store, Default::default())?;
        let pay = move |tx: Transaction, headers: axum::http::HeaderMap| {
            let (insert, gate, entered) = (insert.clone(), gate.clone(), entered.clone());
            async move {
                let key = headers["idempotency-key"].to_str().unwrap().to_owned();
                {
                    let mut connection = tx.lock().await.unwrap();
                    sqlx::query(AssertSqlSafe(insert.to_string()))
                        .bind(&key)
                        .execute(&mut *connection)
                        .await
                        .unwrap();
                }
                if headers.contains_key("x-hold") {
                    entered.notify_one();
                    let _ = gate.acquire().await.unwrap();
                }
                if headers.contains_key("x-fail") {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                StatusCode::CREATED
            }
        };
        Ok(Router::new().route("/payments", post(pay)).layer(layer))
    })
    .await
}

async fn rows(pool: &PgPool, table: &str, key: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {table} WHERE key LIKE $1")))
        .bind(format!("%-{key}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_request_takes_effect_once_whether_it_fails_is_cancelled_or_is_retried() {
    let Some(pool) = postgres().await else { return };
    let table = unique("payments");
    let (gate, entered) = (
        Arc::new(tokio::sync::Semaphore::new(0)),
        Arc::new(tokio::sync::Notify::new()),
    );
    let service = payments(&table, gate.clone(), entered.clone()).await;
    let url = format!("http://{}/payments", service.http_addr());
    let http = reqwest::Client::new();
    let run = unique("k");
    let send = |key: &str, extra: Option<&str>| {
        let mut request = http.post(&url).header("idempotency-key", format!("{run}-{key}"));
        if let Some(header) = extra {
            request = request.header(header, "1");
        }
        request.send()
    };

    // A 5xx after the write rolls the write back and frees the key: the retry runs once.
    assert_eq!(send("k-fail", Some("x-fail")).await.unwrap().status(), 500);
    assert_eq!(
        rows(&pool, &table, "k-fail").await,
        0,
        "the failed request left nothing"
    );
    assert_eq!(send("k-fail", None).await.unwrap().status(), 201);
    assert_eq!(send("k-fail", None).await.unwrap().status(), 201, "replayed");
    assert_eq!(rows(&pool, &table, "k-fail").await, 1);

    // The client gives up while the handler runs: the request is dropped with its transaction.
    let held = tokio::spawn(send("k-cancel", Some("x-hold")));
    entered.notified().await;
    held.abort();
    let _ = held.await;
    eventually("the cancelled request's key to be free", async || {
        let status = send("k-cancel", None).await.unwrap().status();
        (status == 201).then_some(())
    })
    .await;
    assert_eq!(
        rows(&pool, &table, "k-cancel").await,
        1,
        "the cancelled attempt left nothing"
    );
    assert_eq!(send("k-cancel", None).await.unwrap().status(), 201);
    assert_eq!(rows(&pool, &table, "k-cancel").await, 1, "and the retry is replayed");

    // A concurrent duplicate is answered 409 while the first holds the key, and replays it
    // once it committed.
    let held = tokio::spawn(send("k-busy", Some("x-hold")));
    entered.notified().await;
    let busy = send("k-busy", None).await.unwrap();
    assert_eq!(busy.status(), 409);
    assert!(busy.headers().contains_key("retry-after"));
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().unwrap().status(), 201);
    let replayed = send("k-busy", None).await.unwrap();
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");

    // Clients that give up at any point, even while the key is being claimed, leave nothing
    // behind that blocks the retry: it is accepted at once, not after the lease (60 s).
    for patience in 1..=20 {
        let request = http.post(&url).header("idempotency-key", format!("{run}-k-impatient"));
        let _ = request.timeout(Duration::from_millis(patience)).send().await;
    }
    eventually("an impatient client's retry to be accepted", async || {
        (send("k-impatient", None).await.unwrap().status() == 201).then_some(())
    })
    .await;
    assert_eq!(rows(&pool, &table, "k-impatient").await, 1);
    gate.add_permits(1);
    service.stop().await;
    let _ = sqlx::query(AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
        .execute(&pool)
        .await;
}

/// A bus on `transport` whose consumers give up after few attempts and deliveries.
fn strict(namespace: &str) -> MessagingConfig {
    let mut config = MessagingConfig::default();
    config.namespace = namespace.to_owned();
    config.max_attempts = 2;
    config.max_deliveries = 3;
    config.retry_base_delay = Duration::from_millis(10);
    config.retry_max_delay = Duration::from_millis(50);
    config.ack_wait = Duration::from_secs(1);
    config.concurrency = 1;
    config
}

/// A message whose handling kills its consumer every time (it is taken and never
/// acknowledged) is dead-lettered once it has been delivered `max_deliveries` times, and the
/// consumer goes on with the next message.
async fn poison(transport: Arc<dyn Transport>, config: MessagingConfig) {
    let bus = Bus::from_arc(transport.clone(), "tests", config.clone());
    // The group's queue exists before the messages are published.
    drop(
        transport
            .subscribe(Kind::Event, Placed::TYPE, "poisoned")
            .await
            .unwrap(),
    );
    bus.publish(&Placed { n: 1 }).await.unwrap();
    for _ in 0..config.max_deliveries {
        // A consumer that takes the message and dies before acknowledging it.
        let mut dying = transport
            .subscribe(Kind::Event, Placed::TYPE, "poisoned")
            .await
            .unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(20), dying.next())
            .await
            .expect("the message is delivered again")
            .unwrap()
            .unwrap();
        drop(delivery);
        drop(dying);
    }
    bus.publish(&Placed { n: 2 }).await.unwrap();
    let handled: Arc<Mutex<Vec<i32>>> = Arc::default();
    let h = handled.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    bus.subscribe(
        "poisoned",
        move |incoming: Incoming<Placed>| {
            let h = h.clone();
            async move {
                h.lock().unwrap().push(incoming.message.n);
                Ok::<_, String>(())
            }
        },
        stop.clone(),
    )
    .await
    .unwrap();
    eventually("the next message to be handled", async || {
        handled.lock().unwrap().contains(&2).then_some(())
    })
    .await;
    let letters = eventually("the poison message's dead letter", async || {
        let letters = transport.list_dead_letters("poisoned", 10).await.unwrap();
        (!letters.is_empty()).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].reason.contains("delivered"), "{:?}", letters[0].reason);
    assert!(letters[0].deliveries > config.max_deliveries, "{:?}", letters[0]);
    assert!(
        !handled.lock().unwrap().contains(&1),
        "the poison message never ran the handler"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_after_the_delivery_limit_in_memory() {
    poison(Arc::new(chassis::messaging::MemoryTransport::new()), strict("memory")).await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_after_the_delivery_limit_over_nats() {
    on_broker("nats", poison).await;
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_after_the_delivery_limit_over_rabbitmq() {
    on_broker("amqp", poison).await;
}

#[tokio::test]
async fn a_panicking_handler_is_retried_then_dead_lettered_and_the_consumer_goes_on() {
    let transport = Arc::new(chassis::messaging::MemoryTransport::new());
    let bus = Bus::from_arc(transport.clone(), "tests", strict("memory"));
    let attempts: Arc<Mutex<Vec<i32>>> = Arc::default();
    let a = attempts.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    bus.subscribe(
        "panicky",
        move |incoming: Incoming<Placed>| {
            let a = a.clone();
            async move {
                a.lock().unwrap().push(incoming.message.n);
                if incoming.message.n == 1 {
                    panic!("the handler cannot take order 1");
                }
                Ok::<_, String>(())
            }
        },
        stop.clone(),
    )
    .await
    .unwrap();
    bus.publish(&Placed { n: 1 }).await.unwrap();
    bus.publish(&Placed { n: 2 }).await.unwrap();
    eventually("the next message to be handled", async || {
        attempts.lock().unwrap().contains(&2).then_some(())
    })
    .await;
    let letters = transport.dead_letters();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].reason.contains("panicked"), "{}", letters[0].reason);
    assert_eq!(letters[0].attempts, 2, "max_attempts");
    assert_eq!(attempts.lock().unwrap().iter().filter(|n| **n == 1).count(), 2);
    stop.cancel();
}

#[tokio::test]
async fn a_consumer_whose_subscription_ends_subscribes_again() {
    let config = strict(&unique("t"));
    let Some(transport) = backend("NATS", chassis::messaging::NatsTransport::connect(&nats_url(), &config)).await
    else {
        return;
    };
    let jetstream = transport.jetstream().clone();
    let bus = Bus::from_arc(Arc::new(transport), "tests", config.clone());
    let handled: Arc<Mutex<Vec<i32>>> = Arc::default();
    let h = handled.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    bus.subscribe(
        "restarted",
        move |incoming: Incoming<Placed>| {
            let h = h.clone();
            async move {
                h.lock().unwrap().push(incoming.message.n);
                Ok::<_, String>(())
            }
        },
        stop.clone(),
    )
    .await
    .unwrap();
    bus.publish(&Placed { n: 1 }).await.unwrap();
    eventually("the first message", async || {
        handled.lock().unwrap().contains(&1).then_some(())
    })
    .await;
    // An operator deletes the consumer on the broker: the subscription ends under the service.
    let stream = jetstream
        .get_stream(format!("{}_EVENTS", config.namespace.to_uppercase()))
        .await
        .unwrap();
    assert!(
        stream
            .delete_consumer("restarted-delivery_placed")
            .await
            .unwrap()
            .success
    );
    // Published until one arrives: a message published before the consumer is made again is
    // not for it (a new event consumer starts with what is published after it).
    eventually("the consumer to be made again", async || {
        bus.publish(&Placed { n: 2 }).await.unwrap();
        handled.lock().unwrap().contains(&2).then_some(())
    })
    .await;
    stop.cancel();
    delete_namespace("nats", &nats_url(), &config.namespace).await;
}

#[tokio::test]
async fn an_unreachable_broker_at_start_is_an_error_within_the_connect_timeout() {
    // A server that accepts and never answers: the AMQP handshake would wait forever.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let options = chassis::testing::options().configure(move |loader| {
        loader
            .set("messaging.transport", "amqp")
            .set("messaging.url", format!("amqp://guest:guest@{address}/%2f"))
            .set("startup.connect_timeout", "2s")
    });
    let started = std::time::Instant::now();
    let error = chassis::start(options, |_: chassis::Context<()>| async { Ok(Router::new()) })
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(&error, StartError::Unreachable { key, .. } if key == "messaging.url"),
        "{error}"
    );
    assert!(error.to_string().contains("message broker"), "{error}");
    assert!(
        waited >= Duration::from_secs(2),
        "it kept trying for the timeout: {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "and not much longer: {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_rows_past_their_time_and_keeps_the_rest() {
    let Some(pool) = postgres().await else { return };
    // The tables exist once a service with PostgreSQL has started.
    let options = options("memory", "", &unique("t")).configure(|loader| {
        loader
            .set("retention.interval", "1s")
            .set("retention.processed_messages", "1h")
            .set("retention.outbox", "1h")
            .set("retention.sagas", "1h")
    });
    let service = chassis::testing::spawn_with(options, |_: chassis::Context<()>| async { Ok(Router::new()) }).await;
    let run = unique("r");
    let old = "now() - interval '2 hours'";
    for (table, old_row, new_row) in [
        (
            "chassis_processed_messages",
            format!(
                "INSERT INTO chassis_processed_messages (consumer, message_id, processed_at) VALUES ('{run}', 'old', {old})"
            ),
            format!("INSERT INTO chassis_processed_messages (consumer, message_id) VALUES ('{run}', 'new')"),
        ),
        (
            "chassis_outbox",
            format!(
                "INSERT INTO chassis_outbox (origin, id, kind, message_type, headers, body, sent_at) VALUES ('{run}', '{run}-old', 'event', '{run}', '[]', '', {old})"
            ),
            format!(
                "INSERT INTO chassis_outbox (origin, id, kind, message_type, headers, body, sent_at) VALUES ('{run}', '{run}-new', 'event', '{run}', '[]', '', now())"
            ),
        ),
        (
            "chassis_sagas",
            format!(
                "INSERT INTO chassis_sagas (saga, id, status, step, data, version, updated_at) VALUES ('{run}', 'old', 'completed', 1, '{{}}', 1, {old})"
            ),
            format!(
                "INSERT INTO chassis_sagas (saga, id, status, step, data, version, updated_at) VALUES ('{run}', 'failed', 'failed', 1, '{{}}', 1, {old})"
            ),
        ),
        (
            "chassis_idempotency",
            format!(
                "INSERT INTO chassis_idempotency (key, fingerprint, token, state, expires_at) VALUES ('{run}-old', 'f', 't', 'done', now() - interval '1 second')"
            ),
            format!(
                "INSERT INTO chassis_idempotency (key, fingerprint, token, state, expires_at) VALUES ('{run}-new', 'f', 't', 'done', now() + interval '1 hour')"
            ),
        ),
    ] {
        for row in [old_row, new_row] {
            sqlx::query(AssertSqlSafe(row))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{table}: {e}"));
        }
    }
    let count = |sql: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let remaining = || async {
        (
            count(format!(
                "SELECT count(*) FROM chassis_processed_messages WHERE consumer = '{run}'"
            ))
            .await,
            count(format!(
                "SELECT count(*) FROM chassis_outbox WHERE message_type = '{run}'"
            ))
            .await,
            count(format!("SELECT count(*) FROM chassis_sagas WHERE saga = '{run}'")).await,
            count(format!(
                "SELECT count(*) FROM chassis_idempotency WHERE key LIKE '{run}-%'"
            ))
            .await,
        )
    };
    eventually("the old rows to be deleted", async || {
        (remaining().await == (1, 1, 1, 1)).then_some(())
    })
    .await;
    assert_eq!(
        count(format!(
            "SELECT count(*) FROM chassis_sagas WHERE saga = '{run}' AND status = 'failed'"
        ))
        .await,
        1,
        "a failed saga stays for an operator"
    );
    service.stop().await;
}

async fn dead_letters_through_the_admin_port(transport: &str, url: &str) {
    let namespace = unique("t");
    let options = chassis::testing::options().configure({
        let (transport, url, namespace) = (transport.to_owned(), url.to_owned(), namespace.clone());
        move |loader| {
            loader
                .set("messaging.transport", transport)
                .set("messaging.url", url)
                .set("messaging.namespace", namespace)
                .set("messaging.max_attempts", 1)
                .set("messaging.retry_base_delay", "10ms")
        }
    });
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled: Arc<Mutex<Vec<i32>>> = Arc::default();
    let (f, h) = (fixed.clone(), handled.clone());
    let service = chassis::testing::spawn_with(options, move |ctx: chassis::Context<()>| async move {
        let handler = move |incoming: Incoming<Placed>| {
            let (f, h) = (f.clone(), h.clone());
            async move {
                if !f.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(format!("order {} cannot be handled yet", incoming.message.n));
                }
                h.lock().unwrap().push(incoming.message.n);
                Ok(())
            }
        };
        ctx.subscribe("fragile", handler).await?;
        // A second group that handles everything: a replay must not reach it again.
        ctx.subscribe("steady", |_: Incoming<Placed>| async { Ok::<_, String>(()) })
            .await?;
        for n in 1..=3 {
            ctx.bus().publish(&Placed { n }).await?;
        }
        Ok(Router::new())
    })
    .await;
    let admin = format!("http://{}/dead-letters/fragile", service.admin_addr());
    let letters: Vec<serde_json::Value> = eventually("three dead letters", async || {
        let letters: Vec<serde_json::Value> = reqwest::get(&admin).await.ok()?.json().await.ok()?;
        (letters.len() == 3).then_some(letters)
    })
    .await;
    assert!(
        letters
            .iter()
            .all(|l| l["reason"].as_str().unwrap().contains("cannot be handled yet")),
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .all(|l| l["message_type"] == Placed::TYPE && l["kind"] == "event")
    );
    // The bug is fixed; one dead letter is replayed by id, then the rest.
    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    let first = letters[0]["id"].as_str().unwrap().to_owned();
    let http = reqwest::Client::new();
    let replayed: serde_json::Value = http
        .post(format!("{admin}/replay"))
        .json(&serde_json::json!({ "ids": [first] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 1);
    eventually("the replayed message to be handled", async || {
        (handled.lock().unwrap().len() == 1).then_some(())
    })
    .await;
    let replayed: serde_json::Value = http
        .post(format!("{admin}/replay"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 2);
    eventually("every message to be handled", async || {
        let mut handled = handled.lock().unwrap().clone();
        handled.sort();
        (handled == [1, 2, 3]).then_some(())
    })
    .await;
    let left: Vec<serde_json::Value> = reqwest::get(&admin).await.unwrap().json().await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    let steady: Vec<serde_json::Value> = reqwest::get(format!("http://{}/dead-letters/steady", service.admin_addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(steady.is_empty());
    service.stop().await;
    delete_namespace(transport, url, &namespace).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_in_memory() {
    dead_letters_through_the_admin_port("memory", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_over_nats() {
    let Some(url) = broker("nats").await else { return };
    dead_letters_through_the_admin_port("nats", &url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_over_rabbitmq() {
    let Some(url) = broker("amqp").await else { return };
    dead_letters_through_the_admin_port("amqp", &url).await;
}

/// The delivery counts a message in hand comes with when the connections of `instances`
/// instances of a group, each running `consumers` consumers, are cut `cuts` times through a
/// proxy: one entry per delivery that reached a handler. `None` when RabbitMQ is unreachable
/// and the test may skip.
async fn counts_through_cuts(instances: usize, consumers: usize, cuts: u32) -> Option<Vec<u32>> {
    let url = broker("amqp").await?;
    let proxy = FaultProxy::start(authority(&url)).await;
    let mut config = strict(&unique("t"));
    // Idle consumers beside the one holding the message: the broker may hand a returned
    // message to any of them.
    config.concurrency = consumers;
    // Above any count the cuts can reach: a message dead-lettered unhandled would end the run
    // with fewer deliveries than expected.
    config.max_deliveries = (instances as u32 * consumers as u32 + 1) * cuts;
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut buses = Vec::new();
    for _ in 0..instances {
        let transport = chassis::messaging::AmqpTransport::connect(&proxy.url(&url), &config)
            .await
            .unwrap();
        let bus = Bus::from_arc(Arc::new(transport), "tests", config.clone());
        let s = seen.clone();
        bus.subscribe(
            "counted",
            move |incoming: Incoming<Placed>| {
                let s = s.clone();
                async move {
                    let deliveries = {
                        let mut seen = s.lock().unwrap();
                        seen.push(incoming.delivered);
                        seen.len() as u32
                    };
                    if deliveries <= cuts {
                        // In hand when the connection goes: never finished.
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, String>(())
                }
            },
            stop.clone(),
        )
        .await
        .unwrap();
        buses.push(bus);
    }
    buses[0].publish(&Placed { n: 1 }).await.unwrap();
    let reached = async |deliveries: u32| {
        eventually("the message in a handler", async || {
            (seen.lock().unwrap().len() as u32 >= deliveries).then_some(())
        })
        .await;
    };
    for cut in 1..=cuts {
        reached(cut).await;
        proxy.cut();
    }
    reached(cuts + 1).await;
    let letters = buses[0].transport().list_dead_letters("counted", 10).await.unwrap();
    assert!(letters.is_empty(), "nothing dead-lettered: {letters:?}");
    stop.cancel();
    delete_namespace("amqp", &url, &config.namespace).await;
    Some(seen.lock().unwrap().clone())
}

/// A lost connection counts once against `messaging.max_deliveries`, however many consumers
/// of the group were on it: the message in hand at each cut comes again with its delivery
/// count one higher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lost_connection_counts_one_delivery_over_rabbitmq() {
    let Some(counts) = counts_through_cuts(1, 8, 4).await else {
        return;
    };
    assert_eq!(counts, vec![1, 2, 3, 4, 5], "one delivery more per lost connection");
}

/// When the connections of several instances are lost together, the broker may hand the
/// returned message to another instance's consumer before it ends that one too: a cut counts
/// at most once per instance, not once per consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_of_several_instances_counts_at_most_once_per_instance_over_rabbitmq() {
    const INSTANCES: u32 = 3;
    let Some(counts) = counts_through_cuts(INSTANCES as usize, 4, 3).await else {
        return;
    };
    assert_eq!(counts[0], 1, "{counts:?}");
    for step in counts.windows(2) {
        let added = step[1] - step[0];
        assert!((1..=INSTANCES).contains(&added), "a cut added {added}: {counts:?}");
    }
}

/// A delivery dropped without an acknowledgement while its consumer goes on (the dead letter
/// could not be stored, say) comes again to the group, counted once more.
async fn dropped_unacknowledged(transport: Arc<dyn Transport>, config: MessagingConfig) {
    let mut subscription = transport
        .subscribe(Kind::Event, Placed::TYPE, "dropping")
        .await
        .unwrap();
    Bus::from_arc(transport.clone(), "tests", config)
        .publish(&Placed { n: 1 })
        .await
        .unwrap();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), subscription.next())
            .await
            .expect("a delivery")
            .expect("the subscription goes on")
            .unwrap()
    };
    let first = next().await;
    assert_eq!(first.delivered, 1);
    drop(first);
    let again = next().await;
    assert_eq!(again.delivered, 2, "the same message, counted once more");
    assert_eq!(serde_json::from_slice::<Placed>(&again.message.body).unwrap().n, 1);
    again.ack().await.unwrap();
}

#[tokio::test]
async fn a_delivery_dropped_unacknowledged_comes_again_in_memory() {
    dropped_unacknowledged(Arc::new(chassis::messaging::MemoryTransport::new()), strict("memory")).await;
}

#[tokio::test]
async fn a_delivery_dropped_unacknowledged_comes_again_over_nats() {
    on_broker("nats", dropped_unacknowledged).await;
}

#[tokio::test]
async fn a_delivery_dropped_unacknowledged_comes_again_over_rabbitmq() {
    on_broker("amqp", dropped_unacknowledged).await;
}
