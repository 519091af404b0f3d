//! The `inbound` benchmark's pair (bare axum, the chassis' inbound stack), measured in
//! alternating blocks so that drift on a shared machine hits both alike; prints the medians of
//! the per-block times and of the stack's overhead. Use it to compare two builds of the stack,
//! where criterion's sequential runs of one and then the other are too noisy here:
//!
//! ```sh
//! cargo run --release -p chassis-benches --bin inbound-paired -- [blocks, default 30]
//! ```

use std::time::Instant;

use chassis_benches::get_user as request;
use tower::{Service, ServiceExt};

const PER_BLOCK: u32 = 20_000;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn main() {
    let blocks: usize = std::env::args().nth(1).and_then(|b| b.parse().ok()).unwrap_or(30);
    let (_telemetry, bare, stack) = chassis_benches::inbound_pair();
    let runtime = chassis_benches::runtime();
    runtime.block_on(async {
        let (mut bare_ns, mut stack_ns, mut overhead_ns) = (Vec::new(), Vec::new(), Vec::new());
        for block in 0..=blocks {
            let started = Instant::now();
            for _ in 0..PER_BLOCK {
                bare.clone().oneshot(request()).await.unwrap();
            }
            let bare_block = started.elapsed().as_nanos() as f64 / f64::from(PER_BLOCK);
            let started = Instant::now();
            for _ in 0..PER_BLOCK {
                stack.clone().call(request()).await.unwrap();
            }
            let stack_block = started.elapsed().as_nanos() as f64 / f64::from(PER_BLOCK);
            // The first block warms caches and fills the metric handles.
            if block > 0 {
                bare_ns.push(bare_block);
                stack_ns.push(stack_block);
                overhead_ns.push(stack_block - bare_block);
            }
        }
        println!(
            "bare axum {:.0} ns, chassis stack {:.0} ns, overhead {:.0} ns per request (medians of {blocks} blocks of {PER_BLOCK})",
            median(&mut bare_ns),
            median(&mut stack_ns),
            median(&mut overhead_ns)
        );
    });
}
