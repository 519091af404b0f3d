//! The batch processor of spans and of log records: they queue up (without blocking the request
//! that made them) and a thread of its own exports them in batches. Unlike the SDK's, it counts
//! every item it exports, drops or fails to export (`chassis_otel_spans_total{outcome}`,
//! `chassis_otel_log_records_total{outcome}`), says in the service's own log why an export
//! failed (at most every 30 s), and flushes within a deadline.

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

/// Log records exported over OTLP by what became of them: `exported`, `dropped` (the queue was
/// full) or `failed` (the exporter could not deliver them).
pub const LOG_RECORDS_TOTAL: &str = "chassis_otel_log_records_total";

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        SPANS_TOTAL,
        "Spans by outcome: exported, dropped (the export queue was full), failed (the collector did not take them)."
    );
    metrics::describe_counter!(
        LOG_RECORDS_TOTAL,
        "Log records exported over OTLP by outcome: exported, dropped (the export queue was full), failed (the collector did not take them)."
    );
}

/// How often a failing export is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// One signal's exporter as the worker drives it.
pub(crate) trait Export: Send + 'static {
    /// What is batched: a span, a log record.
    type Item: Send + 'static;
    /// The items' name in log lines: `spans`, `log records`.
    const NOUN: &'static str;
    /// The counter of outcomes.
    const TOTAL: &'static str;
    /// What to do when items are dropped.
    const WHEN_DROPPING: &'static str;

    fn export(&mut self, batch: Vec<Self::Item>) -> OTelSdkResult;
    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource);
    fn shutdown(&mut self);
}

/// Spans, through a span exporter.
pub(crate) struct Spans<E>(pub(crate) E);

impl<E: SpanExporter + 'static> Export for Spans<E> {
    type Item = SpanData;
    const NOUN: &'static str = "spans";
    const TOTAL: &'static str = SPANS_TOTAL;
    const WHEN_DROPPING: &'static str = "sample fewer with telemetry.sampling_ratio";

    fn export(&mut self, batch: Vec<SpanData>) -> OTelSdkResult {
        futures_executor::block_on(self.0.export(batch))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }

    fn shutdown(&mut self) {
        let _ = self.0.shutdown();
    }
}

enum Item<T> {
    One(Box<T>),
    Resource(Box<opentelemetry_sdk::Resource>),
    Flush(SyncSender<()>),
    Shutdown(SyncSender<()>),
}

thread_local! {
    /// Set on the export threads: what they log is not exported again.
    static EXPORTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is one of the export threads.
pub(crate) fn on_export_thread() -> bool {
    EXPORTING.with(std::cell::Cell::get)
}

/// The processor of one signal; see the module docs.
pub(crate) struct BatchProcessor<T> {
    queue: SyncSender<Item<T>>,
    dropping: Arc<AtomicBool>,
    total: &'static str,
}

impl<T> std::fmt::Debug for BatchProcessor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchProcessor")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> BatchProcessor<T> {
    /// Exports with `exporter` as `config` says (`batch_delay`, `max_batch_size`,
    /// `max_queue_size`); `endpoint` names the collector in log lines.
    pub(crate) fn new<E: Export<Item = T>>(exporter: E, endpoint: String, config: &super::OtlpConfig) -> Self {
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
            .spawn(move || {
                EXPORTING.with(|exporting| exporting.set(true));
                worker.run(items)
            })
            .expect("a thread for OTLP export");
        Self {
            queue,
            dropping,
            total: E::TOTAL,
        }
    }

    /// Queues `item` for export, or counts it dropped when the queue is full.
    pub(crate) fn enqueue(&self, item: T) {
        match self.queue.try_send(Item::One(Box::new(item))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                metrics::counter!(self.total, "outcome" => "dropped").increment(1);
                // Logged by the worker: logging here, inside the subscriber, would re-enter it.
                self.dropping.store(true, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Asks the worker to do `item`'s job and waits for it, at most `within`.
    fn ask(&self, item: impl FnOnce(SyncSender<()>) -> Item<T>, within: Duration) -> OTelSdkResult {
        let (done, waited) = sync_channel(1);
        let deadline = Instant::now() + within;
        let mut item = item(done);
        // The queue may be full: keep offering until the deadline.
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

    /// Exports what is queued and stops the worker, waiting at most `within`.
    pub(crate) fn shutdown_within(&self, within: Duration) -> OTelSdkResult {
        self.ask(Item::Shutdown, within)
    }

    /// Hands the exporter the resource, before any item: the provider sets it as it is built.
    pub(crate) fn set_resource(&self, resource: &opentelemetry_sdk::Resource) {
        let _ = self.queue.send(Item::Resource(Box::new(resource.clone())));
    }
}

/// The span processor the tracer provider runs, shared with the telemetry guard that flushes it
/// at shutdown.
#[derive(Debug)]
pub(crate) struct Shared(pub(crate) Arc<BatchProcessor<SpanData>>);

impl SpanProcessor for Shared {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.enqueue(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.flush_within(Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_within(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// Failed exports since the last log line about them.
#[derive(Default)]
struct Failures {
    lost: u64,
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

impl<E: Export> Worker<E> {
    fn run(mut self, items: Receiver<Item<E::Item>>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        let mut deadline = Instant::now() + self.delay;
        loop {
            self.log_dropping();
            let item = items.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            match item {
                Ok(Item::One(item)) => {
                    batch.push(*item);
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
                    self.exporter.shutdown();
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

    /// Says once per stretch of dropping that items are dropped.
    fn log_dropping(&mut self) {
        if self.dropping.load(Ordering::Relaxed) && !self.dropping_logged {
            tracing::warn!(
                max_queue_size = self.queue_size,
                "{} are dropped: they come faster than the collector takes them \
                 ({}{{outcome=\"dropped\"}} counts them); {}",
                E::NOUN,
                E::TOTAL,
                E::WHEN_DROPPING,
            );
            self.dropping_logged = true;
        }
    }

    /// Exports everything queued so far.
    fn drain(&mut self, items: &Receiver<Item<E::Item>>, batch: &mut Vec<E::Item>) {
        while let Ok(item) = items.try_recv() {
            match item {
                Item::One(item) => {
                    batch.push(*item);
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

    fn export(&mut self, batch: &mut Vec<E::Item>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        let result = self.exporter.export(std::mem::take(batch));
        match result {
            Ok(()) => {
                metrics::counter!(E::TOTAL, "outcome" => "exported").increment(count);
                self.dropping.store(false, Ordering::Relaxed);
                self.dropping_logged = false;
                if self.failures.lost > 0 {
                    tracing::info!(endpoint = %self.endpoint, "OTLP export of {} works again", E::NOUN);
                    self.failures = Failures::default();
                }
            }
            Err(error) => {
                self.log_dropping();
                metrics::counter!(E::TOTAL, "outcome" => "failed").increment(count);
                self.failures.lost += count;
                let now = Instant::now();
                if self.failures.logged_at.is_none_or(|at| now >= at + LOG_EVERY) {
                    tracing::error!(
                        endpoint = %self.endpoint,
                        %error,
                        lost = self.failures.lost,
                        "exporting {} failed; they are lost ({}{{outcome=\"failed\"}})",
                        E::NOUN,
                        E::TOTAL,
                    );
                    self.failures.logged_at = Some(now);
                }
            }
        }
    }
}
