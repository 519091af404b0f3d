//! Serves the benchmark routes for a load run: `bench-server bare 3000` serves them with plain
//! `axum::serve`; `bench-server chassis 3001` serves them through `chassis::run` with its
//! defaults (request id, trace with OpenTelemetry spans, metrics, load shedding, timeout, body
//! limit, catch panic). Logs go to stderr at WARN so the load run measures the stack, not the
//! terminal.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_default();
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(3000);
    match mode.as_str() {
        "bare" => {
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
                axum::serve(listener, chassis_benches::routes()).await.expect("serve");
            });
            ExitCode::SUCCESS
        }
        "chassis" => {
            let options = chassis::Options::new()
                .service_defaults("bench", "0.0.0")
                .configure(|loader| {
                    loader
                        .set("http.host", "127.0.0.1")
                        .set("http.port", port)
                        .set("admin.port", 0)
                        .set("telemetry.log_level", "warn")
                        .set("shutdown.readiness_delay", "0s")
                });
            chassis::run(options, |_: chassis::Context<()>| async {
                Ok(chassis_benches::routes())
            })
        }
        _ => {
            eprintln!("usage: bench-server <bare|chassis> [port]");
            ExitCode::FAILURE
        }
    }
}
