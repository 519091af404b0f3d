//! `APP__CLIENTS__APP__BASE_URL=http://127.0.0.1:3000 cargo run -p sidecar`: the app on port
//! 3000 gets the chassis' edge on port 8080, its metrics and probes on 9090.

#[chassis::main]
async fn main(ctx: chassis::Context<sidecar::Settings>) -> chassis::Result<axum::Router> {
    sidecar::service(ctx).await
}
