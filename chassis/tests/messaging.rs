//! One conformance suite for every transport: the in-memory bus and NATS JetStream on the
//! machine (NATS_URL; under CI=true an unreachable server fails the test).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chassis::messaging::{
    AmqpTransport, Bus, Event, Incoming, Kind, MemoryTransport, Message, MessagingConfig, NatsTransport, RawMessage,
    Transport,
};
use chassis::testing::{backend, backend_url, delete_broker_namespace, eventually};
use futures_util::StreamExt as _;
use opentelemetry::trace::TraceContextExt as _;
use tokio_util::sync::CancellationToken;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OrderPlaced {
    order: u32,
}

impl Message for OrderPlaced {
    const TYPE: &'static str = "test.order.placed";
}
impl Event for OrderPlaced {}

fn config(namespace: &str) -> MessagingConfig {
    let mut config = MessagingConfig::default();
    config.namespace = namespace.to_owned();
    config.max_attempts = 3;
    config.retry_base_delay = Duration::from_millis(5);
    config.retry_max_delay = Duration::from_millis(20);
    config.concurrency = 2;
    config.ack_wait = Duration::from_secs(1);
    config
}

/// Reads the dead letters of a group: (reason, body).
type DeadLetters = Box<dyn Fn(String) -> futures_util::future::BoxFuture<'static, Vec<(String, String)>> + Send + Sync>;

/// Published after the messages under test, to know they have all been delivered.
const MARKER: u32 = u32::MAX;

struct Harness {
    /// The NATS namespace whose streams the test deletes at the end.
    cleanup: Option<(NatsTransport, String)>,
    bus: Bus,
    transport: Arc<dyn Transport>,
    dead_letters: DeadLetters,
}

async fn conformance(harness: Harness) {
    chassis::telemetry::init(&Default::default(), &Default::default()).ok();
    let Harness { bus, .. } = harness;
    let stop = CancellationToken::new();

    // Fan-out: three groups each get every event exactly once.
    let seen: Arc<Mutex<BTreeMap<String, Vec<u32>>>> = Arc::default();
    for group in ["billing", "shipping", "mailer"] {
        let seen = seen.clone();
        let group_name = group.to_owned();
        bus.subscribe(
            group,
            move |incoming: Incoming<OrderPlaced>| {
                let (seen, group) = (seen.clone(), group_name.clone());
                async move {
                    seen.lock()
                        .unwrap()
                        .entry(group)
                        .or_default()
                        .push(incoming.message.order);
                    Ok::<_, String>(())
                }
            },
            stop.clone(),
        )
        .await
        .unwrap();
    }
    for order in 0..5 {
        bus.publish(&OrderPlaced { order }).await.unwrap();
    }
    // A marker published after the five arrives after them: once every group has it, a
    // duplicate of the five would have been delivered already.
    bus.publish(&OrderPlaced { order: MARKER }).await.unwrap();
    eventually("fan-out to three groups", async || {
        let seen = seen.lock().unwrap();
        (seen.len() == 3 && seen.values().all(|v| v.contains(&MARKER))).then_some(())
    })
    .await;
    for (group, orders) in seen.lock().unwrap().iter() {
        let orders: Vec<_> = orders.iter().filter(|o| **o != MARKER).collect();
        let unique: BTreeSet<_> = orders.iter().collect();
        assert_eq!(orders.len(), 5, "{group} got each event once: {orders:?}");
        assert_eq!(unique.len(), 5, "{group}");
    }
    stop.cancel();
}

