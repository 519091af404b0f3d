//! `cargo run -p shop` starts the whole shop in one process on the in-memory bus;
//! `cargo run -p shop -- --demo` also walks through every pattern it shows, one numbered step
//! each, narrated on stdout. The services' logs are off in the demo unless `--logs` is given.
//! `--base-port N` moves the services to ports N to N+5 (default 8080; 0 picks free ones).

mod demo;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let demo = args.iter().any(|a| a == "--demo");
    let logs = args.iter().any(|a| a == "--logs") || !demo;
    let mut setup = shop::Setup::default();
    if let Some(port) = args
        .iter()
        .position(|a| a == "--base-port")
        .and_then(|i| args.get(i + 1))
    {
        match port.parse() {
            Ok(port) => setup.base_port = port,
            Err(_) => {
                eprintln!("error: --base-port takes a port number, not {port:?}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    if !logs {
        setup.overrides.push(("telemetry.log_level".into(), "off".into()));
    }
    let system = match setup.start().await {
        Ok(system) => system,
        Err(error) => {
            eprintln!("error: the shop could not start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let gateway = system.gateway.http_addr();
    println!("gateway        http://{gateway}  (x-api-key: demo-key, or a HS256 JWT signed with demo-secret)");
    println!("orders         http://{}", system.orders.http_addr());
    println!("inventory      http://{}/stock", system.inventory.http_addr());
    println!("payments       http://{}", system.payments.http_addr());
    println!(
        "notifications  http://{}/notifications",
        system.notifications.http_addr()
    );
    println!("orchestrator   http://{}", system.orchestrator.http_addr());
    let code = if demo {
        match demo::run(&system, logs).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("demo failed: {error}");
                std::process::ExitCode::FAILURE
            }
        }
    } else {
        println!(
            "\ntry: curl -H 'x-api-key: demo-key' -H 'idempotency-key: k1' -H 'content-type: application/json' \\"
        );
        println!("       -d '{{\"item\":\"book\",\"quantity\":1,\"amount_cents\":1299}}' http://{gateway}/orders");
        println!("Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
        std::process::ExitCode::SUCCESS
    };
    system.stop().await;
    code
}
