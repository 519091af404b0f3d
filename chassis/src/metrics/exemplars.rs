//! Exemplars: for each bucket of a `*_seconds` histogram, the trace and span of its latest
//! sample recorded inside a sampled trace, shown by the OpenMetrics exposition
//! ([`super::openmetrics`]) so that a latency bucket links to a trace.
//!
//! Nothing is kept until a scraper first asks for OpenMetrics: until then a sample costs one
//! relaxed load more than without exemplars.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use metrics::{Histogram, HistogramFn, Key};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};

/// Set by the first OpenMetrics scrape.
static WANTED: AtomicBool = AtomicBool::new(false);

/// Starts keeping exemplars (the first OpenMetrics scrape calls it).
pub(crate) fn want() {
    WANTED.store(true, Ordering::Relaxed);
}

/// A sample and where it was recorded.
#[derive(Debug, Clone)]
struct Exemplar {
    context: SpanContext,
    value: f64,
}

/// A histogram series with a slot per bucket (the last one is `+Inf`'s).
struct Sampled {
    inner: Histogram,
    bounds: Arc<[f64]>,
    slots: Box<[Mutex<Option<Exemplar>>]>,
}

impl HistogramFn for Sampled {
    fn record(&self, value: f64) {
        self.inner.record(value);
        if !WANTED.load(Ordering::Relaxed) {
            return;
        }
        let context = opentelemetry::Context::map_current(|cx| {
            let span = cx.span();
            let context = span.span_context();
            context.is_sampled().then(|| context.clone())
        });
        let Some(context) = context else {
            return;
        };
        // Bucket `i` holds the samples up to `bounds[i]`; the last one, all above.
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        // Another thread storing this bucket's exemplar right now makes as good an exemplar.
        if let Some(Ok(mut slot)) = self.slots.get(bucket).map(Mutex::try_lock) {
            *slot = Some(Exemplar { context, value });
        }
    }
}

/// The exemplars of every `*_seconds` histogram series.
pub(crate) struct Exemplars {
    bounds: Arc<[f64]>,
    series: RwLock<HashMap<Key, Arc<Sampled>>>,
}

impl Exemplars {
    /// Exemplars for histograms with the bucket bounds `bounds`.
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.into(),
            series: RwLock::default(),
        }
    }

    /// The bucket bounds of every `*_seconds` histogram.
    pub(crate) fn bounds(&self) -> &[f64] {
        &self.bounds
    }

    /// Whether the series `name` has buckets (and so exemplars).
    pub(crate) fn bucketed(name: &str) -> bool {
        name.ends_with("_seconds")
    }

    /// The handle of the series `key`, recording into the one `inner` makes.
    pub(crate) fn histogram(&self, key: &Key, inner: impl FnOnce() -> Histogram) -> Histogram {
        if let Some(series) = self.series.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Histogram::from_arc(series.clone());
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        let sampled = series.entry(key.clone()).or_insert_with(|| {
            Arc::new(Sampled {
                inner: inner(),
                bounds: self.bounds.clone(),
                slots: (0..=self.bounds.len()).map(|_| Mutex::new(None)).collect(),
            })
        });
        Histogram::from_arc(sampled.clone())
    }

    /// Forgets the series: registered again, they record into what their `inner` makes then
    /// (the OpenTelemetry side, once it is attached).
    pub(crate) fn forget(&self) {
        self.series.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The exemplars by series: `name` and the labels as the exposition writes them
    /// (`a="x",b="y"`), each with its slots' exemplars rendered as OpenMetrics
    /// (`{trace_id="...",span_id="..."} 0.042`).
    pub(crate) fn snapshot(&self) -> HashMap<(String, String), Vec<Option<String>>> {
        let series = self.series.read().unwrap_or_else(|e| e.into_inner());
        series
            .iter()
            .map(|(key, sampled)| {
                let slots = sampled
                    .slots
                    .iter()
                    .map(|slot| {
                        let exemplar = slot.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
                        Some(format!(
                            "{{trace_id=\"{}\",span_id=\"{}\"}} {}",
                            exemplar.context.trace_id(),
                            exemplar.context.span_id(),
                            exemplar.value
                        ))
                    })
                    .collect();
                ((key.name().to_owned(), labels(key)), slots)
            })
            .collect()
    }

    /// The bucket of the bound `le` (`"+Inf"` is the last).
    pub(crate) fn bucket(&self, le: &str) -> Option<usize> {
        if le == "+Inf" {
            return Some(self.bounds.len());
        }
        let le: f64 = le.parse().ok()?;
        self.bounds.iter().position(|bound| *bound == le)
    }
}

/// The labels of `key` as the exposition writes them.
fn labels(key: &Key) -> String {
    let mut text = String::new();
    for (n, label) in key.labels().enumerate() {
        if n > 0 {
            text.push(',');
        }
        let value = label
            .value()
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(text, "{}=\"{value}\"", label.key());
    }
    text
}