async fn competing_and_failures(harness: Harness) {
    let Harness {
        bus,
        transport,
        dead_letters,
        ..
    } = harness;
    let stop = CancellationToken::new();

    // Two consumers in one group share the work; none is handled twice. The first message's
    // handler holds its consumer until another consumer has handled a message.
    let handled: Arc<Mutex<Vec<(u32, tokio::task::Id)>>> = Arc::default();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (h, r) = (handled.clone(), release.clone());
    bus.subscribe(
        "workers",
        move |incoming: Incoming<OrderPlaced>| {
            let (h, r) = (h.clone(), r.clone());
            async move {
                h.lock().unwrap().push((incoming.message.order, tokio::task::id()));
                if incoming.message.order == 100 {
                    let _ = r.acquire().await;
                }
                Ok::<_, String>(())
            }
        },
        stop.clone(),
    )
    .await
    .unwrap();
    for order in 100..120 {
        bus.publish(&OrderPlaced { order }).await.unwrap();
    }
    eventually("a second consumer to take work while the first is busy", async || {
        let handled = handled.lock().unwrap();
        let consumers: BTreeSet<_> = handled.iter().map(|(_, t)| *t).collect();
        (consumers.len() == 2).then_some(())
    })
    .await;
    release.add_permits(1);
    bus.publish(&OrderPlaced { order: MARKER }).await.unwrap();
    eventually("every message and the marker", async || {
        let handled = handled.lock().unwrap();
        let orders: BTreeSet<_> = handled.iter().map(|(o, _)| *o).collect();
        (orders.len() == 21).then_some(())
    })
    .await;
    let handled = handled.lock().unwrap().clone();
    assert_eq!(handled.len(), 21, "no message handled twice: {handled:?}");
    stop.cancel();

    // A handler failing twice then succeeding: handled, not dead-lettered; past the limit:
    // dead-lettered with the reason.
    let stop = CancellationToken::new();
    let attempts: Arc<Mutex<BTreeMap<u32, u32>>> = Arc::default();
    let a = attempts.clone();
    bus.subscribe(
        "flaky",
        move |incoming: Incoming<OrderPlaced>| {
            let a = a.clone();
            async move {
                let n = {
                    let mut attempts = a.lock().unwrap();
                    let n = attempts.entry(incoming.message.order).or_default();
                    *n += 1;
                    *n
                };
                match incoming.message.order {
                    1 if n < 3 => Err(format!("transient failure {n}")),
                    2 => Err("boom".to_owned()),
                    _ => Ok(()),
                }
            }
        },
        stop.clone(),
    )
    .await
    .unwrap();
    bus.publish(&OrderPlaced { order: 1 }).await.unwrap();
    bus.publish(&OrderPlaced { order: 2 }).await.unwrap();
    // An undecodable message (its own id, valid attributes, a body that is not JSON) goes to
    // the dead letters at once.
    let mut envelope = bus.publish(&OrderPlaced { order: 3 }).await.unwrap();
    envelope.id = uuid::Uuid::now_v7().to_string();
    transport
        .publish(
            Kind::Event,
            OrderPlaced::TYPE,
            RawMessage {
                headers: envelope.to_headers(),
                body: "not json".into(),
            },
        )
        .await
        .unwrap();
    let letters = eventually("two dead letters", async || {
        let letters = dead_letters("flaky".into()).await;
        (letters.len() >= 2).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters.iter().any(|(reason, body)| reason.contains("failed 3 times")
            && reason.contains("boom")
            && body.contains("\"order\":2")),
        "{letters:?}"
    );
    assert!(
        letters
            .iter()
            .any(|(reason, body)| reason.contains("cannot decode") && body == "not json"),
        "{letters:?}"
    );
    let attempts = attempts.lock().unwrap().clone();
    assert_eq!(attempts[&1], 3, "failed twice, succeeded the third time");
    assert_eq!(attempts[&2], 3, "max_attempts");
    stop.cancel();
}

async fn redelivery_and_trace(harness: Harness) {
    chassis::telemetry::init(&Default::default(), &Default::default()).ok();
    let Harness { bus, transport, .. } = harness;

    // A consumer that dies before acknowledging: the message is delivered again.
    let mut first = transport
        .subscribe(Kind::Event, OrderPlaced::TYPE, "crashy")
        .await
        .unwrap();
    bus.publish(&OrderPlaced { order: 7 }).await.unwrap();
    let delivery = first.next().await.unwrap().unwrap();
    assert_eq!(delivery.delivered, 1);
    drop(delivery);
    drop(first);
    let mut second = transport
        .subscribe(Kind::Event, OrderPlaced::TYPE, "crashy")
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(10), second.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(again.delivered, 2, "redelivered");
    again.ack().await.unwrap();

    // The consumer's span continues the publisher's trace.
    let stop = CancellationToken::new();
    let trace_ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let t = trace_ids.clone();
    bus.subscribe(
        "traced",
        move |_: Incoming<OrderPlaced>| {
            let t = t.clone();
            async move {
                let id = tracing::Span::current()
                    .context()
                    .span()
                    .span_context()
                    .trace_id()
                    .to_string();
                t.lock().unwrap().push(id);
                Ok::<_, String>(())
            }
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let span = tracing::info_span!("checkout");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01"
            .parse()
            .unwrap(),
    );
    let _ = span.set_parent(chassis::telemetry::extract_context(&headers));
    {
        use tracing::Instrument as _;
        bus.publish(&OrderPlaced { order: 8 }).instrument(span).await.unwrap();
    }
    let ids = eventually("the traced message", async || {
        let ids = trace_ids.lock().unwrap().clone();
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(ids[0], "5b8efff798038103d269b633813fc60c");
    stop.cancel();
}

fn memory() -> Harness {
    let transport = MemoryTransport::new();
    let reader = transport.clone();
    let shared: Arc<dyn Transport> = Arc::new(transport);
    Harness {
        cleanup: None,
        bus: Bus::from_arc(shared.clone(), "tests", config("memory")),
        transport: shared,
        dead_letters: Box::new(move |group| {
            let letters = reader
                .dead_letters()
                .into_iter()
                .filter(|d| d.group == group)
                .map(|d| (d.reason, String::from_utf8_lossy(&d.message.body).into_owned()))
                .collect();
            Box::pin(async move { letters })
        }),
    }
}

async fn nats() -> Option<Harness> {
    let url = backend_url("NATS_URL", "nats://127.0.0.1:4222");
    let namespace = format!("t{}", uuid::Uuid::new_v4().simple());
    let transport = backend("NATS", NatsTransport::connect(&url, &config(&namespace))).await?;
    let reader = transport.clone();
    let cleanup = Some((transport.clone(), namespace.clone()));
    let shared: Arc<dyn Transport> = Arc::new(transport);
    Some(Harness {
        cleanup,
        bus: Bus::from_arc(shared.clone(), "tests", config(&namespace)),
        transport: shared,
        dead_letters: Box::new(move |group| {
            let reader = reader.clone();
            let namespace = namespace.clone();
            Box::pin(async move {
                let stream = reader
                    .jetstream()
                    .get_stream(format!("{}_DEAD_LETTERS", namespace.to_uppercase()))
                    .await
                    .unwrap();
                let consumer = stream
                    .create_consumer(async_nats::jetstream::consumer::pull::Config {
                        filter_subject: reader.dead_letter_subject(&group),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                let mut batch = consumer
                    .fetch()
                    .max_messages(100)
                    .expires(Duration::from_millis(300))
                    .messages()
                    .await
                    .unwrap();
                let mut letters = Vec::new();
                while let Some(Ok(message)) = batch.next().await {
                    let reason = message
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("chassis-dead-letter-reason"))
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    letters.push((reason, String::from_utf8_lossy(&message.payload).into_owned()));
                }
                letters
            })
        }),
    })
}

#[tokio::test]
async fn memory_fans_out() {
    conformance(memory()).await;
}

#[tokio::test]
async fn memory_competing_consumers_retries_and_dead_letters() {
    competing_and_failures(memory()).await;
}

#[tokio::test]
async fn memory_redelivers_and_continues_the_trace() {
    redelivery_and_trace(memory()).await;
}

async fn delete_streams(cleanup: Option<(NatsTransport, String)>) {
    if let Some((_, namespace)) = cleanup {
        let url = backend_url("NATS_URL", "nats://127.0.0.1:4222");
        let deleted = delete_broker_namespace("nats", &url, &namespace)
            .await
            .expect("the namespace's streams deleted");
        assert_eq!(deleted, 3, "the events', commands' and dead letters' streams");
    }
}

#[tokio::test]
async fn nats_fans_out() {
    if let Some(mut harness) = nats().await {
        let cleanup = harness.cleanup.take();
        conformance(harness).await;
        delete_streams(cleanup).await;
    }
}

#[tokio::test]
async fn nats_competing_consumers_retries_and_dead_letters() {
    if let Some(mut harness) = nats().await {
        let cleanup = harness.cleanup.take();
        competing_and_failures(harness).await;
        delete_streams(cleanup).await;
    }
}

#[tokio::test]
async fn nats_redelivers_and_continues_the_trace() {
    if let Some(mut harness) = nats().await {
        let cleanup = harness.cleanup.take();
        redelivery_and_trace(harness).await;
        delete_streams(cleanup).await;
    }
}

async fn amqp() -> Option<(Harness, String)> {
    let url = amqp_url();
    let namespace = format!("t{}", uuid::Uuid::new_v4().simple());
    let transport = backend("RabbitMQ", AmqpTransport::connect(&url, &config(&namespace))).await?;
    let queue_prefix = format!("{namespace}.dead-letters.");
    let reader_url = url.clone();
    let shared: Arc<dyn Transport> = Arc::new(transport);
    Some((
        Harness {
            cleanup: None,
            bus: Bus::from_arc(shared.clone(), "tests", config(&namespace)),
            transport: shared,
            dead_letters: Box::new(move |group| {
                let (url, queue) = (reader_url.clone(), format!("{queue_prefix}{group}"));
                Box::pin(async move {
                    let connection = lapin::Connection::connect(&url, Default::default()).await.unwrap();
                    let channel = connection.create_channel().await.unwrap();
                    let mut letters = Vec::new();
                    while let Ok(Some(message)) = channel
                        .basic_get(queue.as_str().into(), lapin::options::BasicGetOptions { no_ack: false })
                        .await
                    {
                        let reason = message
                            .properties
                            .headers()
                            .as_ref()
                            .and_then(|h| h.inner().get("chassis-dead-letter-reason").cloned())
                            .and_then(|v| {
                                v.as_long_string()
                                    .map(|s| String::from_utf8_lossy(s.as_bytes()).into_owned())
                            })
                            .unwrap_or_default();
                        letters.push((reason, String::from_utf8_lossy(&message.data).into_owned()));
                    }
                    // Not acknowledged: closing the channel puts them back for the next read.
                    let _ = channel.close(200, "done".into()).await;
                    letters
                })
            }),
        },
        namespace,
    ))
}

fn amqp_url() -> String {
    backend_url("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

async fn delete_amqp(namespace: String) {
    let deleted = delete_broker_namespace("amqp", &amqp_url(), &namespace)
        .await
        .expect("the namespace's queues and exchanges deleted");
    assert!(deleted >= 3, "at least the namespace's three exchanges: {deleted}");
    let left = delete_broker_namespace("amqp", &amqp_url(), &namespace).await.unwrap();
    assert_eq!(left, 0, "nothing of {namespace} is left on the broker");
}

#[tokio::test]
async fn amqp_fans_out() {
    if let Some((harness, namespace)) = amqp().await {
        conformance(harness).await;
        delete_amqp(namespace).await;
    }
}

#[tokio::test]
async fn amqp_competing_consumers_retries_and_dead_letters() {
    if let Some((harness, namespace)) = amqp().await {
        competing_and_failures(harness).await;
        delete_amqp(namespace).await;
    }
}

#[tokio::test]
async fn amqp_redelivers_and_continues_the_trace() {
    if let Some((harness, namespace)) = amqp().await {
        redelivery_and_trace(harness).await;
        delete_amqp(namespace).await;
    }
}

/// Closes, from the broker's side, the connections whose client properties mention `needle`.
async fn close_connections(needle: &str) -> usize {
    let listing = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "--quiet",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .await
        .expect("rabbitmqctl (it comes with the rabbitmq-server package)");
    let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(needle)) {
        let name = line.split('\t').next().unwrap().trim();
        let status = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", name, "chassis test: connection cut by the broker"])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "closing {name}");
        closed += 1;
    }
    closed
}

/// Publishes, drops the transport's connection with `cut`, publishes again: every message the
/// broker confirmed is consumed.
async fn survives_a_dropped_connection(bus: Bus, cut: impl AsyncFnOnce()) {
    let stop = CancellationToken::new();
    let seen: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let s = seen.clone();
    bus.subscribe(
        "survivor",
        move |incoming: Incoming<OrderPlaced>| {
            let s = s.clone();
            async move {
                s.lock().unwrap().insert(incoming.message.order);
                Ok::<_, String>(())
            }
        },
        stop.clone(),
    )
    .await
    .unwrap();
    let mut confirmed = BTreeSet::new();
    for order in 0..10 {
        bus.publish(&OrderPlaced { order }).await.unwrap();
        confirmed.insert(order);
    }
    cut().await;
    for order in 10..20 {
        // A publish may fail while the connection is down; only confirmed ones must arrive.
        match bus.publish(&OrderPlaced { order }).await {
            Ok(_) => {
                confirmed.insert(order);
            }
            Err(error) => eprintln!("publish {order} failed: {error}"),
        }
    }
    assert!(confirmed.len() > 10, "publishing works again after the recovery");
    eventually("every confirmed message to be consumed", async || {
        let missing: Vec<_> = confirmed.difference(&seen.lock().unwrap()).copied().collect();
        missing.is_empty().then_some(())
    })
    .await;
    stop.cancel();
}

#[tokio::test]
async fn amqp_recovers_when_the_broker_closes_the_connection_and_loses_nothing() {
    let Some((harness, namespace)) = amqp().await else {
        return;
    };
    survives_a_dropped_connection(harness.bus, async || {
        assert!(
            close_connections(&namespace).await >= 1,
            "the transport's connection was found and closed"
        );
    })
    .await;
    delete_amqp(namespace).await;
}

#[tokio::test]
async fn nats_recovers_after_the_connection_drops_and_loses_nothing() {
    let Some(mut harness) = nats().await else { return };
    let cleanup = harness.cleanup.take();
    let (transport, _) = cleanup.clone().unwrap();
    // Drops the TCP connection; the client reconnects and the pull consumers resume.
    survives_a_dropped_connection(harness.bus, async || {
        transport.client().force_reconnect().await.unwrap()
    })
    .await;
    delete_streams(cleanup).await;
}

#[tokio::test]
async fn subscriptions_from_the_context_drain_at_shutdown() {
    let handled = Arc::new(AtomicU32::new(0));
    let started = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let (h, s, g) = (handled.clone(), started.clone(), gate.clone());
    let service = chassis::testing::spawn(move |ctx: chassis::Context<()>| async move {
        ctx.subscribe("slow", move |_: Incoming<OrderPlaced>| {
            let (h, s, g) = (h.clone(), s.clone(), g.clone());
            async move {
                s.notify_one();
                let _ = g.acquire().await;
                h.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            }
        })
        .await?;
        ctx.bus().publish(&OrderPlaced { order: 1 }).await?;
        Ok(axum::Router::new())
    })
    .await;
    // Shutdown begins while the message is in hand; the handler finishes only after that.
    started.notified().await;
    service.shutdown();
    gate.add_permits(1);
    assert_eq!(service.wait().await, chassis::runtime::Stopped::Drained);
    assert_eq!(
        handled.load(Ordering::SeqCst),
        1,
        "the message in hand was finished before exit"
    );
}
