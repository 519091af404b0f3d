//! `cargo run -p shop-orders`; see the crate docs for its routes and `shop_contract` for its
//! `[store]` settings.

#[chassis::main]
async fn main(ctx: chassis::Context<shop_contract::ServiceSettings>) -> chassis::Result<axum::Router> {
    shop_orders::service(ctx).await
}
