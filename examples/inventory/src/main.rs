//! `cargo run -p shop-inventory`; see the crate docs for its routes.

#[chassis::main]
async fn main(ctx: chassis::Context<shop_contract::ServiceSettings>) -> chassis::Result<axum::Router> {
    shop_inventory::service(ctx).await
}
