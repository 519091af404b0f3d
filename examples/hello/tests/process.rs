//! The hello binary run as a user runs it: its exposition passes promtool, and a collector that
//! takes the connection and never answers is counted (dropped and failed spans), logged once
//! instead of per batch, and cannot hold the shutdown.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chassis::testing::{eventually, free_port};
use tokio::io::AsyncReadExt as _;

/// A running hello and what it wrote to stdout so far (read as it is written, so a full pipe
/// never blocks the service's logging).
struct Hello {
    process: tokio::process::Child,
    log: tokio::task::JoinHandle<String>,
    http: u16,
    admin: u16,
    client: reqwest::Client,
}

impl Hello {
    async fn start(environment: &[(&str, &str)]) -> Self {
        let (http, admin) = (free_port(), free_port());
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hello"));
        command
            .env("APP__HTTP__HOST", "127.0.0.1")
            .env("APP__HTTP__PORT", http.to_string())
            .env("APP__ADMIN__HOST", "127.0.0.1")
            .env("APP__ADMIN__PORT", admin.to_string())
            .env("APP__SHUTDOWN__READINESS_DELAY", "0s")
            .envs(environment.iter().copied())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut process = command.spawn().expect("hello runs");
        let mut stdout = process.stdout.take().unwrap();
        let log = tokio::spawn(async move {
            let mut log = String::new();
            let _ = stdout.read_to_string(&mut log).await;
            log
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let hello = Self {
            process,
            log,
            http,
            admin,
            client,
        };
        let ready = hello.admin_url("/health/ready");
        eventually("hello to be ready", async || {
            hello
                .client
                .get(&ready)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await;
        hello
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin)
    }

    async fn metrics(&self) -> Option<String> {
        self.client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
    }

    /// Sends SIGTERM; returns how long the process took to exit, its status and its log.
    async fn terminate(mut self) -> (Duration, std::process::ExitStatus, String) {
        let pid = self.process.id().expect("running");
        let stopping = Instant::now();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), self.process.wait())
            .await
            .expect("the shutdown is bounded")
            .unwrap();
        (stopping.elapsed(), status, self.log.await.unwrap())
    }
}

#[tokio::test]
async fn the_exposition_passes_promtool() {
    let hello = Hello::start(&[("APP__TELEMETRY__LOG_LEVEL", "warn")]).await;
    for path in ["/hello/world", "/unknown"] {
        hello.client.get(hello.url(path)).send().await.unwrap();
    }
    let text = hello.metrics().await.unwrap();
    chassis::testing::promtool_check(&text).await.unwrap();
    let (_, status, _) = hello.terminate().await;
    assert!(status.success());
}

#[tokio::test]
async fn metrics_go_to_the_collector_every_interval_while_the_service_runs() {
    let receiver = chassis::testing::OtlpReceiver::start().await;
    let hello = Hello::start(&[
        ("APP__TELEMETRY__LOG_LEVEL", "warn"),
        ("APP__TELEMETRY__OTLP__ENDPOINT", &receiver.endpoint()),
        // The standard variable, in milliseconds, wins over the configured 60 s.
        ("OTEL_METRIC_EXPORT_INTERVAL", "100"),
    ])
    .await;
    hello.client.get(hello.url("/hello/world")).send().await.unwrap();
    let served = receiver
        .wait_for_metric(|m| {
            m.name == "http.server.request.duration"
                && m.attributes.get("http.route").is_some_and(|r| r == "/hello/{name}")
        })
        .await;
    assert_eq!(served.count, 1);
    assert_eq!(served.resource["service.name"], "hello");
    // The next collections carry the running totals (cumulative temporality).
    hello.client.get(hello.url("/hello/again")).send().await.unwrap();
    receiver
        .wait_for_metric(|m| {
            m.name == "http.server.request.duration"
                && m.attributes.get("http.route").is_some_and(|r| r == "/hello/{name}")
                && m.count == 2
        })
        .await;
    let (_, status, _) = hello.terminate().await;
    assert!(status.success(), "{status:?}");
}

/// The value of `family{outcome}` (`chassis_otel_spans_total`, `..._log_records_total`) in `text`.
fn counted(text: &str, family: &str, outcome: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(&format!("outcome=\"{outcome}\"")))
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
    let hello = Hello::start(&[
        ("APP__TELEMETRY__LOG_FORMAT", "json"),
        // Every request logs a line, exported as a log record.
        ("APP__TELEMETRY__LOG_LEVEL", "warn,chassis::access=info"),
        ("APP__TELEMETRY__ACCESS_LOG", "true"),
        ("APP__TELEMETRY__FLUSH_TIMEOUT", "1s"),
        ("APP__TELEMETRY__OTLP__ENDPOINT", &endpoint),
        ("APP__TELEMETRY__OTLP__TIMEOUT", "2s"),
        ("APP__TELEMETRY__OTLP__BATCH_DELAY", "100ms"),
        ("APP__TELEMETRY__OTLP__MAX_BATCH_SIZE", "4"),
        ("APP__TELEMETRY__OTLP__MAX_QUEUE_SIZE", "8"),
        ("APP__TELEMETRY__OTLP__METRICS_INTERVAL", "100ms"),
    ])
    .await;

    // Spans, log records and metric collections keep coming while the first export hangs: the
    // queues fill, the rest are dropped; each export times out, and what it carried counts as
    // failed.
    eventually(
        "spans, log records and metrics to be dropped and exports to fail",
        async || {
            for _ in 0..20 {
                hello.client.get(hello.url("/hello/otel")).send().await.ok()?;
            }
            let text = hello.metrics().await?;
            [
                "chassis_otel_spans_total",
                "chassis_otel_log_records_total",
                "chassis_otel_metric_collections_total",
            ]
            .iter()
            .all(|family| counted(&text, family, "dropped") > 0.0 && counted(&text, family, "failed") > 0.0)
            .then_some(())
        },
    )
    .await;

    let (took, status, log) = hello.terminate().await;
    assert!(status.success(), "{status:?}");
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
    let lines = |text: &str| log.lines().filter(|l| l.contains(text)).count();
    assert_eq!(lines("exporting log records failed"), 1, "{log}");
    assert_eq!(lines("log records are dropped"), 1, "{log}");
    assert_eq!(lines("exporting metric collections failed"), 1, "{log}");
    assert!(
        took < Duration::from_secs(5),
        "flush_timeout bounds the wait for the hung collector: {took:?}"
    );
    held.abort();
}
