//! The recorder's series as OpenTelemetry instruments, for OTLP export next to `/metrics`.
//!
//! Counters and gauges keep their value in an atomic that an observable instrument reads at each
//! collection, so recording one costs what the Prometheus side costs; histograms record into an
//! SDK histogram as they are recorded. The process and tokio runtime metrics are observed at
//! each collection, as a scrape reads them.
//!
//! Names follow the OpenTelemetry semantic conventions where the series is one of theirs
//! (`http_server_request_duration_seconds` is `http.server.request.duration`, unit `s`, with
//! `http.request.method`, `http.route`, `http.response.status_code` as an integer). Every other
//! series keeps its `/metrics` name without the suffixes that an OpenTelemetry-to-Prometheus
//! translation adds back (`_total` of a counter, `_seconds` of unit `s`), so a collector that
//! exports to Prometheus serves the names `/metrics` serves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, Metadata, Recorder as _, Unit};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, ObservableCounter};

use super::recorder::ChassisRecorder;
use super::{HTTP_SERVER_ACTIVE_REQUESTS, HTTP_SERVER_REQUEST_DURATION, process, runtime};

/// Series that a semantic convention (1.33) defines: the `/metrics` name, the OpenTelemetry
/// name and unit.
const CONVENTIONS: [(&str, &str, &str); 8] = [
    (HTTP_SERVER_REQUEST_DURATION, "http.server.request.duration", "s"),
    (HTTP_SERVER_ACTIVE_REQUESTS, "http.server.active_requests", "{request}"),
    (
        "http_client_request_duration_seconds",
        "http.client.request.duration",
        "s",
    ),
    ("process_cpu_seconds_total", "process.cpu.time", "s"),
    ("process_resident_memory_bytes", "process.memory.usage", "By"),
    ("process_virtual_memory_bytes", "process.memory.virtual", "By"),
    (
        "process_open_fds",
        "process.unix.file_descriptor.count",
        "{file_descriptor}",
    ),
    ("process_threads", "process.thread.count", "{thread}"),
];

/// Gauges that the conventions define as up-down counters (sums that go up and down).
const UP_DOWN: [&str; 5] = [
    HTTP_SERVER_ACTIVE_REQUESTS,
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_threads",
];

/// Label names the conventions spell with dots, and whether the value is an integer.
const ATTRIBUTES: [(&str, &str, bool); 7] = [
    ("http_request_method", "http.request.method", false),
    ("http_route", "http.route", false),
    ("http_response_status_code", "http.response.status_code", true),
    ("url_scheme", "url.scheme", false),
    ("error_type", "error.type", false),
    ("server_address", "server.address", false),
    ("server_port", "server.port", true),
];

/// The OpenTelemetry name and unit of the series `name` of `kind`, whose described unit is `unit`.
pub(crate) fn name_and_unit(name: &str, kind: Kind, unit: Option<Unit>) -> (String, Option<&'static str>) {
    if let Some((_, otel, unit)) = CONVENTIONS.iter().find(|(prometheus, ..)| *prometheus == name) {
        return ((*otel).to_owned(), Some(unit));
    }
    let unit = unit.and_then(unit_symbol);
    let mut otel = name;
    if kind == Kind::Counter {
        otel = otel.strip_suffix("_total").unwrap_or(otel);
    }
    let unit = match otel.strip_suffix("_seconds") {
        Some(stripped) if matches!(unit, None | Some("s")) => {
            otel = stripped;
            Some("s")
        }
        _ => unit,
    };
    // OpenTelemetry names start with a letter and have no `:` (recording-rule names do).
    let otel = otel
        .trim_start_matches(|c: char| !c.is_ascii_alphabetic())
        .replace(':', "_");
    (otel, unit)
}

/// The UCUM symbol of a `metrics` unit.
fn unit_symbol(unit: Unit) -> Option<&'static str> {
    Some(match unit {
        Unit::Seconds => "s",
        Unit::Milliseconds => "ms",
        Unit::Microseconds => "us",
        Unit::Nanoseconds => "ns",
        Unit::Bytes => "By",
        Unit::Kibibytes => "KiBy",
        Unit::Mebibytes => "MiBy",
        Unit::Gibibytes => "GiBy",
        Unit::Percent => "%",
        Unit::Count => "1",
        _ => return None,
    })
}

