//! The standard `process_*` metrics, read from `/proc` at each scrape (Linux; elsewhere none),
//! written in the exposition format directly: CPU time keeps its fraction of a second, and an
//! unlimited address space is `+Inf` rather than 0.

use std::fmt::Write as _;

use super::Reading;

/// The clock ticks per second of `/proc/self/stat` (`USER_HZ`): 100 on every Linux platform.
const TICKS_PER_SECOND: f64 = 100.0;

/// The process metrics as exposition text; empty where `/proc` cannot be read.
pub(crate) fn render() -> String {
    let mut text = String::new();
    if let Some(metrics) = read() {
        for (name, kind, help, value) in metrics {
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                number(value)
            );
        }
    }
    text
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        "+Inf".into()
    } else {
        value.to_string()
    }
}

/// The process metrics; `None` where `/proc` cannot be read.
#[cfg(target_os = "linux")]
pub(super) fn read() -> Option<Vec<Reading>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces: the fields that follow start after its `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let cpu = (field(14)? + field(15)?) / TICKS_PER_SECOND;
    let started_ticks = field(22)?;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<f64>().ok())
    };
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let soft_limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| match l[name.len()..].split_whitespace().next()? {
                "unlimited" => Some(f64::INFINITY),
                value => value.parse().ok(),
            })
    };
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    Some(vec![
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            boot + started_ticks / TICKS_PER_SECOND,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kib("VmRSS:")? * 1024.0,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            kib("VmSize:")? * 1024.0,
        ),
        (
            "process_virtual_memory_max_bytes",
            "gauge",
            "Maximum amount of virtual memory available in bytes (+Inf when unlimited).",
            soft_limit("Max address space")?,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open_fds,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            soft_limit("Max open files")?,
        ),
        (
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            kib("Threads:")?,
        ),
    ])
}

#[cfg(not(target_os = "linux"))]
pub(super) fn read() -> Option<Vec<Reading>> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn cpu_time_keeps_its_fraction_and_every_family_has_help() {
        // Burn some CPU so the counter is not a whole number by chance alone.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert_ne!(x, 1);
        let text = super::render();
        let cpu: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
            .expect("the CPU counter")
            .parse()
            .unwrap();
        assert!(cpu > 0.0, "{text}");
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
        }
        assert!(text.contains("process_threads "));
    }
}
