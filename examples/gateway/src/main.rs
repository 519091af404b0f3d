//! `cargo run -p shop-gateway`; see the crate docs for its routes and settings.

#[chassis::main]
async fn main(ctx: chassis::Context<shop_gateway::Settings>) -> chassis::Result<axum::Router> {
    shop_gateway::service(ctx).await
}
