//! Publish-to-consume throughput and latency of each transport over loopback:
//! `cargo run --release -p chassis-benches --bin messaging-load -- [messages]`.
//!
//! One group with the default concurrency consumes what one publisher sends as fast as the
//! broker confirms; latency is from the publish call to the handler, per message.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis::messaging::{
    AmqpTransport, Bus, Event, Incoming, MemoryTransport, Message, MessagingConfig, NatsTransport, Transport,
};
use tokio_util::sync::CancellationToken;

#[derive(serde::Serialize, serde::Deserialize)]
struct Tick {
    sent_nanos: u64,
}

impl Message for Tick {
    const TYPE: &'static str = "bench.tick";
}
impl Event for Tick {}

async fn run(name: &str, transport: Arc<dyn Transport>, config: MessagingConfig, messages: usize) {
    let bus = Bus::from_arc(transport, "bench", config);
    let origin = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(messages)));
    let stop = CancellationToken::new();
    let l = latencies.clone();
    bus.subscribe(
        "bench",
        move |incoming: Incoming<Tick>| {
            let l = l.clone();
            async move {
                let now = origin.elapsed().as_nanos() as u64;
                l.lock().unwrap().push(now.saturating_sub(incoming.message.sent_nanos));
                Ok::<_, String>(())
            }
        },
        stop.clone(),
    )
    .await
    .expect("subscribe");
    let started = Instant::now();
    for _ in 0..messages {
        let tick = Tick {
            sent_nanos: origin.elapsed().as_nanos() as u64,
        };
        bus.publish(&tick).await.expect("publish");
    }
    while latencies.lock().unwrap().len() < messages {
        if started.elapsed() > Duration::from_secs(120) {
            panic!(
                "{name}: only {} of {messages} consumed",
                latencies.lock().unwrap().len()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort_unstable();
    let percentile = |p: f64| Duration::from_nanos(latencies[((latencies.len() - 1) as f64 * p) as usize]);
    println!(
        "| {name} | {messages} | {:.0} | {:.2?} | {:.2?} |",
        messages as f64 / elapsed.as_secs_f64(),
        percentile(0.5),
        percentile(0.99)
    );
}

#[tokio::main]
async fn main() {
    let messages: usize = std::env::args().nth(1).and_then(|n| n.parse().ok()).unwrap_or(5000);
    let namespace = format!("bench{}", std::process::id());
    let mut config = MessagingConfig::default();
    config.namespace = namespace.clone();
    println!("| transport | messages | messages/s (publish to consumed) | p50 latency | p99 latency |");
    println!("|---|---|---|---|---|");
    run("memory", Arc::new(MemoryTransport::new()), config.clone(), messages).await;
    let (nats_url, amqp_url) = ("nats://127.0.0.1:4222", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let nats = NatsTransport::connect(nats_url, &config)
        .await
        .expect("NATS on 127.0.0.1:4222");
    run("nats (JetStream)", Arc::new(nats), config.clone(), messages).await;
    chassis_benches::delete_namespace("nats", nats_url, &namespace).await;
    let amqp = AmqpTransport::connect(amqp_url, &config)
        .await
        .expect("RabbitMQ on 127.0.0.1:5672");
    run("amqp (RabbitMQ)", Arc::new(amqp), config, messages).await;
    chassis_benches::delete_namespace("amqp", amqp_url, &namespace).await;
}
