//! The batch processor of spans, log records and metric collections: they queue up (without blocking the request
//! that made them) and a thread of its own exports them in batches. Unlike the SDK's, it counts
//! every item it exports, drops or fails to export (`chassis_otel_spans_total{outcome}`,
//! `chassis_otel_log_records_total{outcome}`), says in the service's own log why an export
//! failed (at most every 30 s), and flushes within a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

use super::server_span::EndedSpan;

/// Spans by what became of them: `exported`, `dropped` (the queue was full) or `failed` (the
/// exporter could not deliver them).
pub const SPANS_TOTAL: &str = "chassis_otel_spans_total";

/// Log records exported over OTLP by what became of them: `exported`, `dropped` (the queue was
/// full) or `failed` (the exporter could not deliver them).
pub const LOG_RECORDS_TOTAL: &str = "chassis_otel_log_records_total";

/// Metric collections exported over OTLP (one every `telemetry.otlp.metrics_interval`) by what
/// became of them: `exported`, `dropped` (the previous one was still being exported) or
/// `failed` (the exporter could not deliver them).
pub const METRIC_COLLECTIONS_TOTAL: &str = "chassis_otel_metric_collections_total";

pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        SPANS_TOTAL,
        "Spans by outcome: exported, dropped (the export queue was full), failed (the collector did not take them)."
    );
    metrics::describe_counter!(
        LOG_RECORDS_TOTAL,
        "Log records exported over OTLP by outcome: exported, dropped (the export queue was full), failed (the collector did not take them)."
    );
    metrics::describe_counter!(
        METRIC_COLLECTIONS_TOTAL,
        "Metric collections exported over OTLP by outcome: exported, dropped (the previous one was still being exported), failed (the collector did not take them)."
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

/// What a span exporter's log lines call its items, and what to do when they are dropped.
pub(crate) const SPANS_NOUN: &str = "spans";
pub(crate) const SPANS_WHEN_DROPPING: &str = "sample fewer with telemetry.sampling_ratio";

impl<E: SpanExporter + 'static> Export for Spans<E> {
    type Item = EndedSpan;
    const NOUN: &'static str = SPANS_NOUN;
    const TOTAL: &'static str = SPANS_TOTAL;
    const WHEN_DROPPING: &'static str = SPANS_WHEN_DROPPING;

    fn export(&mut self, batch: Vec<EndedSpan>) -> OTelSdkResult {
        let batch = batch.into_iter().map(EndedSpan::into_span_data).collect();
        futures_executor::block_on(self.0.export(batch))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }

    fn shutdown(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// What the worker is asked to do, apart from the items it drains from the queue itself.
enum Control {
    /// A batch's worth is queued: export it now rather than at the next tick.
    Full,
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

/// The queue between the threads that end spans (or log) and the worker.
///
/// Items and orders travel apart: the worker waits on `control` only and takes items with
/// `try_recv`, so queueing an item never wakes it (a wake is a system call on the request's
/// thread); it is told once per batch's worth ([`Control::Full`]) and otherwise looks at its
/// own tick.
struct Queue<T> {
    items: SyncSender<T>,
    control: SyncSender<Control>,
    /// Items queued and not yet taken by the worker.
    queued: AtomicUsize,
    /// A [`Control::Full`] is on its way or not yet acted on.
    full_sent: AtomicBool,
    batch_size: usize,
    /// Set when an item is dropped; the worker logs it.
    dropping: AtomicBool,
    total: &'static str,
}

/// The processor of one signal; see the module docs. Cheap to clone: the provider that feeds
/// it and the telemetry guard that flushes it at shutdown share one queue and one worker.
pub(crate) struct BatchProcessor<T> {
    queue: Arc<Queue<T>>,
}

impl<T> Clone for BatchProcessor<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T> std::fmt::Debug for BatchProcessor<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchProcessor")
            .field("total", &self.queue.total)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> BatchProcessor<T> {
    /// Exports with `exporter` as `config` says (`batch_delay`, `max_batch_size`,
    /// `max_queue_size`); `endpoint` names the collector in log lines.
    pub(crate) fn new<E: Export<Item = T>>(exporter: E, endpoint: String, config: &super::OtlpConfig) -> Self {
        let batch_size = config.max_batch_size.max(1);
        // The worker holds the batch it is exporting: the channel holds the rest of the queue.
        let (items, received) = sync_channel(config.max_queue_size.saturating_sub(batch_size).max(1));
        let (control, orders) = sync_channel(16);
        let queue = Arc::new(Queue {
            items,
            control,
            queued: AtomicUsize::new(0),
            full_sent: AtomicBool::new(false),
            batch_size,
            dropping: AtomicBool::new(false),
            total: E::TOTAL,
        });
        let worker = Worker {
            exporter,
            endpoint,
            items: received,
            queue: queue.clone(),
            delay: config.batch_delay,
            queue_size: config.max_queue_size,
            dropping_logged: false,
            failures: Failures::default(),
        };
        std::thread::Builder::new()
            .name("otel-export".into())
            .spawn(move || {
                EXPORTING.with(|exporting| exporting.set(true));
                worker.run(orders)
            })
            .expect("a thread for OTLP export");
        Self { queue }
    }

    /// Queues `item` for export, or counts it dropped when the queue is full.
    pub(crate) fn enqueue(&self, item: T) {
        let queue = &*self.queue;
        // Counted before it is sent, so that the worker, which counts what it takes, never
        // counts below zero.
        let queued = queue.queued.fetch_add(1, Ordering::Relaxed) + 1;
        match queue.items.try_send(item) {
            Ok(()) => {
                if queued >= queue.batch_size
                    && !queue.full_sent.swap(true, Ordering::AcqRel)
                    && queue.control.try_send(Control::Full).is_err()
                {
                    // Orders are backed up: the next item asks again.
                    queue.full_sent.store(false, Ordering::Release);
                }
            }
            Err(error) => {
                queue.queued.fetch_sub(1, Ordering::Relaxed);
                if let TrySendError::Full(_) = error {
                    metrics::counter!(queue.total, "outcome" => "dropped").increment(1);
                    // Logged by the worker: logging here, inside the subscriber, would re-enter it.
                    queue.dropping.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Asks the worker to do `order`'s job and waits for it, at most `within`.
    fn ask(&self, order: impl FnOnce(SyncSender<()>) -> Control, within: Duration) -> OTelSdkResult {
        let (done, waited) = sync_channel(1);
        let deadline = Instant::now() + within;
        let mut order = order(done);
        // The worker may be busy exporting: keep offering until the deadline.
        loop {
            match self.queue.control.try_send(order) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    order = back;
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
        self.ask(Control::Flush, within)
    }

    /// Exports what is queued and stops the worker, waiting at most `within`.
    pub(crate) fn shutdown_within(&self, within: Duration) -> OTelSdkResult {
        self.ask(Control::Shutdown, within)
    }

    /// Hands the exporter the resource, before any item: the provider sets it as it is built.
    pub(crate) fn hand_resource(&self, resource: &opentelemetry_sdk::Resource) {
        let _ = self.queue.control.send(Control::Resource(Box::new(resource.clone())));
    }
}

impl SpanProcessor for BatchProcessor<EndedSpan> {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.enqueue(EndedSpan::Sdk(Box::new(span)));
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush_within(Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.shutdown_within(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.hand_resource(resource);
    }
}

/// Failed exports since the last log line about them.
#[derive(Default)]
struct Failures {
    lost: u64,
    logged_at: Option<Instant>,
}

struct Worker<E: Export> {
    exporter: E,
    endpoint: String,
    items: Receiver<E::Item>,
    queue: Arc<Queue<E::Item>>,
    delay: Duration,
    queue_size: usize,
    /// Whether this stretch of dropping was logged.
    dropping_logged: bool,
    failures: Failures,
}

impl<E: Export> Worker<E> {
    fn run(mut self, orders: Receiver<Control>) {
        let mut deadline = Instant::now() + self.delay;
        loop {
            self.log_dropping();
            match orders.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(Control::Full) => {
                    self.drain();
                    deadline = Instant::now() + self.delay;
                }
                Ok(Control::Resource(resource)) => self.exporter.set_resource(&resource),
                Ok(Control::Flush(done)) => {
                    self.drain();
                    let _ = done.send(());
                }
                Ok(Control::Shutdown(done)) => {
                    self.drain();
                    self.exporter.shutdown();
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.drain();
                    deadline = Instant::now() + self.delay;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.drain();
                    return;
                }
            }
        }
    }

    /// Says once per stretch of dropping that items are dropped.
    fn log_dropping(&mut self) {
        if self.queue.dropping.load(Ordering::Relaxed) && !self.dropping_logged {
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

    /// Exports everything queued so far, a batch at a time.
    fn drain(&mut self) {
        // Reset first: items queued from here on signal a full batch again.
        self.queue.full_sent.store(false, Ordering::Release);
        let batch_size = self.queue.batch_size;
        loop {
            let batch: Vec<E::Item> = self.items.try_iter().take(batch_size).collect();
            if batch.is_empty() {
                return;
            }
            self.queue.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            let last = batch.len() < batch_size;
            self.export(batch);
            if last {
                return;
            }
        }
    }

    fn export(&mut self, batch: Vec<E::Item>) {
        let count = batch.len() as u64;
        let result = self.exporter.export(batch);
        match result {
            Ok(()) => {
                metrics::counter!(E::TOTAL, "outcome" => "exported").increment(count);
                self.queue.dropping.store(false, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the size of each batch it is handed.
    struct Sizes(Arc<Mutex<Vec<usize>>>);

    impl Export for Sizes {
        type Item = u32;
        const NOUN: &'static str = "items";
        const TOTAL: &'static str = "test_items_total";
        const WHEN_DROPPING: &'static str = "";

        fn export(&mut self, batch: Vec<u32>) -> OTelSdkResult {
            self.0.lock().unwrap().push(batch.len());
            Ok(())
        }

        fn set_resource(&mut self, _: &opentelemetry_sdk::Resource) {}

        fn shutdown(&mut self) {}
    }

    /// Batches of `batch` in a queue of `queue`, exported only when full or flushed.
    fn config(batch: usize, queue: usize) -> super::super::OtlpConfig {
        super::super::OtlpConfig {
            batch_delay: Duration::from_secs(3600),
            max_batch_size: batch,
            max_queue_size: queue,
            ..Default::default()
        }
    }

    #[test]
    fn a_full_batch_goes_out_at_once_and_a_partial_one_waits_for_the_tick_or_a_flush() {
        let config = config(4, 16);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let processor = BatchProcessor::new(Sizes(sizes.clone()), "test".into(), &config);

        (0..4).for_each(|n| processor.enqueue(n));
        let deadline = Instant::now() + Duration::from_secs(10);
        while sizes.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "a full batch is exported without waiting for the tick"
            );
            std::thread::yield_now();
        }
        assert_eq!(*sizes.lock().unwrap(), [4]);

        (4..6).for_each(|n| processor.enqueue(n));
        assert_eq!(
            processor.queue.queued.load(Ordering::Relaxed),
            2,
            "half a batch does not wake the worker"
        );
        processor.flush_within(Duration::from_secs(10)).unwrap();
        assert_eq!(*sizes.lock().unwrap(), [4, 2]);
        assert_eq!(processor.queue.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn items_beyond_the_queue_are_dropped_and_said_so() {
        let config = config(100, 104);
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let processor = BatchProcessor::new(Sizes(sizes.clone()), "test".into(), &config);
        // The channel holds the queue less the batch the worker is exporting: 4 here.
        (0..10).for_each(|n| processor.enqueue(n));
        assert!(processor.queue.dropping.load(Ordering::Relaxed));
        processor.flush_within(Duration::from_secs(10)).unwrap();
        assert_eq!(*sizes.lock().unwrap(), [4]);
    }
}
