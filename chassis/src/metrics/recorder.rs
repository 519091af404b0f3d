//! The process' `metrics` recorder: every series goes to the Prometheus exposition and, once
//! OTLP export is attached ([`super::MetricsHandle::export_to`]), to OpenTelemetry instruments
//! as well ([`super::otel`]); the samples of `*_seconds` histograms keep exemplars
//! ([`super::exemplars`]).

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::PrometheusRecorder;

use super::exemplars::Exemplars;
use super::otel::Instruments;

/// What `describe_*` said of a metric: its unit and help text.
#[derive(Debug, Clone)]
pub(crate) struct Description {
    pub(crate) unit: Option<Unit>,
    pub(crate) text: SharedString,
}

/// The recorder installed as the process' global one.
pub(crate) struct ChassisRecorder {
    prometheus: PrometheusRecorder,
    descriptions: RwLock<HashMap<String, Description>>,
    exemplars: Exemplars,
    otel: OnceLock<Instruments>,
}

impl ChassisRecorder {
    /// The recorder, with `duration_buckets` as the bounds of every `*_seconds` histogram.
    pub(crate) fn new(prometheus: PrometheusRecorder, duration_buckets: &[f64]) -> Self {
        Self {
            prometheus,
            descriptions: RwLock::default(),
            exemplars: Exemplars::new(duration_buckets),
            otel: OnceLock::new(),
        }
    }

    /// Sends every series registered from now on to `instruments` too; the first call wins.
    #[cfg_attr(not(any(feature = "otlp-http", feature = "otlp-grpc")), allow(dead_code))]
    pub(crate) fn attach(&self, instruments: Instruments) -> bool {
        let attached = self.otel.set(instruments).is_ok();
        if attached {
            // Their handles were made for Prometheus only.
            self.exemplars.forget();
        }
        attached
    }

    pub(crate) fn exemplars(&self) -> &Exemplars {
        &self.exemplars
    }

    pub(crate) fn prometheus(&self) -> &PrometheusRecorder {
        &self.prometheus
    }

    /// What was described of the metric `name`.
    pub(crate) fn description(&self, name: &str) -> Option<Description> {
        self.descriptions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    fn remember(&self, name: &KeyName, unit: Option<Unit>, text: &SharedString) {
        self.descriptions.write().unwrap_or_else(|e| e.into_inner()).insert(
            name.as_str().to_owned(),
            Description {
                unit,
                text: text.clone(),
            },
        );
    }
}

impl Recorder for ChassisRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.remember(&key, unit, &description);
        self.prometheus.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.remember(&key, unit, &description);
        self.prometheus.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.remember(&key, unit, &description);
        self.prometheus.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match self.otel.get() {
            Some(otel) => otel.counter(self, key, metadata),
            None => self.prometheus.register_counter(key, metadata),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match self.otel.get() {
            Some(otel) => otel.gauge(self, key, metadata),
            None => self.prometheus.register_gauge(key, metadata),
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let register = || match self.otel.get() {
            Some(otel) => otel.histogram(self, key, metadata),
            None => self.prometheus.register_histogram(key, metadata),
        };
        match Exemplars::bucketed(key.name()) {
            true => self.exemplars.histogram(key, register),
            false => register(),
        }
    }
}
