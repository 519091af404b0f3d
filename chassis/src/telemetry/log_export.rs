//! OTLP export of log records: the service's `tracing` events, as the log filter lets them
//! through, with the trace and span ids of where they were logged.

use std::time::Duration;

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord};

use super::batch::{BatchProcessor, Export, LOG_RECORDS_TOTAL, on_export_thread};

/// A log record with the scope that emitted it, as queued for export.
pub(crate) type Record = (SdkLogRecord, InstrumentationScope);

/// Targets whose events are not exported: the HTTP and gRPC clients the exporters themselves
/// run on (on threads of their own), whose every export would log again, and the SDK's own
/// diagnostics.
const NOT_EXPORTED: [&str; 7] = ["hyper", "reqwest", "h2", "tonic", "tower", "rustls", "opentelemetry"];

/// Log records, through a log exporter.
pub(crate) struct Logs<E>(pub(crate) E);

impl<E: LogExporter + 'static> Export for Logs<E> {
    type Item = Record;
    const NOUN: &'static str = "log records";
    const TOTAL: &'static str = LOG_RECORDS_TOTAL;
    const WHEN_DROPPING: &'static str = "raise telemetry.log_level or switch telemetry.otlp.logs off";

    fn export(&mut self, batch: Vec<Record>) -> OTelSdkResult {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> = batch.iter().map(|(r, s)| (r, s)).collect();
        futures_executor::block_on(self.0.export(LogBatch::new(&refs)))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }

    fn shutdown(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// Whether events of `target` are exported (see [`NOT_EXPORTED`]).
fn exported(target: &str) -> bool {
    !NOT_EXPORTED.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::") || rest.starts_with('_'))
    })
}

impl LogProcessor for BatchProcessor<Record> {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        // What the export threads log (a failed export) stays in the service's own log: exported,
        // a failing collector would be asked to take the news of its own failure.
        if on_export_thread() || record.target().is_some_and(|target| !exported(target)) {
            return;
        }
        self.enqueue((record.clone(), scope.clone()));
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

#[cfg(test)]
mod tests {
    use super::exported;

    #[test]
    fn the_exporters_own_clients_are_not_exported() {
        for target in [
            "hyper",
            "hyper_util::client",
            "reqwest::connect",
            "h2::codec",
            "opentelemetry_sdk",
        ] {
            assert!(!exported(target), "{target}");
        }
        for target in ["shop_orders", "chassis::runtime", "hyperloop", "towers"] {
            assert!(exported(target), "{target}");
        }
    }
}
