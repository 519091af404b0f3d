//! OTLP export of metrics: a thread of its own collects the meter provider every
//! `telemetry.otlp.metrics_interval`, right after the hooks that a `/metrics` scrape runs
//! (gauges read from something else, such as a pool's size), and hands the collection to a
//! batch processor that exports, counts and flushes it like spans and log records.
//!
//! The collection is driven here rather than by the SDK's periodic reader so that the hooks run
//! before it and outside it: a hook may record a series never seen before, and making its
//! instrument during a collection would wait on the collection itself.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::reader::MetricReader;
use opentelemetry_sdk::metrics::{InstrumentKind, ManualReader, Pipeline, SdkMeterProvider, Temporality};

use super::OtlpConfig;
use super::batch::{BatchProcessor, Export, METRIC_COLLECTIONS_TOTAL};

/// Collections, through a metric exporter.
pub(crate) struct Metrics<E>(pub(crate) E);

impl<E: PushMetricExporter> Export for Metrics<E> {
    type Item = ResourceMetrics;
    const NOUN: &'static str = "metric collections";
    const TOTAL: &'static str = METRIC_COLLECTIONS_TOTAL;
    const WHEN_DROPPING: &'static str = "lengthen telemetry.otlp.metrics_interval";

    fn export(&mut self, batch: Vec<ResourceMetrics>) -> OTelSdkResult {
        for collection in &batch {
            futures_executor::block_on(self.0.export(collection))?;
        }
        Ok(())
    }

    // Each collection carries the provider's resource.
    fn set_resource(&mut self, _: &opentelemetry_sdk::Resource) {}

    fn shutdown(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// The reader the provider is given, sharing the chassis' handle on it.
#[derive(Debug, Clone)]
struct SharedReader(Arc<ManualReader>);

impl MetricReader for SharedReader {
    fn register_pipeline(&self, pipeline: std::sync::Weak<Pipeline>) {
        self.0.register_pipeline(pipeline);
    }

    fn collect(&self, metrics: &mut ResourceMetrics) -> OTelSdkResult {
        self.0.collect(metrics)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn temporality(&self, kind: InstrumentKind) -> Temporality {
        self.0.temporality(kind)
    }
}

/// What runs before each collection.
type BeforeCollection = Arc<Mutex<Vec<Box<dyn Fn() + Send + Sync>>>>;

/// The meter provider and what collects and exports it.
#[derive(Clone)]
pub(crate) struct MetricExport {
    provider: SdkMeterProvider,
    collector: Collector,
}

impl std::fmt::Debug for MetricExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricExport").finish_non_exhaustive()
    }
}

/// Collects the provider through its reader and queues each collection for export.
#[derive(Clone)]
struct Collector {
    reader: Arc<ManualReader>,
    batch: BatchProcessor<ResourceMetrics>,
    before: BeforeCollection,
}

impl Collector {
    fn collect(&self) {
        for hook in self.before.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook();
        }
        let mut collection = ResourceMetrics::default();
        match self.reader.collect(&mut collection) {
            Ok(()) => self.batch.enqueue(collection),
            Err(error) => tracing::warn!(%error, "collecting the metrics for OTLP export failed"),
        }
    }
}

impl MetricExport {
    /// Exports the metrics of a provider with `resource` through `exporter` every `interval`,
    /// with the cumulative or delta `temporality`; `endpoint` names the collector in log lines.
    pub(crate) fn start<E: PushMetricExporter>(
        exporter: E,
        resource: opentelemetry_sdk::Resource,
        temporality: Temporality,
        interval: Duration,
        endpoint: String,
        config: &OtlpConfig,
    ) -> Self {
        let reader = Arc::new(ManualReader::builder().with_temporality(temporality).build());
        let provider = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_reader(SharedReader(reader.clone()))
            .build();
        // One collection per export, at once; one more may wait while the collector is slow.
        // Cumulative sums lose nothing when a collection is dropped: the next one has it all.
        let queue = OtlpConfig {
            max_batch_size: 1,
            max_queue_size: 2,
            ..config.clone()
        };
        let collector = Collector {
            reader,
            batch: BatchProcessor::new(Metrics(exporter), endpoint, &queue),
            before: BeforeCollection::default(),
        };
        let periodic = collector.clone();
        // For the life of the process, like the provider (installed once per process).
        let spawned = std::thread::Builder::new().name("otel-metrics".into()).spawn(move || {
            loop {
                std::thread::sleep(interval);
                periodic.collect();
            }
        });
        if let Err(error) = spawned {
            tracing::warn!(%error, "could not start the metrics collection thread; metrics are exported at shutdown only");
        }
        Self { provider, collector }
    }

    /// A meter of the provider.
    pub(crate) fn meter(&self) -> opentelemetry::metrics::Meter {
        use opentelemetry::metrics::MeterProvider as _;
        self.provider.meter("chassis")
    }

    /// Runs `hook` before every collection.
    pub(crate) fn before_collection(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.collector
            .before
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(hook));
    }

    /// Collects now and exports what is queued, waiting at most `within`.
    pub(crate) fn flush_within(&self, within: Duration) -> OTelSdkResult {
        self.collector.collect();
        self.collector.batch.flush_within(within)
    }
}
