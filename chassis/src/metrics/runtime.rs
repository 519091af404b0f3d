//! The tokio runtime's own metrics, read at each scrape: workers, live tasks, the global queue,
//! and the time workers spent busy (its rate over the worker count is the busy ratio).

use std::fmt::Write as _;

use super::Reading;

/// The runtime metrics of the runtime the scrape runs on, as exposition text; empty outside a
/// tokio runtime.
pub(crate) fn render() -> String {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return String::new();
    };
    let mut text = String::new();
    for (name, kind, help, value) in read(&runtime) {
        let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    }
    text
}

/// The metrics of `runtime`.
pub(super) fn read(runtime: &tokio::runtime::Handle) -> Vec<Reading> {
    let metrics = runtime.metrics();
    let workers = metrics.num_workers();
    let busy: f64 = (0..workers)
        .map(|w| metrics.worker_total_busy_duration(w).as_secs_f64())
        .sum();
    let parks: u64 = (0..workers).map(|w| metrics.worker_park_count(w)).sum();
    vec![
        (
            "tokio_workers",
            "gauge",
            "Worker threads of the tokio runtime.",
            workers as f64,
        ),
        (
            "tokio_alive_tasks",
            "gauge",
            "Tasks alive in the tokio runtime.",
            metrics.num_alive_tasks() as f64,
        ),
        (
            "tokio_global_queue_depth",
            "gauge",
            "Tasks waiting in the runtime's global queue.",
            metrics.global_queue_depth() as f64,
        ),
        (
            "tokio_worker_busy_seconds_total",
            "counter",
            "Time the workers spent running tasks, summed over workers; rate() / tokio_workers is the busy ratio.",
            busy,
        ),
        (
            "tokio_worker_parks_total",
            "counter",
            "Times the workers parked for want of work, summed over workers.",
            parks as f64,
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_runtime_reports_its_workers() {
        let text = super::render();
        assert!(text.contains("tokio_workers 2\n"), "{text}");
        assert!(
            text.contains("# TYPE tokio_worker_busy_seconds_total counter"),
            "{text}"
        );
    }
}