/// The attributes of a series: its labels, with the conventions' names and types; a label with
/// an empty value (no status code for an abandoned request) is left out.
fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .filter(|label| !label.value().is_empty())
        .map(|label| {
            let (name, value) = (label.key(), label.value());
            match ATTRIBUTES.iter().find(|(prometheus, ..)| *prometheus == name) {
                Some((_, otel, true)) => match value.parse::<i64>() {
                    Ok(number) => KeyValue::new(*otel, number),
                    Err(_) => KeyValue::new(*otel, value.to_owned()),
                },
                Some((_, otel, false)) => KeyValue::new(*otel, value.to_owned()),
                None => KeyValue::new(name.to_owned(), value.to_owned()),
            }
        })
        .collect()
}

/// The kinds of series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every series of one name, and the instrument that reports them.
struct Family<S, I> {
    series: RwLock<HashMap<Key, Arc<S>>>,
    /// Kept alive: an observable instrument's callback reads the series; a histogram's series
    /// record into it.
    instrument: I,
}

impl<S, I> Family<S, I> {
    fn series(&self, key: &Key, create: impl FnOnce() -> S) -> Arc<S> {
        if let Some(series) = self.series.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return series.clone();
        }
        let mut series = self.series.write().unwrap_or_else(|e| e.into_inner());
        series.entry(key.clone()).or_insert_with(|| Arc::new(create())).clone()
    }

    fn each(&self, mut f: impl FnMut(&S)) {
        for series in self.series.read().unwrap_or_else(|e| e.into_inner()).values() {
            f(series);
        }
    }
}

type Families<S, I> = RwLock<HashMap<String, Arc<Family<S, I>>>>;

/// A counter: its Prometheus handle and its total, which the observable counter reads.
struct CounterSeries {
    prometheus: Counter,
    total: AtomicU64,
    attributes: Vec<KeyValue>,
}

impl CounterFn for CounterSeries {
    fn increment(&self, value: u64) {
        self.prometheus.increment(value);
        self.total.fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.prometheus.absolute(value);
        self.total.fetch_max(value, Ordering::Relaxed);
    }
}

/// A gauge: its Prometheus handle and its value (`f64` bits), which the observable reads.
struct GaugeSeries {
    prometheus: Gauge,
    value: AtomicU64,
    attributes: Vec<KeyValue>,
}

impl GaugeSeries {
    fn add(&self, delta: f64) {
        let _ = self.value.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            Some((f64::from_bits(bits) + delta).to_bits())
        });
    }

    fn get(&self) -> f64 {
        f64::from_bits(self.value.load(Ordering::Relaxed))
    }
}

impl GaugeFn for GaugeSeries {
    fn increment(&self, value: f64) {
        self.prometheus.increment(value);
        self.add(value);
    }

    fn decrement(&self, value: f64) {
        self.prometheus.decrement(value);
        self.add(-value);
    }

