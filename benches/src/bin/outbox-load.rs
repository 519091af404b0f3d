//! The outbox relay's throughput over RabbitMQ and NATS, side by side with publishing the same
//! messages without an outbox, in one run:
//! `cargo run --release -p chassis-benches --bin outbox-load -- [messages]`.
//!
//! For each broker, `messages` events of about 60 bytes go out three ways, each measured from
//! the first publish to the last confirmation:
//!
//! - `Bus::publish`, one at a time: what a service does without an outbox (one confirmed round
//!   trip per message);
//! - `Transport::publish_batch` in chunks of `outbox.max_in_flight` (128): the broker's pipelined
//!   ceiling, which the relay uses;
//! - the relay: the rows are first written with `Outbox::add` (100 per transaction; that rate is
//!   printed too), then the relay publishes them and marks them sent; the clock stops when the
//!   last row is marked.
//!
//! Nothing consumes the messages; the brokers confirm them once stored (NATS) or routed
//! (RabbitMQ, to an exchange without queues). Needs PostgreSQL (`DATABASE_URL`), NATS
//! (`NATS_URL`) and RabbitMQ (`AMQP_URL`) on their default local ports otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chassis::messaging::{
    AmqpTransport, Bus, Event, Kind, Message, MessagingConfig, NatsTransport, Outgoing, RawMessage, Transport,
};
use chassis::outbox::{Outbox, OutboxConfig, Relay};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(serde::Serialize, serde::Deserialize)]
struct Tick {
    n: u64,
    note: String,
}

impl Message for Tick {
    const TYPE: &'static str = "bench.outbox.tick";
}
impl Event for Tick {}

fn tick(n: u64) -> Tick {
    Tick {
        n,
        note: "an event of about sixty bytes".into(),
    }
}

fn env(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

fn rate(messages: usize, elapsed: Duration) -> f64 {
    messages as f64 / elapsed.as_secs_f64()
}

async fn one_by_one(transport: Arc<dyn Transport>, config: &MessagingConfig, messages: usize) -> f64 {
    let bus = Bus::from_arc(transport, "bench", config.clone());
    let started = Instant::now();
    for n in 0..messages {
        bus.publish(&tick(n as u64)).await.expect("publish");
    }
    rate(messages, started.elapsed())
}

async fn batched(transport: Arc<dyn Transport>, messages: usize, chunk: usize) -> f64 {
    let outgoing: Vec<Outgoing> = (0..messages)
        .map(|n| Outgoing {
            kind: Kind::Event,
            message_type: Tick::TYPE.to_owned(),
            message: RawMessage {
                headers: vec![
                    ("ce-id".into(), uuid::Uuid::now_v7().to_string()),
                    ("ce-source".into(), "bench".into()),
                    ("ce-type".into(), Tick::TYPE.into()),
                    ("ce-specversion".into(), "1.0".into()),
                    ("content-type".into(), "application/json".into()),
                ],
                body: serde_json::to_vec(&tick(n as u64)).expect("json").into(),
            },
        })
        .collect();
    let started = Instant::now();
    for part in outgoing.chunks(chunk) {
        let (confirmed, failure) = transport.publish_batch(part).await;
        assert!(
            failure.is_none() && confirmed == part.len(),
            "batch failed: {failure:?}"
        );
    }
    rate(messages, started.elapsed())
}

/// Writes `messages` rows for `namespace`'s service `bench`, then runs a relay until every one
/// is marked sent. Answers (rows written per second, rows relayed per second).
async fn relayed(pool: &PgPool, transport: Arc<dyn Transport>, namespace: &str, messages: usize) -> (f64, f64) {
    let outbox = Outbox::new("bench", namespace);
    let started = Instant::now();
    for chunk in (0..messages).collect::<Vec<_>>().chunks(100) {
        let mut tx = pool.begin().await.expect("begin");
        for n in chunk {
            outbox.add(&mut tx, &tick(*n as u64)).await.expect("outbox add");
        }
        tx.commit().await.expect("commit");
    }
    let written = rate(messages, started.elapsed());

    let origin = format!("{namespace}/bench");
    let stop = CancellationToken::new();
    let relay = Relay::new(pool.clone(), transport, OutboxConfig::default(), namespace, "bench");
    let started = Instant::now();
    let running = tokio::spawn(relay.run(stop.clone()));
    loop {
        let unsent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM chassis_outbox WHERE origin = $1 AND sent_at IS NULL")
                .bind(&origin)
                .fetch_one(pool)
                .await
                .expect("count");
        if unsent == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{unsent} rows still unsent"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let relayed = rate(messages, started.elapsed());
    stop.cancel();
    let _ = running.await;
    sqlx::query("DELETE FROM chassis_outbox WHERE origin = $1")
        .bind(&origin)
        .execute(pool)
        .await
        .expect("clean up");
    (written, relayed)
}

async fn broker(name: &str, transport: Arc<dyn Transport>, config: &MessagingConfig, pool: &PgPool, messages: usize) {
    let chunk = OutboxConfig::default().max_in_flight as usize;
    let single = one_by_one(transport.clone(), config, messages).await;
    let batch = batched(transport.clone(), messages, chunk).await;
    let (written, relay) = relayed(pool, transport, &config.namespace, messages).await;
    println!(
        "| {name} | {messages} | {single:.0} | {batch:.0} | {relay:.0} | {:.2} | {:.1} | {written:.0} |",
        relay / batch,
        relay / single
    );
}

#[tokio::main]
async fn main() {
    let messages: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(5000);
    let namespace = format!("bench{}", std::process::id());
    let mut config = MessagingConfig::default();
    config.namespace = namespace.clone();
    let pool = PgPool::connect(&env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"))
        .await
        .expect("PostgreSQL");
    chassis::storage::migrate(&pool, &[chassis::outbox::OUTBOX_MIGRATION])
        .await
        .expect("the outbox table");

    println!(
        "| broker | messages | `Bus::publish` one by one (msg/s) | `publish_batch` of 128 (msg/s) | relay (msg/s) | relay / batch | relay / one by one | `Outbox::add`, 100 per transaction (rows/s) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let (nats_url, amqp_url) = (
        env("NATS_URL", "nats://127.0.0.1:4222"),
        env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
    );
    let nats = NatsTransport::connect(&nats_url, &config).await.expect("NATS");
    broker("NATS JetStream", Arc::new(nats), &config, &pool, messages).await;
    chassis_benches::delete_namespace("nats", &nats_url, &namespace).await;
    let amqp = AmqpTransport::connect(&amqp_url, &config).await.expect("RabbitMQ");
    broker("RabbitMQ", Arc::new(amqp), &config, &pool, messages).await;
    chassis_benches::delete_namespace("amqp", &amqp_url, &namespace).await;
}
