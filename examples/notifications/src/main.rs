//! `cargo run -p shop-notifications`; see the crate docs for its routes.

#[chassis::main]
async fn main(ctx: chassis::Context<shop_contract::ServiceSettings>) -> chassis::Result<axum::Router> {
    shop_notifications::service(ctx).await
}
