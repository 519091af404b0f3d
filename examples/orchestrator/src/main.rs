//! `cargo run -p shop-orchestrator`; see the crate docs for its routes and settings. It needs
//! `clients.inventory.base_url` and `clients.payments.base_url`.

#[chassis::main]
async fn main(ctx: chassis::Context<shop_orchestrator::Settings>) -> chassis::Result<axum::Router> {
    shop_orchestrator::service(ctx).await
}
