//! The hello binary exporting spans to a collector that takes the connection and never answers:
//! the spans it cannot deliver are counted (dropped and failed), its log says why once instead
//! of per batch, and SIGTERM still ends the process within its shutdown budget.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of `chassis_otel_spans_total{outcome}` in `text`.
fn spans(text: &str, outcome: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("chassis_otel_spans_total{") && l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_hung_collector_is_counted_logged_once_and_cannot_hold_the_shutdown() {
    // A collector that accepts connections and never answers.
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((tcp, _)) = collector.accept().await {
            open.push(tcp);
        }
    });
    let (http_port, admin_port) = (free_port(), free_port());
    let mut hello = tokio::process::Command::new(env!("CARGO_BIN_EXE_hello"))
        .env("APP__HTTP__HOST", "127.0.0.1")
        .env("APP__HTTP__PORT", http_port.to_string())
        .env("APP__ADMIN__HOST", "127.0.0.1")
        .env("APP__ADMIN__PORT", admin_port.to_string())
        .env("APP__SHUTDOWN__READINESS_DELAY", "0s")
        .env("APP__TELEMETRY__LOG_FORMAT", "json")
        .env("APP__TELEMETRY__LOG_LEVEL", "warn")
        .env("APP__TELEMETRY__FLUSH_TIMEOUT", "1s")
        .env("APP__TELEMETRY__OTLP__ENDPOINT", &endpoint)
        .env("APP__TELEMETRY__OTLP__TIMEOUT", "2s")
        .env("APP__TELEMETRY__OTLP__BATCH_DELAY", "100ms")
        .env("APP__TELEMETRY__OTLP__MAX_BATCH_SIZE", "4")
        .env("APP__TELEMETRY__OTLP__MAX_QUEUE_SIZE", "8")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("hello runs");
    // Read as it is written, so a full pipe never blocks the service's logging.
    let mut stdout = hello.stdout.take().unwrap();
    let log = tokio::spawn(async move {
        let mut log = String::new();
        stdout.read_to_string(&mut log).await.unwrap();
        log
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let metrics = format!("http://127.0.0.1:{admin_port}/metrics");
    chassis::testing::eventually("hello to be ready", async || {
        http.get(format!("http://127.0.0.1:{admin_port}/health/ready"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;

    // Spans keep ending while the first export hangs: the queue fills, the rest are dropped;
    // each export times out, and its spans count as failed.
    chassis::testing::eventually("spans to be dropped and exports to fail", async || {
        for _ in 0..20 {
            http.get(format!("http://127.0.0.1:{http_port}/hello/otel"))
                .send()
                .await
                .ok()?;
        }
        let text = http.get(&metrics).send().await.ok()?.text().await.ok()?;
        (spans(&text, "dropped") > 0.0 && spans(&text, "failed") > 0.0).then_some(())
    })
    .await;

    let pid = hello.id().expect("running");
    let stopping = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), hello.wait())
        .await
        .expect("the shutdown is bounded")
        .unwrap();
    let took = stopping.elapsed();
    assert!(exit.success(), "{exit:?}");
    let log = log.await.unwrap();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("exporting spans failed")).collect();
    assert_eq!(failed.len(), 1, "one rate-limited line, not one per batch:\n{log}");
    assert!(
        failed[0].starts_with('{') && failed[0].contains(&endpoint),
        "in the service's JSON log, naming the collector: {}",
        failed[0]
    );
    assert_eq!(
        log.lines().filter(|l| l.contains("spans are dropped")).count(),
        1,
        "{log}"
    );
    assert!(
        took < Duration::from_secs(5),
        "flush_timeout bounds the wait for the hung collector: {took:?}"
    );
    held.abort();
}
