//! `cargo run -p shop-payments`; see the crate docs for its routes.

#[chassis::main]
async fn main(ctx: chassis::Context<shop_contract::ServiceSettings>) -> chassis::Result<axum::Router> {
    shop_payments::service(ctx).await
}
