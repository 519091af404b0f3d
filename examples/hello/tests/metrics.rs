//! The hello binary, run as a user runs it, exposes metrics Prometheus accepts.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn the_exposition_passes_promtool() {
    let (http_port, admin_port) = (free_port(), free_port());
    let mut hello = tokio::process::Command::new(env!("CARGO_BIN_EXE_hello"))
        .env("APP__HTTP__HOST", "127.0.0.1")
        .env("APP__HTTP__PORT", http_port.to_string())
        .env("APP__ADMIN__HOST", "127.0.0.1")
        .env("APP__ADMIN__PORT", admin_port.to_string())
        .env("APP__TELEMETRY__LOG_LEVEL", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("hello runs");
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{admin_port}/health/ready");
    chassis::testing::eventually("hello to be ready", async || {
        http.get(&ready)
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(|_| ())
    })
    .await;
    for path in ["/hello/world", "/unknown"] {
        http.get(format!("http://127.0.0.1:{http_port}{path}"))
            .send()
            .await
            .unwrap();
    }
    let text = http
        .get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    chassis::testing::promtool_check(&text).await.unwrap();
    hello.kill().await.unwrap();
}
