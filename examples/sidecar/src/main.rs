//! `APP__CLIENTS__APP__BASE_URL=http://127.0.0.1:3000 cargo run -p sidecar`: the app on port
//! 3000 gets the chassis' edge on port 8080 (HTTPS with `APP__HTTP__TLS__CERT_FILE` and
//! `APP__HTTP__TLS__KEY_FILE`), its metrics and probes on 9090, and an egress port on 15001 for
//! its outbound calls to the other `[clients.<name>]`.

#[chassis::main]
async fn main(ctx: chassis::Context<sidecar::Settings>) -> chassis::Result<axum::Router> {
    sidecar::service(ctx).await
}
