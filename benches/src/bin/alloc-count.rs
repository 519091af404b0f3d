//! Heap allocations per request, bare axum and the chassis' inbound stack side by side, with the
//! same setup as the `inbound` criterion benchmark (telemetry installed, logs at WARN, no
//! exporter; metrics recording). Allocations are a large part of what the stack costs under
//! load, where the allocator's caches are shared with the server's connections:
//!
//! ```sh
//! cargo run --release -p chassis-benches --bin alloc-count
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use chassis_benches::get_user as request;
use tower::{Service, ServiceExt};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set while one traced request runs (`--trace`); cleared while a backtrace is taken.
    static TRACING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// With `--trace`, prints where each allocation of one request comes from (build with
/// `CARGO_PROFILE_RELEASE_DEBUG=line-tables-only` for file names).
fn trace(size: usize) {
    if TRACING.with(|t| t.replace(false)) {
        let backtrace = std::backtrace::Backtrace::force_capture().to_string();
        let frames: Vec<&str> = backtrace
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("at ") && !l.contains("/rustc/") && !l.contains("alloc-count.rs"))
            .take(6)
            .collect();
        eprintln!("{size} bytes\n    {}", frames.join("\n    "));
        TRACING.with(|t| t.set(true));
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        trace(layout.size());
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const REQUESTS: u64 = 10_000;

/// Allocations and bytes per request of `call`, after a warm-up that fills the caches (metric
/// handles, span names).
async fn measure<F, Fut>(mut call: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..100 {
        call().await;
    }
    let (allocations, bytes) = (ALLOCATIONS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    for _ in 0..REQUESTS {
        call().await;
    }
    (
        (ALLOCATIONS.load(Ordering::Relaxed) - allocations) as f64 / REQUESTS as f64,
        (BYTES.load(Ordering::Relaxed) - bytes) as f64 / REQUESTS as f64,
    )
}

fn main() {
    let (_telemetry, bare, stack) = chassis_benches::inbound_pair();
    let runtime = chassis_benches::runtime();
    runtime.block_on(async {
        let bare = measure(|| {
            let svc = bare.clone();
            async move {
                svc.oneshot(request()).await.unwrap();
            }
        })
        .await;
        let chassis = measure(|| {
            let mut svc = stack.clone();
            async move {
                svc.call(request()).await.unwrap();
            }
        })
        .await;
        if std::env::args().any(|a| a == "--trace") {
            let mut svc = stack.clone();
            let request = request();
            TRACING.with(|t| t.set(true));
            svc.call(request).await.unwrap();
            TRACING.with(|t| t.set(false));
        }
        println!("| | allocations per request | bytes allocated per request |");
        println!("|---|---|---|");
        println!("| bare axum | {:.1} | {:.0} |", bare.0, bare.1);
        println!("| chassis stack | {:.1} | {:.0} |", chassis.0, chassis.1);
    });
}