    fn set(&self, value: f64) {
        self.prometheus.set(value);
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// A histogram: its Prometheus handle and the SDK histogram of its name, bound to the series'
/// attributes once (a record then looks up no attribute set).
struct HistogramSeries {
    prometheus: Histogram,
    otel: opentelemetry::metrics::BoundHistogram<f64>,
}

impl HistogramFn for HistogramSeries {
    fn record(&self, value: f64) {
        self.prometheus.record(value);
        self.otel.record(value);
    }
}

/// An observable instrument, kept for its callback.
type Observer = Box<dyn std::any::Any + Send + Sync>;

/// The recorder's OpenTelemetry side.
pub(crate) struct Instruments {
    meter: Meter,
    duration_buckets: Vec<f64>,
    counters: Families<CounterSeries, ObservableCounter<u64>>,
    gauges: Families<GaugeSeries, Observer>,
    histograms: Families<HistogramSeries, opentelemetry::metrics::Histogram<f64>>,
    /// Held while an instrument is made. Making one takes the SDK's pipeline lock, which a
    /// collection holds while the observers read the series: no series lock may be held then.
    creating: Mutex<()>,
    /// The process and runtime observers, kept alive.
    _collectors: Vec<Observer>,
}

impl Instruments {
    /// Instruments on `meter`: `duration_buckets` for every `*_seconds` histogram, and with
    /// `process` the process metrics and those of `runtime`.
    pub(crate) fn new(
        meter: Meter,
        duration_buckets: Vec<f64>,
        process: bool,
        runtime: Option<tokio::runtime::Handle>,
    ) -> Self {
        let collectors = match process {
            true => collectors(&meter, runtime),
            false => Vec::new(),
        };
        Self {
            meter,
            duration_buckets,
            counters: Families::default(),
            gauges: Families::default(),
            histograms: Families::default(),
            creating: Mutex::new(()),
            _collectors: collectors,
        }
    }

    /// The family `name` of `families`, made (with its instrument, by `instrument`) when it is new.
    fn family<S, I>(
        &self,
        families: &Families<S, I>,
        name: &str,
        instrument: impl FnOnce(Weak<Family<S, I>>) -> I,
    ) -> Arc<Family<S, I>> {
        if let Some(family) = families.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return family.clone();
        }
        let _creating = self.creating.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(family) = families.read().unwrap_or_else(|e| e.into_inner()).get(name) {
            return family.clone();
        }
        let family = Arc::new_cyclic(|family| Family {
            series: RwLock::default(),
            instrument: instrument(family.clone()),
        });
        families
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), family.clone());
        family
    }

    pub(crate) fn counter(&self, recorder: &ChassisRecorder, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let name = key.name();
        let family = self.family(&self.counters, name, |family| {
            let (otel, unit, help) = describe(recorder, name, Kind::Counter);
            let mut builder = self.meter.u64_observable_counter(otel).with_callback(move |observer| {
                if let Some(family) = family.upgrade() {
                    family.each(|s| observer.observe(s.total.load(Ordering::Relaxed), &s.attributes));
                }
            });
            if let Some(unit) = unit {
                builder = builder.with_unit(unit);
            }
            builder.with_description(help).build()
        });
        Counter::from_arc(family.series(key, || CounterSeries {
            prometheus: recorder.prometheus().register_counter(key, metadata),
            total: AtomicU64::new(0),
            attributes: attributes(key),
        }))
    }

    pub(crate) fn gauge(&self, recorder: &ChassisRecorder, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let name = key.name();
        let family = self.family(&self.gauges, name, |family| {
            let (otel, unit, help) = describe(recorder, name, Kind::Gauge);
            observable(
                &self.meter,
                Kind::Gauge,
                UP_DOWN.contains(&name),
                otel,
                unit,
                help,
                move |observe| {
                    if let Some(family) = family.upgrade() {
                        family.each(|s| observe(s.get(), &s.attributes));
                    }
                },
            )
        });
        Gauge::from_arc(family.series(key, || GaugeSeries {
            prometheus: recorder.prometheus().register_gauge(key, metadata),
            value: AtomicU64::new(0f64.to_bits()),
            attributes: attributes(key),
        }))
    }

    pub(crate) fn histogram(&self, recorder: &ChassisRecorder, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let name = key.name();
        let family = self.family(&self.histograms, name, |_| {
            let (otel, unit, help) = describe(recorder, name, Kind::Histogram);
            let mut builder = self.meter.f64_histogram(otel).with_description(help);
            if let Some(unit) = unit {
                builder = builder.with_unit(unit);
            }
            // The buckets `/metrics` uses for the same series.
            if name.ends_with("_seconds") {
                builder = builder.with_boundaries(self.duration_buckets.clone());
            }
            builder.build()
        });
        Histogram::from_arc(family.series(key, || HistogramSeries {
            prometheus: recorder.prometheus().register_histogram(key, metadata),
            otel: family.instrument.bind(&attributes(key)),
        }))
    }
}

/// The OpenTelemetry name, unit and description of the series `name`.
fn describe(recorder: &ChassisRecorder, name: &str, kind: Kind) -> (String, Option<&'static str>, String) {
    let description = recorder.description(name);
    let (otel, unit) = name_and_unit(name, kind, description.as_ref().and_then(|d| d.unit));
    (otel, unit, description.map(|d| d.text.into_owned()).unwrap_or_default())
}

