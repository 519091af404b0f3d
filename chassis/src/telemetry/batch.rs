//! The span batch processor: ended spans queue up (without blocking the request that ended
//! them) and a thread of its own exports them in batches. Unlike the SDK's, it counts every
//! span it exports, drops or fails to export (`chassis_otel_spans_total{outcome}`), says in the
//! service's own log why an export failed (at most every 30 s), and flushes within a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// Spans by what became of them: `exported`, `dropped` (the queue was full) or `failed` (the
/// exporter could not deliver them).
pub const SPANS_TOTAL: &str = "chassis_otel_spans_total";

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        SPANS_TOTAL,
        "Spans by outcome: exported, dropped (the export queue was full), failed (the collector did not take them)."
    );
}

/// How often a failing export is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(30);

enum Item {
    Span(Box<SpanData>),
    Resource(Box<opentelemetry_sdk::Resource>),
    Flush(SyncSender<()>),
    Shutdown(SyncSender<()>),
}

/// The processor the tracer provider runs; see the module docs.
#[derive(Debug)]
pub(crate) struct BatchProcessor {
    queue: SyncSender<Item>,
    dropping: Arc<AtomicBool>,
}

impl BatchProcessor {
    /// Exports with `exporter` as `config` says (`batch_delay`, `max_batch_size`,
    /// `max_queue_size`); `endpoint` names the collector in log lines.
    pub(crate) fn new<E: SpanExporter + 'static>(exporter: E, endpoint: String, config: &super::OtlpConfig) -> Self {
        // The worker holds the batch it is building: the channel holds the rest of the queue.
        let (queue, items) = sync_channel(config.max_queue_size.saturating_sub(config.max_batch_size).max(1));
        let dropping = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            exporter,
            endpoint,
            batch_size: config.max_batch_size.max(1),
            delay: config.batch_delay,
            queue_size: config.max_queue_size,
            dropping: dropping.clone(),
            dropping_logged: false,
            failures: Failures::default(),
        };
        std::thread::Builder::new()
            .name("otel-export".into())
            .spawn(move || worker.run(items))
            .expect("a thread for span export");
        Self { queue, dropping }
    }

    /// Asks the worker to do `item`'s job and waits for it, at most `within`.
    fn ask(&self, item: impl FnOnce(SyncSender<()>) -> Item, within: Duration) -> OTelSdkResult {
        let (done, waited) = sync_channel(1);
        let deadline = Instant::now() + within;
        let mut item = item(done);
        // The queue may be full of spans: keep offering until the deadline.
        loop {
            match self.queue.try_send(item) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    item = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(within)),
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
            }
        }
        match waited.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => Ok(()),
            Err(RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(within)),
            Err(RecvTimeoutError::Disconnected) => Err(OTelSdkError::AlreadyShutdown),
        }
    }

    /// Exports what is queued, waiting at most `within`.
    pub(crate) fn flush_within(&self, within: Duration) -> OTelSdkResult {
        self.ask(Item::Flush, within)
    }
}

impl SpanProcessor for BatchProcessor {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.queue.try_send(Item::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!(SPANS_TOTAL, "outcome" => "dropped").increment(1);
                // Logged by the worker: logging here, inside the subscriber closing a span,
                // would re-enter it.
                self.dropping.store(true, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush_within(Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.ask(Item::Shutdown, timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Before any span: the provider sets it as it is built.
        let _ = self.queue.send(Item::Resource(Box::new(resource.clone())));
    }
}

/// Failed exports since the last log line about them.
#[derive(Default)]
struct Failures {
    spans: u64,
    logged_at: Option<Instant>,
}

struct Worker<E> {
    exporter: E,
    endpoint: String,
    batch_size: usize,
    delay: Duration,
    queue_size: usize,
    /// Set by `on_end` when it drops a span.
    dropping: Arc<AtomicBool>,
    /// Whether this stretch of dropping was logged.
    dropping_logged: bool,
    failures: Failures,
}

impl<E: SpanExporter> Worker<E> {
    fn run(mut self, items: Receiver<Item>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut deadline = Instant::now() + self.delay;
        loop {
            self.log_dropping();
            let item = items.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            match item {
                Ok(Item::Span(span)) => {
                    batch.push(*span);
                    if batch.len() >= self.batch_size {
                        self.export(&mut batch);
                        deadline = Instant::now() + self.delay;
                    }
                }
                Ok(Item::Resource(resource)) => self.exporter.set_resource(&resource),
                Ok(Item::Flush(done)) => {
                    self.drain(&items, &mut batch);
                    let _ = done.send(());
                }
                Ok(Item::Shutdown(done)) => {
                    self.drain(&items, &mut batch);
                    let _ = self.exporter.shutdown();
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.export(&mut batch);
                    deadline = Instant::now() + self.delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.export(&mut batch);
                    return;
                }
            }
        }
    }

    /// Says once per stretch of dropping that spans are dropped.
    fn log_dropping(&mut self) {
        if self.dropping.load(Ordering::Relaxed) && !self.dropping_logged {
            tracing::warn!(
                max_queue_size = self.queue_size,
                "spans are dropped: they end faster than the collector takes them \
                 (chassis_otel_spans_total{{outcome=\"dropped\"}} counts them); sample fewer with \
                 telemetry.sampling_ratio"
            );
            self.dropping_logged = true;
        }
    }

    /// Exports everything queued so far.
    fn drain(&mut self, items: &Receiver<Item>, batch: &mut Vec<SpanData>) {
        while let Ok(item) = items.try_recv() {
            match item {
                Item::Span(span) => {
                    batch.push(*span);
                    if batch.len() >= self.batch_size {
                        self.export(batch);
                    }
                }
                Item::Resource(resource) => self.exporter.set_resource(&resource),
                Item::Flush(done) | Item::Shutdown(done) => {
                    let _ = done.send(());
                }
            }
        }
        self.export(batch);
    }

    fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let spans = batch.len() as u64;
        let result = futures_executor::block_on(self.exporter.export(std::mem::take(batch)));
        match result {
            Ok(()) => {
                metrics::counter!(SPANS_TOTAL, "outcome" => "exported").increment(spans);
                self.dropping.store(false, Ordering::Relaxed);
                self.dropping_logged = false;
                if self.failures.spans > 0 {
                    tracing::info!(endpoint = %self.endpoint, "span export works again");
                    self.failures = Failures::default();
                }
            }
            Err(error) => {
                self.log_dropping();
                metrics::counter!(SPANS_TOTAL, "outcome" => "failed").increment(spans);
                self.failures.spans += spans;
                let now = Instant::now();
                if self.failures.logged_at.is_none_or(|at| now >= at + LOG_EVERY) {
                    tracing::error!(
                        endpoint = %self.endpoint,
                        %error,
                        spans_lost = self.failures.spans,
                        "exporting spans failed; they are lost (chassis_otel_spans_total{{outcome=\"failed\"}})"
                    );
                    self.failures.logged_at = Some(now);
                }
            }
        }
    }
}

/// The process' batch processor, shared by the tracer provider and the telemetry guard that
/// flushes it at shutdown.
#[derive(Debug)]
pub(crate) struct Shared(pub(crate) Arc<BatchProcessor>);

impl SpanProcessor for Shared {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.0.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.0.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        let _ = self.0.queue.send(Item::Resource(Box::new(resource.clone())));
    }
}
