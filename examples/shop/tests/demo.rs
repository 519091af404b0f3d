//! The demo a newcomer runs first: it succeeds, names every pattern, and prints narration only.

#[test]
fn the_demo_walks_through_every_pattern_without_log_lines() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["--demo", "--base-port", "0"])
        .output()
        .expect("the shop binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    for pattern in [
        "API gateway",
        "rate limit per client",
        "Idempotency-Key",
        "Fan-out",
        "Idempotent consumer",
        "Choreography",
        "Orchestration",
        "Saga compensation",
        "Circuit breaker",
        "Sidecar",
    ] {
        assert!(stdout.contains(pattern), "the demo does not show {pattern}:\n{stdout}");
    }
    let log_lines: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|line| {
            [" INFO ", " WARN ", " ERROR ", " DEBUG "]
                .iter()
                .any(|level| line.contains(level))
        })
        .collect();
    assert!(log_lines.is_empty(), "log lines in the demo's output: {log_lines:#?}");
    assert!(stdout.contains("skipped 3 duplicate deliveries"), "{stdout}");
    assert!(stdout.contains("breaker open, not called"), "{stdout}");
}