/// An observable `f64` instrument: a counter, an up-down counter (`up_down`) or a gauge, whose
/// callback hands each value and its attributes to `observe`'s argument.
fn observable(
    meter: &Meter,
    kind: Kind,
    up_down: bool,
    name: String,
    unit: Option<&'static str>,
    help: String,
    observe: impl Fn(&dyn Fn(f64, &[KeyValue])) + Send + Sync + 'static,
) -> Observer {
    let unit = unit.unwrap_or("");
    match (kind, up_down) {
        (Kind::Counter, _) => Box::new(
            meter
                .f64_observable_counter(name)
                .with_unit(unit)
                .with_description(help)
                .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                .build(),
        ),
        (_, true) => Box::new(
            meter
                .f64_observable_up_down_counter(name)
                .with_unit(unit)
                .with_description(help)
                .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                .build(),
        ),
        _ => Box::new(
            meter
                .f64_observable_gauge(name)
                .with_unit(unit)
                .with_description(help)
                .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                .build(),
        ),
    }
}

/// Observers of the process and tokio runtime metrics, read at each collection.
fn collectors(meter: &Meter, runtime: Option<tokio::runtime::Handle>) -> Vec<Observer> {
    let mut kept: Vec<Observer> = Vec::new();
    let process_metrics = process::read().unwrap_or_default();
    let runtime_metrics = runtime.as_ref().map(runtime::read).unwrap_or_default();
    type Read = Arc<dyn Fn() -> Vec<super::Reading> + Send + Sync>;
    let sources: [(Vec<super::Reading>, Read); 2] = [
        (process_metrics, Arc::new(|| process::read().unwrap_or_default())),
        (
            runtime_metrics,
            Arc::new(move || runtime.as_ref().map(runtime::read).unwrap_or_default()),
        ),
    ];
    for (metrics, read) in sources {
        for (name, kind, help, _) in metrics {
            let kind = if kind == "counter" { Kind::Counter } else { Kind::Gauge };
            let (otel, unit) = name_and_unit(name, kind, None);
            let read = read.clone();
            let value = move || read().into_iter().find(|m| m.0 == name).map(|m| m.3);
            // An unlimited limit has no number in OTLP: it is left out.
            kept.push(observable(
                meter,
                kind,
                UP_DOWN.contains(&name),
                otel,
                unit,
                help.into(),
                move |observe| {
                    if let Some(value) = value().filter(|v| v.is_finite()) {
                        observe(value, &[]);
                    }
                },
            ));
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventional_series_take_their_conventional_names() {
        assert_eq!(
            name_and_unit(HTTP_SERVER_REQUEST_DURATION, Kind::Histogram, Some(Unit::Seconds)),
            ("http.server.request.duration".into(), Some("s"))
        );
        assert_eq!(
            name_and_unit("process_cpu_seconds_total", Kind::Counter, None),
            ("process.cpu.time".into(), Some("s"))
        );
    }

    #[test]
    fn other_series_lose_the_suffixes_a_prometheus_exporter_adds_back() {
        assert_eq!(
            name_and_unit("chassis_messages_consumed_total", Kind::Counter, None),
            ("chassis_messages_consumed".into(), None)
        );
        assert_eq!(
            name_and_unit("chassis_consumer_lag_seconds", Kind::Gauge, None),
            ("chassis_consumer_lag".into(), Some("s"))
        );
        // Only a counter's `_total` is a suffix.
        assert_eq!(
            name_and_unit("orders_total", Kind::Gauge, None),
            ("orders_total".into(), None)
        );
        assert_eq!(
            name_and_unit("queue:depth", Kind::Gauge, Some(Unit::Count)),
            ("queue_depth".into(), Some("1"))
        );
    }

    #[test]
    fn labels_become_attributes_with_the_conventions_names_and_types() {
        let key = Key::from_parts(
            HTTP_SERVER_REQUEST_DURATION,
            vec![
                metrics::Label::new("http_request_method", "GET"),
                metrics::Label::new("http_response_status_code", "503"),
                metrics::Label::new("error_type", ""),
                metrics::Label::new("tenant", "acme"),
            ],
        );
        assert_eq!(
            attributes(&key),
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("http.response.status_code", 503),
                KeyValue::new("tenant", "acme"),
            ]
        );
    }
}
